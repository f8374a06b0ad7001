"""The Traffic Mirroring create calls, and a session's delete and modify, step by step:
injected faults, ClientToken replay, validation, moto, then a dropped answer (docs/emulator.md,
"How a create is handled").
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from moto.ec2.models import ec2_backends

from emulator.errors import EC2Error, dry_run_ok
from emulator.faults import Faults
from emulator.mirroring import Recorded, TrafficMirroring, fingerprint, is_dry_run
from emulator.request import account_of, region_of
from emulator.stats import Stats, outcome_of
from emulator.wsgi import Environ, StartResponse, call_app

# The session's mutating calls get the injected faults (latency, 5xx before, a drop after).
FAULTED_ACTIONS = frozenset(
    {"CreateTrafficMirrorSession", "DeleteTrafficMirrorSession", "ModifyTrafficMirrorSession"}
)


class CreatePath:
    """One of `mirroring.MIRRORING_ACTIONS`, answered as EC2 would; refusals raise EC2Error."""

    def __init__(
        self,
        faults: Faults,
        mirroring: TrafficMirroring,
        stats: Stats,
        lock: threading.RLock,
        ec2_app: Any,
    ) -> None:
        self._faults = faults
        self._mirroring = mirroring
        self._stats = stats
        self._lock = lock
        self._ec2 = ec2_app

    def __call__(
        self, action: str, params: dict[str, str], environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        account, region = account_of(environ), region_of(environ)
        plan = self._faults.plan_for(account, region)
        drop = False
        if action in FAULTED_ACTIONS:
            if plan.latency_ms:
                time.sleep(plan.latency_ms / 1000)
            if self._faults.roll(plan.error_rate):
                raise self._injected_error()
            drop = self._faults.roll(plan.drop_rate)
        scope = f"{account}/{region}"
        with self._lock:
            recorded = (
                None
                if is_dry_run(params)
                else self._mirroring.replay(account, region, action, params)
            )
            if recorded is None:
                backend = ec2_backends[account][region]
                extra = self._mirroring.check(action, backend, params)
                if is_dry_run(params):
                    raise dry_run_ok()
                if action == "ModifyTrafficMirrorSession":
                    self._mirroring.remove_fields(backend, params)
                if extra:
                    environ["wsgi.input"] = io.BytesIO(urlencode({**params, **extra}).encode())
                    environ["CONTENT_LENGTH"] = str(environ["wsgi.input"].getbuffer().nbytes)
                status, headers, out = call_app(self._ec2, environ)
                if status.startswith("2"):
                    self._mirroring.remember(
                        account,
                        region,
                        action,
                        params,
                        Recorded(fingerprint(params), status, headers, out),
                    )
                outcome = outcome_of(status, out)
            else:
                status, headers, out = recorded.status, recorded.headers, recorded.body
                outcome = "replayed"
        if drop:
            # The session exists now (or is deleted, or modified); the client never hears of
            # it. This is the case that turns a retry without a fixed ClientToken into a second
            # session, and a retried delete into a NotFound.
            self._stats.count(action, "dropped", scope)
            _drop_connection(environ)
            # The server insists on a status; writing it fails on the dead socket.
            start_response("500 Internal Server Error", [("Content-Length", "0")])
            return []
        self._stats.count(action, outcome, scope)
        start_response(status, headers)
        return [out]

    def _injected_error(self) -> EC2Error:
        if self._faults.pick("InternalError", "Unavailable") == "InternalError":
            return EC2Error("InternalError", "An internal error has occurred.", 500)
        return EC2Error(
            "Unavailable", "The server is overloaded and cannot accept the request.", 503
        )


def _drop_connection(environ: Environ) -> None:
    sock: socket.socket | None = environ.get("werkzeug.socket")
    if sock is not None:
        # Shut down, not close: the server's later write then fails with a broken pipe,
        # which it treats as a client that went away, and the client sees EOF, no answer.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
