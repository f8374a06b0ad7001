"""The emulator's call counters: calls received per action and outcome, for `/_mirrorq/stats`."""

from __future__ import annotations

import re
import threading
from collections import Counter, defaultdict
from typing import Any

_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_JSON_ERROR_TYPE = re.compile(rb'"__type"\s*:\s*"(?:[^"#]*#)?([^"]+)"')


class Stats:
    """Calls received per action and outcome (`ok`, `replayed`, `dropped` or an error code),
    in all and, for EC2, per `account/Region` too (each has its own buckets and limits)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._scoped: defaultdict[str, defaultdict[str, Counter[str]]] = defaultdict(
            lambda: defaultdict(Counter)
        )

    def count(self, action: str, outcome: str, scope: str | None = None) -> None:
        with self._lock:
            self._calls[action][outcome] += 1
            if scope is not None:
                self._scoped[scope][action][outcome] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": {action: dict(c) for action, c in sorted(self._calls.items())},
                "scopes": {
                    scope: {action: dict(c) for action, c in sorted(calls.items())}
                    for scope, calls in sorted(self._scoped.items())
                },
            }

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._scoped.clear()


def outcome_of(status: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> str:
    """`ok`, or the error code an answer carries as a client would read it."""
    if status.startswith("2"):
        return "ok"
    # SQS's JSON errors name their Query-API code here, which is what botocore reports.
    for name, value in headers or []:
        if name.lower() == "x-amzn-query-error":
            return value.partition(";")[0]
    match = _ERROR_CODE.search(body) or _JSON_ERROR_TYPE.search(body)
    return match[1].decode() if match else f"HTTP{status[:3]}"
