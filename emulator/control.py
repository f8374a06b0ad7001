"""The emulator's own endpoints under `/_mirrorq/`: counters, fault plan, events queue, reset."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from emulator.events import EventFeed
from emulator.faults import Faults
from emulator.stats import Stats
from emulator.wsgi import Environ, StartResponse, read_body

CONTROL_PREFIX = "/_mirrorq/"


class ControlEndpoints:
    """Answers the `/_mirrorq/...` paths in JSON; never throttled or faulted."""

    def __init__(
        self, stats: Stats, faults: Faults, events: EventFeed, reset: Callable[[], None]
    ) -> None:
        self._stats = stats
        self._faults = faults
        self._events = events
        self._reset = reset

    def __call__(self, path: str, environ: Environ, start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        reads: dict[str, Callable[[], dict[str, Any]]] = {
            "/_mirrorq/stats": self._stats.snapshot,
            "/_mirrorq/faults": self._faults.as_dict,
            "/_mirrorq/events": lambda: self._events.as_dict(_base_url(environ)),
        }
        if method == "GET" and path in reads:
            return _json(start_response, "200 OK", reads[path]())
        if path == "/_mirrorq/faults" and method in ("POST", "PUT"):
            raw = read_body(environ)
            try:
                changes = json.loads(raw or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object of fault settings")
                self._faults.update(changes)
            except (TypeError, ValueError) as error:
                return _json(start_response, "400 Bad Request", {"error": str(error)})
            return _json(start_response, "200 OK", self._faults.as_dict())
        if path == "/_mirrorq/reset" and method == "POST":
            self._reset()
            return _json(start_response, "200 OK", {"reset": True})
        return _json(start_response, "404 Not Found", {"error": f"no {method} {path}"})


def _json(start_response: StartResponse, status: str, payload: Any) -> list[bytes]:
    body = json.dumps(payload, indent=2).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _base_url(environ: Environ) -> str:
    """This server as the client reached it, as moto builds its queue URLs."""
    return f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', 'localhost')}"
