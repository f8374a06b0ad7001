"""Adjustments to moto 5.2.5's EC2 and SQS so they read like the real thing to clients.

- Traffic Mirroring ids carry EC2's prefixes (`tms-`, `tmt-`, `tmf-`), not moto's.
- DescribeNetworkInterfaces and DescribeTrafficMirrorSessions honour MaxResults/NextToken,
  so clients that forget to paginate miss ENIs here as they would on EC2.
- CreateNetworkInterface keeps its InterfaceType (efa, trunk...), which moto drops.
- RunInstances tags the instances' ENIs with its `network-interface` TagSpecifications, as
  EC2 does (moto drops them), before it answers (and so before any event about them).
- Traffic Mirror sessions are indexed by source ENI, target and VXLAN id
  (`emulator.session_index`), so the create checks need no scan.
- A resource's own tags are read from its entry in the tag store, and a launch's AMI by its
  id, where moto scanned every tag of the Region for each resource it answered with (a
  Describe of N ENIs read N times every tag) and every AMI for each instance it launched;
  the answers are the same.
- Targets shared through the emulator's RAM stand-in show in the accounts they are shared
  with, and their owner sees the sessions made on them (`emulator.sharing`).
- Elastic Load Balancing v2: a `network` balancer's ARN reads `loadbalancer/net/...` and a
  `gateway` one's `loadbalancer/gwy/...`, as AWS makes them (moto makes every one
  `loadbalancer/app/...`); DescribeLoadBalancers by ARN answers `LoadBalancerNotFound` for
  any ARN that does not exist (moto answers it only when the first one is missing); a state
  set through the control endpoint (`hold_state`) stays (moto turns `provisioning` into
  `active` on any Describe).
- SQS runs under one lock of its own (`SQS_LOCK`) that a long poll releases while it waits,
  and a poll wakes when a message becomes visible again or its WaitTimeSeconds is up, not
  only on its 1 s tick.

`install()` is idempotent and is called before the emulator serves its first request.
"""

from __future__ import annotations

import base64
import math
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

from moto.core.responses import ActionResult
from moto.core.utils import unix_time, unix_time_millis
from moto.ec2 import utils as ec2_utils
from moto.ec2.exceptions import EC2ClientError, InvalidNextToken
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.traffic_mirrors import TrafficMirrors
from moto.elbv2.exceptions import LoadBalancerNotFoundError
from moto.elbv2.models import ELBv2Backend, FakeLoadBalancer, elbv2_backends
from moto.sqs.models import Queue, SQSBackend

from emulator import session_index, sharing

EC2_PREFIXES = {
    "traffic-mirror-session": "tms",
    "traffic-mirror-target": "tmt",
    "traffic-mirror-filter": "tmf",
}
MAX_RESULTS = (5, 1000)  # EC2's bounds for both paginated Describe calls

T = TypeVar("T")


def _encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode(token: str) -> int:
    try:
        kind, _, offset = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "offset":
            return int(offset)
    except ValueError:
        pass
    raise InvalidNextToken(token)


def paginate(response: Any, items: Sequence[T]) -> tuple[list[T], str | None]:
    """One page of `items` as EC2 would return it, and the NextToken for the rest."""
    start = _decode(response._get_param("NextToken")) if response._get_param("NextToken") else 0
    max_results = response._get_int_param("MaxResults")
    if max_results is None:
        return list(items[start:]), None
    low, high = MAX_RESULTS
    if not low <= max_results <= high:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"Value ({max_results}) for parameter maxResults is invalid. "
            f"Expecting a value between {low} and {high}.",
        )
    end = start + max_results
    return list(items[start:end]), (_encode(end) if end < len(items) else None)


