"""A real `mirrorq api` process for a test, and the bearer tokens the tests start it with."""

from __future__ import annotations

import uuid
from pathlib import Path

from mirrorq.processes import ApiProcess, free_port

TOKENS = ("first-token-5f0c", "second-token-9a7e")
AUTH = {"Authorization": f"Bearer {TOKENS[1]}"}


def start_api(env: dict[str, str], tmp_path: Path, *args: str, **extra: str) -> ApiProcess:
    port = free_port()
    process = ApiProcess(
        f"api-{uuid.uuid4().hex[:6]}", {**env, **extra}, "--port", str(port), *args
    )
    process.wait_ready()
    process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return process
