"""Whether a traffic mirror target is alive: what its sessions mirror into still exists.

EC2 keeps a session whose target's resource went away (the sensor instance terminated or
stopped, its ENI deleted, its Network Load Balancer or Gateway Load Balancer endpoint
deleted) and silently stops mirroring it: the session is *dark*. This reads each target's
resource on the road every EC2 call takes (worker/ec2.py): the targets
(DescribeTrafficMirrorTargets), and by the target's type

- a network-interface target's ENI (DescribeNetworkInterfaces) and the instance it is
  attached to (DescribeInstances, by filter, so one gone is no error): gone, detached, or
  not `running` is dead;
- a network-load-balancer target's load balancer (Elastic Load Balancing v2
  DescribeLoadBalancers, by ARN, 20 a call, on the road's elbv2 client): gone
  (`LoadBalancerNotFound`, or not in the answer) or `failed` is dead; `active` and
  `active_impaired` (routing traffic, short of capacity) are live; `provisioning` is live
  too (a new balancer becomes `active` by itself, and its sessions with it: moving them
  away would undo what was just set up), its reason says so;
- a gateway-load-balancer-endpoint target's endpoint (DescribeVpcEndpoints, every
  GatewayLoadBalancer endpoint of the account: EC2 fails the whole call for one unknown
  id): gone, or `deleting`, `deleted`, `failed`, `rejected` or `expired` is dead; `pending`
  and `pendingAcceptance` are live, said in the reason.

A read that fails fails the whole reading (and with it the pass: nothing is repaired or
pruned on a partial view), except for an event's (`spare`): there a kind of target whose read
fails (its ENIs and instances, its load balancers, its endpoints: a role without
elasticloadbalancing:DescribeLoadBalancers, say) is not judged, its targets counted live with
the reason, and a WARNING names the permission the read needs; the rules that use none of
them are planned as ever. Not judged (counted live, the reason says so): another account's
target shared with this one (RAM), whose ENI, endpoint or load balancer this account cannot
describe (its owner's place, when a pass reads it, says), and any of them when this place's
account is not known.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mirrorq.inventory import FILTER_VALUES, PAGE_SIZE
from worker.ec2 import Ec2Road
from worker.errors import classify

log = logging.getLogger(__name__)
RUNNING, PENDING = "running", "pending"
LB_ARNS_PER_CALL = 20  # DescribeLoadBalancers' LoadBalancerArns: "up to 20 ... in a single call"
LB_NOT_FOUND = "LoadBalancerNotFound"
# Elastic Load Balancing v2's LoadBalancerStateEnum (botocore's elbv2 model).
LB_LIVE = frozenset({"active", "active_impaired", "provisioning"})
# A VPC endpoint's states (EC2 API reference, VpcEndpoint.State), lowercased.
ENDPOINT_DEAD = frozenset({"deleting", "deleted", "failed", "rejected", "expired"})


@dataclass(frozen=True)
class Health:
    """A target's state: `live`, and why not (or what was not checked)."""

    target_id: str
    live: bool
    reason: str = ""  # target_gone, eni_gone, eni_detached, instance_gone, instance_<state>
    instance_id: str | None = None  # a network-interface target's instance, when known


async def target_health(
    road: Ec2Road, target_ids: Iterable[str], own_account: str | None = None, *, spare: bool = False
) -> dict[str, Health]:
    """The health of these targets in the road's place. `own_account`: this place's account,
    to tell its own target whose ENI is gone from another account's shared one, whose ENI
    it cannot see (None: an ENI it cannot see is not judged, and counts live). `spare` (an
    event's reading): a kind of target whose read fails is not judged (live, the reason says
    why, a WARNING names the permission) instead of failing the whole reading."""
    wanted = sorted(set(target_ids))
    if not wanted:
        return {}
    described = {
        t["TrafficMirrorTargetId"]: t
        for t in await road.paginate("DescribeTrafficMirrorTargets", "TrafficMirrorTargets")
        if t["TrafficMirrorTargetId"] in wanted
    }
    unread: dict[str, str] = {}  # a kind of target not read: why
    eni_ids = [t["NetworkInterfaceId"] for t in described.values() if t.get("NetworkInterfaceId")]
    enis: dict[str, dict[str, Any]] = {}
    states: dict[str, str] = {}
    try:
        enis = {e["NetworkInterfaceId"]: e for e in await _described(road, eni_ids)}
        instance_ids = [
            (e.get("Attachment") or {}).get("InstanceId")
            for e in enis.values()
            if (e.get("Attachment") or {}).get("InstanceId")
        ]
        states = await _instance_states(road, [i for i in instance_ids if i])
    except (ClientError, BotoCoreError) as error:
        unread[ENI_KIND] = _unread(error, spare, len(eni_ids), "sensor ENIs and instances")
    ours = [t for t in described.values() if own_account is not None and _owned(t, own_account)]
    arns = [t["NetworkLoadBalancerArn"] for t in ours if t.get("NetworkLoadBalancerArn")]
    balancers: dict[str, str] | None = {}
    try:
        balancers = await load_balancer_states(road, arns) if arns else {}
    except (ClientError, BotoCoreError) as error:
        unread[NLB_KIND] = _unread(error, spare, len(arns), "load balancers")
        balancers = None
    endpoint_ids = [
        t["GatewayLoadBalancerEndpointId"] for t in ours if t.get("GatewayLoadBalancerEndpointId")
    ]
    endpoints: dict[str, str] | None = {}
    try:
        endpoints = await endpoint_states(road) if endpoint_ids else {}
    except (ClientError, BotoCoreError) as error:
        unread[ENDPOINT_KIND] = _unread(error, spare, len(endpoint_ids), "endpoints")
        endpoints = None
    found = {
        t: health_of(
            t, described.get(t), enis, states, own_account, balancers=balancers, endpoints=endpoints
        )
        for t in wanted
    }
    for t, health in found.items():
        why = unread.get(_kind(described.get(t)))
        # Not read: not judged, live (a shared target keeps its own reason: never read anyway).
        if why is not None and health.reason != SHARED:
            found[t] = Health(t, True, why)
    return found


