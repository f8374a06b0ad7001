"""EventBridge events, read: what each one asks to mirror, or why it asks for nothing.

Three kinds make jobs: an instance reaching `running` (every ENI attached to it), a
CloudTrail record of CreateNetworkInterface or AttachNetworkInterface (that ENI, whatever
service made it: ECS, EKS, Lambda...), and a service's own `mirrorq.CreateTrafficMirrorSession`
event whose `detail` is one job in the request syntax. Three say a sensor may have gone, and
ask for the dark-session repair of their place (mirrorq/dark.py): an instance leaving
`running` (stopping, stopped, shutting-down, terminated), and CloudTrail records of
DeleteTrafficMirrorTarget, DeleteNetworkInterface, DeleteVpcEndpoints (a Gateway Load
Balancer endpoint target's) and Elastic Load Balancing's DeleteLoadBalancer (a Network Load
Balancer target's). Any other event is ignored, with the reason; a body that is not an event
at all is NotAnEventError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from tasks.errors import NotAnEventError

STATE_CHANGE = "EC2 Instance State-change Notification"
API_CALL = "AWS API Call via CloudTrail"
JOB = "mirrorq.CreateTrafficMirrorSession"
LEAVING = frozenset({"stopping", "stopped", "shutting-down", "terminated"})  # not running
GONE_CALLS = frozenset(
    {
        "DeleteTrafficMirrorTarget",
        "DeleteNetworkInterface",
        "DeleteVpcEndpoints",
        "DeleteLoadBalancer",  # elasticloadbalancing.amazonaws.com's
    }
)
MAX_EVENT_BYTES = 256 * 1024  # EventBridge's own limit on an event
# An id as EC2 writes one (AWS's own samples write `i-0abcd1111example0`): a value such as
# `i-*` would be a wildcard in the Describe filters the listener reads ENIs with, and name
# every ENI there is.
INSTANCE_ID_PATTERN = r"^i-[0-9a-z]{8,17}$"  # as the OpenAPI document says it
NETWORK_INTERFACE_ID_PATTERN = r"^eni-[0-9a-z]{8,17}$"
INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN.strip("^$"))  # fullmatch'ed
NETWORK_INTERFACE_ID = re.compile(NETWORK_INTERFACE_ID_PATTERN.strip("^$"))


@dataclass(frozen=True)
class Event:
    """What one event asks for, and where it happened (its account and Region: None when
    the event does not say)."""

    event_id: str
    region: str | None
    instance_ids: tuple[str, ...] = ()
    eni_ids: tuple[str, ...] = ()
    job: dict[str, Any] | None = None  # a service's own job (mirrorq.CreateTrafficMirrorSession)
    ignored: str = ""  # why it asks for nothing
    account: str | None = None  # the AWS account it comes from (EventBridge's `account`)
    # What went away (an instance leaving running, a target or an ENI deleted): a sensor's,
    # perhaps; its place's dark sessions are looked for.
    gone: tuple[str, ...] = ()

    @property
    def wants_enis(self) -> bool:
        return bool(self.instance_ids or self.eni_ids)


def read_event(body: str | bytes | dict[str, Any]) -> Event:
    """The event in an SQS message body (EventBridge delivers it verbatim), or in an API
    destination's request body."""
    if isinstance(body, str | bytes):
        if len(body) > MAX_EVENT_BYTES:
            raise NotAnEventError(f"{len(body)} bytes: EventBridge events are at most 256 KiB")
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as error:
            raise NotAnEventError(f"not JSON: {error}") from None
    if not isinstance(body, dict):
        raise NotAnEventError("not a JSON object")
    event_id, kind, detail = body.get("id"), body.get("detail-type"), body.get("detail")
    if not isinstance(event_id, str) or not event_id or not isinstance(kind, str):
        raise NotAnEventError("an EventBridge event has an id and a detail-type")
    if not _is_text(event_id):
        raise NotAnEventError("an EventBridge event's id is text (it has a lone surrogate)")
    if not isinstance(detail, dict):
        raise NotAnEventError("an EventBridge event's detail is an object")
    region, account = body.get("region"), body.get("account")
    if region is not None and not isinstance(region, str):
        raise NotAnEventError("an EventBridge event's region is a string")
    if account is not None and not isinstance(account, str):
        raise NotAnEventError("an EventBridge event's account is a string")
    return replace(_asks(event_id, region, kind, detail), account=account)


