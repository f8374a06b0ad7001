"""WSGI plumbing the emulator's paths share: its types, a request's body, one call to a moto app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
Reply = tuple[str, list[tuple[str, str]], bytes]


def read_body(environ: Environ) -> bytes:
    body: bytes = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    return body


def call_app(app: Any, environ: Environ) -> Reply:
    """One WSGI call to a moto app, its answer collected."""
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["status"], captured["headers"] = status, headers

    chunks = app(environ, start_response)
    try:
        out = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return captured["status"], captured["headers"], out