ENI_KIND, NLB_KIND, ENDPOINT_KIND = "network-interface", "network-load-balancer", "gwlb-endpoint"
SHARED = "shared from another account: not checked"
# The IAM permission each read needs, by the action that was refused.
PERMISSIONS = {
    "DescribeLoadBalancers": "elasticloadbalancing:DescribeLoadBalancers",
    "DescribeVpcEndpoints": "ec2:DescribeVpcEndpoints",
    "DescribeNetworkInterfaces": "ec2:DescribeNetworkInterfaces",
    "DescribeInstances": "ec2:DescribeInstances",
}


def _kind(target: dict[str, Any] | None) -> str:
    if target is None:
        return ""
    if target.get("NetworkInterfaceId"):
        return ENI_KIND
    if target.get("NetworkLoadBalancerArn"):
        return NLB_KIND
    return ENDPOINT_KIND if target.get("GatewayLoadBalancerEndpointId") else ""


def _unread(error: ClientError | BotoCoreError, spare: bool, count: int, what: str) -> str:
    """Why a kind of target was not judged (`spare`), said in a WARNING; else re-raised."""
    if not spare:
        raise error
    failure = classify(error)
    action = failure.operation or getattr(error, "operation_name", None) or "the read"
    said = f"{failure.service} answered {failure.code} to {action}"
    permission = PERMISSIONS.get(str(action), str(action))
    log.warning(
        "the %s of %d target(s) could not be read (%s): those targets are not judged, counted "
        "live; the read needs the permission %s",
        what,
        count,
        said,
        permission,
    )
    return f"not read ({said}): not checked"


def _owned(target: dict[str, Any], own_account: str) -> bool:
    """The target is this account's own: its load balancer or endpoint is this account's to
    describe (a target shared through RAM is its owner's, and so are they)."""
    return target.get("OwnerId") in (None, own_account)


def health_of(  # noqa: PLR0911 - a return per state
    target_id: str,
    target: dict[str, Any] | None,
    enis: dict[str, dict[str, Any]],
    states: dict[str, str],
    own_account: str | None,
    *,
    balancers: dict[str, str] | None = None,
    endpoints: dict[str, str] | None = None,
) -> Health:
    """One target's health from what was read (pure). `balancers`: the state of each load
    balancer read, by ARN (one not there is gone); `endpoints`: each Gateway Load Balancer
    endpoint's, by id (likewise); None: not read, so not judged."""
    if target is None:
        return Health(target_id, False, "target_gone")
    eni_id = target.get("NetworkInterfaceId")
    if not eni_id:
        return _balancer_health(target_id, target, own_account, balancers, endpoints)
    eni = enis.get(eni_id)
    if eni is None:
        owner = target.get("OwnerId")
        if own_account is None or owner is None:
            # Whose it is cannot be told: a sharer's live sensor must never be taken for dead.
            return Health(target_id, True, "ENI not visible, owner unknown: not checked")
        if owner != own_account:
            return Health(target_id, True, "shared from another account: not checked")
        return Health(target_id, False, "eni_gone")
    attachment = eni.get("Attachment") or {}
    instance = attachment.get("InstanceId")
    if not instance:
        if attachment and eni.get("Status") == "in-use":
            # Attached, but to no instance this account reads (another service's): in use,
            # and a live sensor must never be taken for dead.
            owner = attachment.get("InstanceOwnerId", "another owner")
            return Health(target_id, True, f"attached to no instance ({owner}): not checked")
        return Health(target_id, False, "eni_detached")
    state = states.get(instance)
    if state is None:
        return Health(target_id, False, "instance_gone", instance)
    if state == PENDING:
        # Launched (an Auto Scaling group's replacement sensor, say): it runs by itself, as a
        # provisioning load balancer becomes active; moving its sessions away would undo that.
        return Health(target_id, True, f"instance_{state}", instance)
    if state != RUNNING:
        return Health(target_id, False, f"instance_{state}", instance)
    return Health(target_id, True, "", instance)


