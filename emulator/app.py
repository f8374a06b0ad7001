"""The emulator's WSGI app: each request to the control endpoints or, by its service, to
moto's EC2 (behind throttling, the create path and the events feed), SQS or STS.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from emulator import moto_ext
from emulator.control import CONTROL_PREFIX, ControlEndpoints
from emulator.create_path import CreatePath
from emulator.errors import ELBV2_NAMESPACE, EC2Error, expired_token, request_expired, throttled
from emulator.event_shapes import load_balancer_deleted
from emulator.events import EventFeed
from emulator.faults import Faults
from emulator.mirroring import MIRRORING_ACTIONS, TrafficMirroring
from emulator.request import (
    ACCOUNT,
    access_key_of,
    account_of,
    region_of,
    service_of,
    sqs_action,
)
from emulator.sharing import SHARES
from emulator.stats import Stats, outcome_of
from emulator.sts import AWS_MIN_DURATION, SecurityTokens
from emulator.wsgi import Environ, Reply, StartResponse, call_app, read_body

ELB_SERVICE = "elasticloadbalancing"  # both ELB APIs' SigV4 service name
ELBV2_VERSION = "2015-12-01"  # Elastic Load Balancing v2's API version (classic's: 2012-06-01)


class EmulatorApp:
    """Control paths (`/_mirrorq/...`), else the service the SigV4 scope (or X-Amz-Target) names.

    Every call is first placed in its account (its credentials') and Region (its SigV4
    scope), and refused if it is signed with temporary credentials that have expired.
    EC2 calls then go through throttling (a bucket per account, Region and action) → for the
    Traffic Mirroring create calls, the fault plan of that account and Region, ClientToken
    replay and validation → moto → events. Describe* calls are never throttled or faulted:
    tests count what really exists through them. SQS and STS calls go straight to moto,
    never throttled or faulted; an AssumeRole is checked as STS would first.
    """

    def __init__(
        self,
        faults: Faults,
        events_queue: str | None = None,
        sts_min_duration: int = AWS_MIN_DURATION,
        sts_lifetime: int | None = None,
    ) -> None:
        moto_ext.install()
        self.faults = faults
        self.stats = Stats()
        self.mirroring = TrafficMirroring()
        self.events = EventFeed(events_queue)
        self.tokens = SecurityTokens(sts_min_duration, sts_lifetime)
        self.control = ControlEndpoints(
            self.stats, self.faults, self.events, self.tokens, SHARES, self.reset
        )
        self._moto = DomainDispatcherApplication(create_backend_app)
        # Going straight to a service's moto app skips the dispatcher's per-request scan of
        # moto's modules (a tenth of the emulator's CPU).
        self._ec2 = create_backend_app("ec2")
        self._sqs = create_backend_app("sqs")
        self._sts = create_backend_app("sts")
        self._elbv2 = create_backend_app("elbv2")
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
        key = access_key_of(environ)
        issued = self.tokens.issued(key)
        if issued is not None and not environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
            environ[ACCOUNT] = issued.account  # what moto finds by scanning its IAM keys
        expired = self.tokens.is_expired(key)
        if service == "sqs":
            return self._sqs_call(sqs_action(environ, body), expired, environ, start_response)
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action")
        if service == "sts":
            return self._sts_call(action, key, params, expired, environ, start_response)
        if service == ELB_SERVICE and params.get("Version") == ELBV2_VERSION:
            return self._elbv2_call(action, params, expired, environ, start_response)
        if action is None or service not in (None, "ec2"):
            # Anything else moto serves (its /moto-api, other services) through its dispatcher.
            return self._counted(None, self._call_moto(environ), start_response)
        return self._ec2_call(action, params, expired, environ, start_response)

    def _sqs_call(
        self, action: str | None, expired: bool, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        if expired:
            return _sqs_expired(action, self.stats, start_response)
        with moto_ext.SQS_LOCK:
            reply = call_app(self._sqs, environ)
        return self._counted(action, reply, start_response)

    def _sts_call(
        self,
        action: str | None,
        key: str | None,
        params: dict[str, str],
        expired: bool,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        try:
            if expired:
                raise expired_token()
            if action == "AssumeRole":
                self.tokens.check_assume_role(key, account_of(environ), params)
                shorter = self.tokens.issued_duration(params)
                if shorter is not None:
                    _replace_body(environ, {**params, "DurationSeconds": str(shorter)})
        except EC2Error as error:
            return self._error(action or "STS", error, start_response)
        reply = call_app(self._sts, environ)
        if action == "AssumeRole" and reply[0].startswith("2"):
            self.tokens.record(key, params, reply[2])
        return self._counted(action, reply, start_response)

    def _elbv2_call(
        self,
        action: str | None,
        params: dict[str, str],
        expired: bool,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Elastic Load Balancing v2 (botocore signs it `elasticloadbalancing`), counted; a
        call signed with expired credentials refused as elbv2 refuses it (`ExpiredToken`, in
        its `ErrorResponse`); a DeleteLoadBalancer's CloudTrail event sent when the events
        queue is on."""
        if expired:
            return self._error(action or "ELBv2", expired_token(ELBV2_NAMESPACE), start_response)
        reply = self._call_moto(environ, self._elbv2)
        if action == "DeleteLoadBalancer" and reply[0].startswith("2") and self.events.enabled:
            region = region_of(environ)
            event = load_balancer_deleted(
                account_of(environ),
                region,
                params.get("LoadBalancerArn", ""),
                source_ip=environ.get("REMOTE_ADDR", "127.0.0.1"),
                user_agent=environ.get("HTTP_USER_AGENT", ""),
            )
            self.events.publish(region, [event])
        return self._counted(action, reply, start_response)

    def _ec2_call(
        self,
        action: str,
        params: dict[str, str],
        expired: bool,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        account, region = account_of(environ), region_of(environ)
        try:
            if expired:
                raise request_expired()
            if not action.startswith("Describe") and not self.faults.admit(action, account, region):
                raise throttled()
            if action in MIRRORING_ACTIONS:
                return self.creates(action, params, environ, start_response)
            status, headers, out = self._call_moto(environ, self._ec2)
        except EC2Error as error:
            return self._error(action, error, start_response, f"{account}/{region}")
        self.stats.count(action, outcome_of(status, out), f"{account}/{region}")
        if status.startswith("2"):
            # Sent before the answer, so a client that hears "ok" finds the events queued.
            self.events.after_call(
                action,
                params,
                out,
                account=account,
                region=region,
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

    def _error(
        self,
        action: str,
        error: EC2Error,
        start_response: StartResponse,
        scope: str | None = None,
    ) -> list[bytes]:
        self.stats.count(action, error.code, scope)
        body = error.to_xml()
        start_response(
            error.status_line,
            [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def reset(self) -> None:
        """Forget every resource of every service, token record, counter, issued credential
        and lab setting (shares, roles, fault overrides); the fault plan itself stays."""
        with self._lock, moto_ext.SQS_LOCK:
            moto_ext.forget_every_backend()
            self.mirroring.reset()
            self.events.reset()
            self.stats.reset()
            self.tokens.reset()
            SHARES.reset()
            self.faults.clear_scopes()
            self.faults.refill()


def _replace_body(environ: Environ, params: dict[str, str]) -> None:
    environ["wsgi.input"] = io.BytesIO(urlencode(params).encode())
    environ["CONTENT_LENGTH"] = str(environ["wsgi.input"].getbuffer().nbytes)


def _sqs_expired(action: str | None, stats: Stats, start_response: StartResponse) -> list[bytes]:
    """SQS's answer to expired credentials, in its JSON protocol (botocore reads the code from
    `x-amzn-query-error`, as SQS sends it)."""
    error = expired_token()
    stats.count(action or "SQS", error.code)
    body = json.dumps(
        {"__type": "com.amazon.coral.service#ExpiredTokenException", "message": error.message}
    ).encode()
    start_response(
        error.status_line,
        [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-query-error", f"{error.code};Sender"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]