def _describe_network_interfaces(self: Any) -> ActionResult:
    eni_ids = self._get_param("NetworkInterfaceIds", [])
    filters = self._filters_from_querystring()
    self.error_on_dryrun()
    enis = self.ec2_backend.get_all_network_interfaces(eni_ids, filters)
    page, token = paginate(self, enis)
    result: dict[str, Any] = {"NetworkInterfaces": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _describe_traffic_mirror_sessions(self: Any) -> ActionResult:
    filters = dict(self._filters_from_querystring() or {})
    # moto compares the integer attribute with the filter's strings and never matches.
    try:
        numbers = {int(n) for n in filters.pop("session-number", [])}
    except ValueError:
        raise EC2ClientError(
            "InvalidParameterValue", "The filter session-number takes integers."
        ) from None
    sessions = self.ec2_backend.describe_traffic_mirror_sessions(
        traffic_mirror_session_ids=self._get_param("TrafficMirrorSessionIds"),
        filters=filters or None,
    )
    if numbers:
        sessions = [s for s in sessions if s.session_number in numbers]
    page, token = paginate(self, sessions)
    result: dict[str, Any] = {"TrafficMirrorSessions": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


_create_network_interface = ElasticNetworkInterfaces.create_network_interface


def _create_typed_network_interface(self: Any) -> ActionResult:
    result = _create_network_interface(self)
    interface_type = self._get_param("InterfaceType")
    if interface_type:
        result.result["NetworkInterface"].interface_type = interface_type  # type: ignore[index]
    return result


# SQS ----------------------------------------------------------------------------------------

# moto's SQS has no lock: a DeleteMessage that rebuilds a queue's message list drops a message
# sent meanwhile, and two polls can both take one message. Every SQS call the emulator serves
# holds this lock; each queue's condition is built on it, so a long poll releases it while it
# waits and no send can slip in between a poll's scan and its wait.
SQS_LOCK = threading.RLock()
# A message turns visible strictly after its instant: wake just past it.
_SETTLE_S = 0.001
_poll = threading.local()


def _next_change_s(queue: Any) -> float:
    """Seconds until one of the queue's messages turns visible or its delay ends."""
    now = unix_time_millis()
    instants = [
        instant
        for m in queue._messages
        for instant in (m.visible_at, m.delayed_until)
        if instant >= now
    ]
    return (min(instants) - now) / 1000 + _SETTLE_S if instants else math.inf


_queue_init = Queue.__init__


def _queue_init_on_sqs_lock(self: Any, *args: Any, **kwargs: Any) -> None:
    _queue_init(self, *args, **kwargs)
    self._messages_lock = threading.Condition(SQS_LOCK)


def _wait_for_messages(self: Any, timeout: float) -> None:
    """Wait for a send, a visibility change, the next message to turn visible or the poll's end.

    moto waits on "any visible message" for up to 1 s: a message skipped as undeliverable
    (its FIFO group busy) makes that wait return at once and the poll spins, and a message
    made visible by ChangeMessageVisibility or an expired timeout waits for the next tick.
    """
    deadline: float | None = getattr(_poll, "deadline", None)
    left = math.inf if deadline is None else deadline - unix_time() + _SETTLE_S
    with self._messages_lock:
        self._messages_lock.wait(max(0.0, min(timeout, _next_change_s(self), left)))


_receive_message = SQSBackend.receive_message


def _receive_message_until_deadline(
    self: Any, queue_name: str, count: int, wait_seconds_timeout: int, *args: Any, **kwargs: Any
) -> Any:
    outer = getattr(_poll, "deadline", None)
    _poll.deadline = unix_time() + wait_seconds_timeout
    try:
        return _receive_message(self, queue_name, count, wait_seconds_timeout, *args, **kwargs)
    finally:
        _poll.deadline = outer


_change_message_visibility = SQSBackend.change_message_visibility


def _change_message_visibility_and_wake(
    self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int
) -> None:
    _change_message_visibility(self, queue_name, receipt_handle, visibility_timeout)
    # A message handed back (timeout 0) is receivable now: wake the polls waiting on it.
    condition = self.get_queue(queue_name)._messages_lock
    with condition:
        condition.notify_all()


_run_instances = InstanceResponse.run_instances


def _run_instances_tagging_enis(self: Any) -> ActionResult:
    result = _run_instances(self)
    tags = self._parse_tag_specification().get("network-interface", {})
    if tags:
        for instance in result.result.instances:  # type: ignore[attr-defined]
            self.ec2_backend.create_tags([nic.id for nic in instance.nics.values()], tags)
    return result


# What makes an EC2 filter value a pattern (fnmatch's, with moto's escapes): a value without
# these matches one id exactly.
_PATTERN_CHARACTERS = frozenset("*?[\\")
_get_tags = TaggedEC2Resource.get_tags


def _own_tags(self: Any) -> list[dict[str, str]]:
    """moto's `get_tags`, read from the resource's own entry: moto asks `describe_tags` with a
    `resource-id` filter, which tests every tag of every resource in the Region against it."""
    resource_id = self.id
    if not isinstance(resource_id, str) or _PATTERN_CHARACTERS & set(resource_id):
        return _get_tags(self)
    tags = self.ec2_backend.tags.get(resource_id)  # never adds an entry (a defaultdict)
    if not tags:
        return []
    kind = ec2_utils.EC2_PREFIX_TO_RESOURCE.get(ec2_utils.get_prefix(resource_id), "")
    return [
        {"resource_id": resource_id, "key": key, "value": value, "resource_type": kind}
        for key, value in tags.items()
    ]


_describe_images = AmiBackend.describe_images


def _describe_images_by_id(
    self: Any,
    ami_ids: list[str] | None = None,
    filters: dict[str, Any] | None = None,
    exec_users: list[str] | None = None,
    owners: list[str] | None = None,
) -> list[Ami]:
    """moto's `describe_images`, with the one lookup every launch makes (an `image-id` filter
    naming one id) answered from the AMIs by id instead of matching all of them."""
    if not (ami_ids or exec_users or owners) and filters is not None and len(filters) == 1:
        image_id = filters.get("image-id")
        if isinstance(image_id, str) and not _PATTERN_CHARACTERS & set(image_id):
            ami = self.amis.get(image_id)
            return [] if ami is None else [ami]
    return _describe_images(self, ami_ids, filters, exec_users, owners)


ARN_KINDS = {"network": "net", "gateway": "gwy"}  # AWS's ARN part of each balancer type
_moto_create_load_balancer = ELBv2Backend.create_load_balancer
_moto_activate = FakeLoadBalancer.activate


def _create_load_balancer_typed(self: Any, *args: Any, **kwargs: Any) -> Any:
    balancer = _moto_create_load_balancer(self, *args, **kwargs)
    kind = ARN_KINDS.get(balancer.type)
    if kind is not None:
        old = balancer.arn
        balancer.arn = old.replace(":loadbalancer/app/", f":loadbalancer/{kind}/", 1)
        self.load_balancers[balancer.arn] = self.load_balancers.pop(old)
        tags = self.tagging_service.tags
        if old in tags:
            tags[balancer.arn] = tags.pop(old)
    return balancer


def _describe_load_balancers_each(
    self: Any, arns: list[str] | None, names: list[str] | None
) -> list[Any]:
    balancers = list(self.load_balancers.values())
    for balancer in balancers:
        balancer.activate()
    if not arns and not names:
        return balancers
    matched: list[Any] = []
    for wanted, attribute in ((arns or [], "arn"), (names or [], "name")):
        for value in wanted:
            found = next((b for b in balancers if getattr(b, attribute) == value), None)
            if found is None:
                raise LoadBalancerNotFoundError()
            if found not in matched:
                matched.append(found)
    return matched


def _activate_unless_held(self: Any) -> None:
    if not getattr(self, "mirrorq_held", False):
        _moto_activate(self)


def hold_state(account: str, region: str, arn: str, state: str) -> dict[str, Any]:
    """Set a load balancer's State.Code (`provisioning`, `active`, `active_impaired`,
    `failed`) and keep it so: the emulator's control endpoint, for tests."""
    if state not in ("provisioning", "active", "active_impaired", "failed"):
        raise ValueError(f"not a load balancer state: {state}")
    balancer = elbv2_backends[account][region].load_balancers.get(arn)
    if balancer is None:
        raise ValueError(f"no load balancer {arn} in {account}/{region}")
    balancer.state = state
    balancer.mirrorq_held = True  # type: ignore[attr-defined]
    return {"arn": arn, "state": state}


def install() -> None:
    session_index.install()
    sharing.install()
    for resource, prefix in EC2_PREFIXES.items():
        ec2_utils.EC2_RESOURCE_TO_PREFIX[resource] = prefix
        ec2_utils.EC2_PREFIX_TO_RESOURCE[prefix] = resource
    ElasticNetworkInterfaces.describe_network_interfaces = _describe_network_interfaces  # type: ignore[method-assign]
    TrafficMirrors.describe_traffic_mirror_sessions = _describe_traffic_mirror_sessions  # type: ignore[method-assign]
    ElasticNetworkInterfaces.create_network_interface = _create_typed_network_interface  # type: ignore[method-assign]
    InstanceResponse.run_instances = _run_instances_tagging_enis  # type: ignore[method-assign]
    TaggedEC2Resource.get_tags = _own_tags  # type: ignore[method-assign]
    AmiBackend.describe_images = _describe_images_by_id  # type: ignore[method-assign]
    ELBv2Backend.create_load_balancer = _create_load_balancer_typed  # type: ignore[method-assign]
    ELBv2Backend.describe_load_balancers = _describe_load_balancers_each  # type: ignore[method-assign]
    FakeLoadBalancer.activate = _activate_unless_held  # type: ignore[method-assign]
    Queue.__init__ = _queue_init_on_sqs_lock  # type: ignore[method-assign]
    Queue.wait_for_messages = _wait_for_messages  # type: ignore[method-assign]
    SQSBackend.receive_message = _receive_message_until_deadline  # type: ignore[method-assign]
    SQSBackend.change_message_visibility = _change_message_visibility_and_wake  # type: ignore[method-assign]


def forget_every_backend() -> None:
    """moto's `/moto-api/reset`, without its waste: moto re-creates every backend of every
    account and Region it ever served (EC2's builds a default VPC and loads its AMIs, about a
    tenth of a second each) and then drops them all. An organisation's lab has dozens, so a
    test's reset took seconds, and over 10 s on a loaded machine. Dropped here, each is made
    again only when next used."""
    from moto.core.base_backend import BackendDict, backend_lock
    from moto.core.model_instances import reset_model_data

    with backend_lock:
        for backends in BackendDict._instances:  # type: ignore[misc]
            backends.clear()
        BackendDict._instances.clear()  # type: ignore[misc]
    reset_model_data()
