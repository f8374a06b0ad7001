"""Whether a traffic mirror target is alive: what its sessions mirror into still exists.

EC2 keeps a session whose target's resource went away (the sensor instance terminated or
stopped, its ENI deleted) and silently stops mirroring it: the session is *dark*. This reads
each target's resource on the road every EC2 call takes (worker/ec2.py): the targets
(DescribeTrafficMirrorTargets), a network-interface target's ENI (DescribeNetworkInterfaces)
and the instance it is attached to (DescribeInstances, by filter, so one gone is no error).

Not read (said in each answer's `reason`, counted live): a Network Load Balancer target's load
balancer (elbv2 DescribeLoadBalancers: the road holds an EC2 client only, so reading it needs
an elbv2 client, with its own limiter, per road in worker/aws.py and worker/roads.py; the
emulator does answer elbv2, through moto's dispatcher, uncounted in its stats, but its labs'
NLB targets name made-up ARNs, which DescribeLoadBalancers answers LoadBalancerNotFound, and
moto 5.2.5 makes a `Type=network` balancer with an `.../app/...` ARN, `provisioning`), a
Gateway Load Balancer endpoint's endpoint (DescribeVpcEndpoints), and another account's
sensor ENI shared with this one (RAM), which this account cannot describe (its owner's place,
when a pass reads it, says); an ENI not visible when this place's account is not known.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mirrorq.inventory import FILTER_VALUES, PAGE_SIZE
from worker.ec2 import Ec2Road

RUNNING = "running"


@dataclass(frozen=True)
class Health:
    """A target's state: `live`, and why not (or what was not checked)."""

    target_id: str
    live: bool
    reason: str = ""  # target_gone, eni_gone, eni_detached, instance_gone, instance_<state>
    instance_id: str | None = None  # a network-interface target's instance, when known


async def target_health(
    road: Ec2Road, target_ids: Iterable[str], own_account: str | None = None
) -> dict[str, Health]:
    """The health of these targets in the road's place. `own_account`: this place's account,
    to tell its own target whose ENI is gone from another account's shared one, whose ENI
    it cannot see (None: an ENI it cannot see is not judged, and counts live)."""
    wanted = sorted(set(target_ids))
    if not wanted:
        return {}
    described = {
        t["TrafficMirrorTargetId"]: t
        for t in await road.paginate("DescribeTrafficMirrorTargets", "TrafficMirrorTargets")
        if t["TrafficMirrorTargetId"] in wanted
    }
    eni_ids = [t["NetworkInterfaceId"] for t in described.values() if t.get("NetworkInterfaceId")]
    enis = {e["NetworkInterfaceId"]: e for e in await _described(road, eni_ids)}
    instance_ids = [
        (e.get("Attachment") or {}).get("InstanceId")
        for e in enis.values()
        if (e.get("Attachment") or {}).get("InstanceId")
    ]
    states = await _instance_states(road, [i for i in instance_ids if i])
    return {t: health_of(t, described.get(t), enis, states, own_account) for t in wanted}


def health_of(  # noqa: PLR0911 - a return per state
    target_id: str,
    target: dict[str, Any] | None,
    enis: dict[str, dict[str, Any]],
    states: dict[str, str],
    own_account: str | None,
) -> Health:
    """One target's health from what was read (pure)."""
    if target is None:
        return Health(target_id, False, "target_gone")
    eni_id = target.get("NetworkInterfaceId")
    if not eni_id:
        kind = target.get("Type") or "load balancer"
        return Health(target_id, True, f"{kind}: not checked")
    eni = enis.get(eni_id)
    if eni is None:
        owner = target.get("OwnerId")
        if own_account is None or owner is None:
            # Whose it is cannot be told: a sharer's live sensor must never be taken for dead.
            return Health(target_id, True, "ENI not visible, owner unknown: not checked")
        if owner != own_account:
            return Health(target_id, True, "shared from another account: not checked")
        return Health(target_id, False, "eni_gone")
    instance = (eni.get("Attachment") or {}).get("InstanceId")
    if not instance:
        return Health(target_id, False, "eni_detached")
    state = states.get(instance)
    if state is None:
        return Health(target_id, False, "instance_gone", instance)
    if state != RUNNING:
        return Health(target_id, False, f"instance_{state}", instance)
    return Health(target_id, True, "", instance)


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
