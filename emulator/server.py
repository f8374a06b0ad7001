"""Serving the emulator over HTTP on a threaded, keep-alive werkzeug server."""

from __future__ import annotations

import random
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from emulator.app import EmulatorApp
from emulator.faults import FaultPlan, Faults


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        """One log line per EC2 call would cost more than the call itself."""


class EmulatorServer:
    """An emulator listening on `host:port` (port 0 picks a free one), served from a thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        plan: FaultPlan | None = None,
        seed: int | None = None,
        events_queue: str | None = None,
    ) -> None:
        self.app = EmulatorApp(Faults(plan or FaultPlan(), random.Random(seed)), events_queue)
        # threaded=True makes werkzeug speak HTTP/1.1, so clients keep their connections.
        self._server: BaseWSGIServer = make_server(
            host, port, self.app, threaded=True, request_handler=_QuietHandler
        )
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mirrorq-emulator", daemon=True
        )
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C or SIGTERM in the CLI)."""
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(timeout=1)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
