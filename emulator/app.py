"""The emulator's WSGI app: each request to the control endpoints or, by its service, to
moto's EC2 (behind throttling, the create path and the events feed), SQS or STS.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.test import EnvironBuilder

from emulator import moto_ext
from emulator.control import CONTROL_PREFIX, ControlEndpoints
from emulator.create_path import CreatePath
from emulator.errors import EC2Error, throttled
from emulator.events import EventFeed
from emulator.faults import Faults
from emulator.mirroring import IDEMPOTENT_ACTIONS, TrafficMirroring
from emulator.request import account_of, query_action, region_of, service_of, sqs_action
from emulator.stats import Stats, outcome_of
from emulator.wsgi import Environ, Reply, StartResponse, call_app, read_body


class EmulatorApp:
    """Control paths (`/_mirrorq/...`), else the service the SigV4 scope (or X-Amz-Target) names.

    EC2 calls go through throttling → for the Traffic Mirroring create calls, injected
    faults, ClientToken replay and validation → moto → events. Describe* calls are never
    throttled or faulted: tests count what really exists through them. SQS and STS calls go
    straight to moto, never throttled or faulted.
    """

    def __init__(self, faults: Faults, events_queue: str | None = None) -> None:
        moto_ext.install()
        self.faults = faults
        self.stats = Stats()
        self.mirroring = TrafficMirroring()
        self.events = EventFeed(events_queue)
        self.control = ControlEndpoints(self.stats, self.faults, self.events, self.reset)
        self._moto = DomainDispatcherApplication(create_backend_app)
        # Going straight to a service's moto app skips the dispatcher's per-request scan of
        # moto's modules (a tenth of the emulator's CPU).
        self._ec2 = create_backend_app("ec2")
        self._sqs = create_backend_app("sqs")
        self._sts = create_backend_app("sts")
        # moto's backends are plain dicts with no locking; one lock makes every EC2
        # check-then-create (per-ENI limits, token records) atomic, as EC2 is. SQS has its
        # own (moto_ext.SQS_LOCK), which a long poll releases while it waits.
        self._lock = threading.RLock()
        self.creates = CreatePath(self.faults, self.mirroring, self.stats, self._lock, self._ec2)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL_PREFIX):
            return self.control(path, environ, start_response)
        body = read_body(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        service = service_of(environ)
        if service == "sqs":
            with moto_ext.SQS_LOCK:
                reply = call_app(self._sqs, environ)
            return self._counted(sqs_action(environ, body), reply, start_response)
        if service == "sts":
            return self._counted(query_action(body), call_app(self._sts, environ), start_response)
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action")
        if action is None or service not in (None, "ec2"):
            # Anything else moto serves (its /moto-api, other services) through its dispatcher.
            return self._counted(None, self._call_moto(environ), start_response)
        return self._ec2_call(action, params, environ, start_response)

    def _ec2_call(
        self, action: str, params: dict[str, str], environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            if not action.startswith("Describe") and not self.faults.admit(action):
                raise throttled()
            if action in IDEMPOTENT_ACTIONS:
                return self.creates(action, params, environ, start_response)
            status, headers, out = self._call_moto(environ, self._ec2)
        except EC2Error as error:
            return self._error(action, error, start_response)
        self.stats.count(action, outcome_of(status, out))
        if status.startswith("2"):
            # Sent before the answer, so a client that hears "ok" finds the events queued.
            self.events.after_call(
                action,
                params,
                out,
                account=account_of(environ),
                region=region_of(environ),
                source_ip=environ.get("REMOTE_ADDR", "127.0.0.1"),
                user_agent=environ.get("HTTP_USER_AGENT", ""),
            )
        start_response(status, headers)
        return [out]

    # Plumbing ----------------------------------------------------------------------------

    def _call_moto(self, environ: Environ, app: Any = None) -> Reply:
        with self._lock:
            return call_app(app or self._moto, environ)

    def _counted(
        self, action: str | None, reply: Reply, start_response: StartResponse
    ) -> list[bytes]:
        status, headers, out = reply
        if action:
            self.stats.count(action, outcome_of(status, out, headers))
        start_response(status, headers)
        return [out]

    def _error(self, action: str, error: EC2Error, start_response: StartResponse) -> list[bytes]:
        self.stats.count(action, error.code)
        body = error.to_xml()
        start_response(
            error.status_line,
            [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def reset(self) -> None:
        """Forget every resource of every service, token record and counter (not faults)."""
        with self._lock, moto_ext.SQS_LOCK:
            self._call_moto(EnvironBuilder(path="/moto-api/reset", method="POST").get_environ())
            self.mirroring.reset()
            self.events.reset()
            self.stats.reset()
            self.faults.refill()