def _balancer_health(  # noqa: PLR0911 - a return per state
    target_id: str,
    target: dict[str, Any],
    own_account: str | None,
    balancers: dict[str, str] | None,
    endpoints: dict[str, str] | None,
) -> Health:
    """A network-load-balancer or gateway-load-balancer-endpoint target's health."""
    arn = target.get("NetworkLoadBalancerArn")
    endpoint = target.get("GatewayLoadBalancerEndpointId")
    found = balancers if arn else endpoints
    if not (arn or endpoint):
        return Health(target_id, True, f"{target.get('Type') or 'target'}: not checked")
    if own_account is None:
        return Health(target_id, True, "owner unknown: not checked")
    if not _owned(target, own_account):
        return Health(target_id, True, "shared from another account: not checked")
    if found is None:
        return Health(target_id, True, f"{target.get('Type') or 'target'}: not read")
    if arn:
        state = found.get(arn)
        if state is None:
            return Health(target_id, False, "load_balancer_gone")
        if state not in LB_LIVE:
            return Health(target_id, False, f"load_balancer_{state}")
        return Health(
            target_id, True, "load_balancer_provisioning" if state == "provisioning" else ""
        )
    state = found.get(str(endpoint))
    if state is None:
        return Health(target_id, False, "endpoint_gone")
    if state in ENDPOINT_DEAD:
        return Health(target_id, False, f"endpoint_{state}")
    return Health(target_id, True, "" if state == "available" else f"endpoint_{state}")


async def load_balancer_states(road: Ec2Road, arns: Iterable[str]) -> dict[str, str]:
    """Each load balancer's State.Code, by ARN; one that does not exist is left out.

    DescribeLoadBalancers by ARN fails the whole call (`LoadBalancerNotFound`) for one ARN
    that does not exist: such a group of ARNs is read again in halves, down to the one gone.
    Any other failure is raised."""
    states: dict[str, str] = {}
    wanted = sorted(set(arns))
    groups = [wanted[i : i + LB_ARNS_PER_CALL] for i in range(0, len(wanted), LB_ARNS_PER_CALL)]
    while groups:
        group = groups.pop()
        try:
            found = await road.elbv2_pages(
                "DescribeLoadBalancers", "LoadBalancers", LoadBalancerArns=group
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != LB_NOT_FOUND:
                raise
            if len(group) > 1:
                half = len(group) // 2
                groups += [group[:half], group[half:]]
            continue
        for balancer in found:
            states[balancer["LoadBalancerArn"]] = (balancer.get("State") or {}).get("Code", "")
    return states


async def endpoint_states(road: Ec2Road) -> dict[str, str]:
    """Each Gateway Load Balancer endpoint of the place's account, its state lowercased, by
    id (EC2 answers `Available`, its docs say `available`)."""
    found = await road.paginate(
        "DescribeVpcEndpoints",
        "VpcEndpoints",
        Filters=[{"Name": "vpc-endpoint-type", "Values": ["GatewayLoadBalancer"]}],
        MaxResults=PAGE_SIZE,
    )
    return {e["VpcEndpointId"]: str(e.get("State", "")).lower() for e in found}


async def _described(road: Ec2Road, eni_ids: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    wanted = sorted(set(eni_ids))
    for start in range(0, len(wanted), FILTER_VALUES):
        found += await road.paginate(
            "DescribeNetworkInterfaces",
            "NetworkInterfaces",
            Filters=[
                {"Name": "network-interface-id", "Values": wanted[start : start + FILTER_VALUES]}
            ],
            MaxResults=PAGE_SIZE,
        )
    return found


async def _instance_states(road: Ec2Road, instance_ids: list[str]) -> dict[str, str]:
    """Each instance's state name; one EC2 no longer lists is left out (by filter: the
    InstanceIds parameter fails the whole call for one unknown id)."""
    states: dict[str, str] = {}
    wanted = sorted(set(instance_ids))
    for start in range(0, len(wanted), FILTER_VALUES):
        reservations = await road.paginate(
            "DescribeInstances",
            "Reservations",
            Filters=[{"Name": "instance-id", "Values": wanted[start : start + FILTER_VALUES]}],
            MaxResults=PAGE_SIZE,
        )
        for reservation in reservations:
            for instance in reservation["Instances"]:
                states[instance["InstanceId"]] = instance.get("State", {}).get("Name", "")
    return states
