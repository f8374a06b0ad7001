"""The emulator's own endpoints under `/_mirrorq/`: counters, fault plans, events queue, STS
and role settings, target shares, reset (docs/emulator.md, "Control endpoints")."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from emulator import moto_ext
from emulator.events import EventFeed
from emulator.faults import Faults
from emulator.sharing import SharedTargets
from emulator.stats import Stats
from emulator.sts import SecurityTokens
from emulator.wsgi import Environ, StartResponse, read_body

CONTROL_PREFIX = "/_mirrorq/"
Handler = Callable[[dict[str, Any]], Any]  # a request's JSON body (or query) -> its answer


class ControlEndpoints:
    """Answers the `/_mirrorq/...` paths in JSON; never throttled or faulted.

    A handler raises ValueError (or TypeError, KeyError) for a request it refuses: 400.
    """

    def __init__(
        self,
        stats: Stats,
        faults: Faults,
        events: EventFeed,
        tokens: SecurityTokens,
        shares: SharedTargets,
        reset: Callable[[], None],
    ) -> None:
        self._faults = faults
        self._shares = shares
        self._reset = reset
        self._reads: dict[str, Callable[[Environ, dict[str, Any]], Any]] = {
            "/_mirrorq/stats": lambda _, __: stats.snapshot(),
            "/_mirrorq/faults": lambda _, query: faults.as_dict(
                query.get("account"), query.get("region")
            ),
            "/_mirrorq/faults/scopes": lambda _, __: {"scopes": faults.scopes()},
            "/_mirrorq/events": lambda environ, _: events.as_dict(_base_url(environ)),
            "/_mirrorq/sts": lambda _, __: tokens.as_dict(),
            "/_mirrorq/shares": lambda _, __: {"shares": shares.all()},
        }
        self._writes: dict[str, Handler] = {
            "/_mirrorq/faults": self._set_faults,
            "/_mirrorq/sts": tokens.configure,
            "/_mirrorq/roles": tokens.configure_role,
            "/_mirrorq/share-target": self._share,
            "/_mirrorq/unshare-target": self._unshare,
            "/_mirrorq/reset": self._do_reset,
            "/_mirrorq/load-balancer": _hold_load_balancer_state,
        }

    def __call__(self, path: str, environ: Environ, start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method == "GET" and path in self._reads:
                query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
                return _json(start_response, "200 OK", self._reads[path](environ, query))
            if method in ("POST", "PUT") and path in self._writes:
                body = json.loads(read_body(environ) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
                return _json(start_response, "200 OK", self._writes[path](body))
        except (TypeError, ValueError, KeyError) as error:
            return _json(start_response, "400 Bad Request", {"error": str(error)})
        return _json(start_response, "404 Not Found", {"error": f"no {method} {path}"})

    def _set_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        """The plan's settings; with `account` and/or `region`, that scope's override."""
        account, region = body.pop("account", None), body.pop("region", None)
        for name, value in (("account", account), ("region", region)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        self._faults.update(body, account, region)
        return self._faults.as_dict(account, region)

    def _share(self, body: dict[str, Any]) -> dict[str, Any]:
        accounts = body["accounts"]
        if not isinstance(accounts, list):
            raise ValueError("accounts must be a list of account ids")
        share = self._shares.share(
            body["owner_account"], body["region"], body["target_id"], accounts
        )
        return share.as_dict()

    def _unshare(self, body: dict[str, Any]) -> dict[str, Any]:
        share = self._shares.unshare(body["region"], body["target_id"], body.get("accounts"))
        if share is None:
            raise ValueError(f"{body['target_id']} is not shared in {body['region']}")
        return share.as_dict()

    def _do_reset(self, _: dict[str, Any]) -> dict[str, Any]:
        self._reset()
        return {"reset": True}


def _hold_load_balancer_state(body: dict[str, Any]) -> dict[str, Any]:
    """`{"arn": ..., "state": "failed"}`: the load balancer's State.Code, held (the ARN names
    its account and Region)."""
    arn = body["arn"]
    if not isinstance(arn, str) or arn.count(":") < 5:
        raise ValueError("arn must be a load balancer's ARN")
    _, _, _, region, account, _ = arn.split(":", 5)
    return moto_ext.hold_state(account, region, arn, str(body["state"]))


def _json(start_response: StartResponse, status: str, payload: Any) -> list[bytes]:
    body = json.dumps(payload, indent=2).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _base_url(environ: Environ) -> str:
    """This server as the client reached it, as moto builds its queue URLs."""
    return f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', 'localhost')}"
