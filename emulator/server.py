"""Serving the emulator over HTTP on a threaded, keep-alive werkzeug server."""

from __future__ import annotations

import dataclasses
import random
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from config import EmulatorSettings
from emulator.app import EmulatorApp
from emulator.faults import FaultPlan, Faults
from emulator.lab import seed_lab
from emulator.sts import AWS_MIN_DURATION


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
        sts_min_duration: int = AWS_MIN_DURATION,
        sts_lifetime: int | None = None,
    ) -> None:
        self.app = EmulatorApp(
            Faults(plan or FaultPlan(), random.Random(seed)),
            events_queue,
            sts_min_duration,
            sts_lifetime,
        )
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


def launch(
    settings: EmulatorSettings, seed_lab_enis: int = 0
) -> tuple[EmulatorServer, dict[str, Any]]:
    """Start serving; return the server and what it announces (its endpoint, lab, queue).

    The lab is seeded before throttling starts and before events are sent: it is set-up,
    not traffic.
    """
    plan = FaultPlan().updated(
        {name: getattr(settings, name) for name in FaultPlan.__dataclass_fields__}
    )
    server = EmulatorServer(
        settings.host,
        settings.port,
        dataclasses.replace(plan, throttle_rate=0.0),
        settings.seed,
        settings.events_queue,
        settings.sts_min_duration,
        settings.sts_lifetime,
    ).start()
    ready: dict[str, Any] = {"endpoint_url": server.endpoint_url}
    if seed_lab_enis:
        ready["lab"] = seed_lab(server.endpoint_url, seed_lab_enis)
    server.app.faults.update({"throttle_rate": plan.throttle_rate})
    if settings.events_queue is not None:
        server.app.events.switch_on()
        ready["events_queue_url"] = server.app.events.queue_url(server.endpoint_url)
    ready["faults"] = server.app.faults.as_dict()
    return server, ready