def _asks(event_id: str, region: str | None, kind: str, detail: dict[str, Any]) -> Event:
    if kind == STATE_CHANGE:
        return _state_change(event_id, region, detail)
    if kind == API_CALL:
        return _api_call(event_id, region, detail)
    if kind == JOB:
        return Event(event_id, region, job=detail)
    return Event(event_id, region, ignored=f"detail-type {kind!r}")


def _is_text(value: str) -> bool:
    """Whether `value` can be written as UTF-8 (JSON's `\\ud800` reads as a lone surrogate,
    which no key or record can hold)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _state_change(event_id: str, region: str | None, detail: dict[str, Any]) -> Event:
    instance, state = detail.get("instance-id"), detail.get("state")
    if not isinstance(state, str) or (state != "running" and state not in LEAVING):
        return Event(event_id, region, ignored=f"instance state {state!r}")
    if not isinstance(instance, str) or not INSTANCE_ID.fullmatch(instance):
        raise NotAnEventError(
            "a state-change event names its instance-id (i- and 8 to 17 letters or digits)"
        )
    if state in LEAVING:
        return Event(event_id, region, gone=(instance,))
    return Event(event_id, region, instance_ids=(instance,))


def _api_call(event_id: str, region: str | None, detail: dict[str, Any]) -> Event:
    name = detail.get("eventName")
    if not isinstance(name, str):
        raise NotAnEventError("a CloudTrail record names its eventName")
    if detail.get("errorCode"):
        return Event(event_id, region, ignored=f"{name} failed ({detail['errorCode']!r})")
    if name == "CreateNetworkInterface":
        eni = _dig(detail, "responseElements", "networkInterface", "networkInterfaceId")
    elif name == "AttachNetworkInterface":
        eni = _dig(detail, "requestParameters", "networkInterfaceId")
    elif name in GONE_CALLS:
        return Event(event_id, region, gone=_gone_ids(name, detail))
    else:
        return Event(event_id, region, ignored=f"eventName {name!r}")
    if not isinstance(eni, str) or not NETWORK_INTERFACE_ID.fullmatch(eni):
        raise NotAnEventError(
            f"a {name} record names its network interface (eni- and 8 to 17 letters or digits)"
        )
    return Event(event_id, region, eni_ids=(eni,))


def _gone_ids(name: str, detail: dict[str, Any]) -> tuple[str, ...]:
    """The ids a deletion names (CloudTrail writes an EC2 request under the request's own
    name; `DeleteVpcEndpoints`' ids as {tag, content}, a list of them for several), else the
    call's name: the repair reads every target's health whatever the event names."""
    params = detail.get("requestParameters")
    if not isinstance(params, dict):
        return (name,)
    nested = params.get(f"{name}Request")
    nested = nested if isinstance(nested, dict) else {}
    endpoints = nested.get("VpcEndpointId")
    listed = endpoints if isinstance(endpoints, list) else [endpoints]
    named = [e.get("content") for e in listed if isinstance(e, dict)]
    found = [
        params.get("networkInterfaceId")
        or params.get("trafficMirrorTargetId")
        or params.get("loadBalancerArn")
        or nested.get("TrafficMirrorTargetId"),
        *named,
    ]
    ids = tuple(f for f in found if isinstance(f, str) and _is_text(f))
    return ids or (name,)


def _dig(detail: dict[str, Any], *path: str) -> Any:
    """detail[path[0]][path[1]]..., None where a key is missing or null; NotAnEventError where a
    step is not an object."""
    found: Any = detail
    for i, key in enumerate(path):
        if found is None:
            return None
        if not isinstance(found, dict):
            raise NotAnEventError(f"{'.'.join(path[:i]) or 'detail'} is not an object")
        found = found.get(key)
    return found
