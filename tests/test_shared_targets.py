"""A target shared by several accounts (RAM) is one target: planning several places against
one load counts its sources over all of them (pure: planning.plan_places)."""

from __future__ import annotations

from typing import Any

from mirrorq.planning import Outcome, PlaceState, Target, plan, plan_places
from mirrorq.rules import Choose, Rule, Selectors

SHARED, OTHER = "tmt-0000000000000000a", "tmt-0000000000000000b"
FA, FB = "tmf-0000000000000000a", "tmf-0000000000000000b"
RULE = Rule("sensor", Selectors(tags=(("Env", "prod"),)), (SHARED,), FA)


def eni(name: str, zone: str = "us-east-1a") -> dict[str, Any]:
    return {
        "NetworkInterfaceId": f"eni-{name:0>8}",
        "AvailabilityZone": zone,
        "TagSet": [{"Key": "Env", "Value": "prod"}],
    }


def session(source: dict[str, Any], target: str, filter_id: str, n: int) -> dict[str, Any]:
    return {
        "TrafficMirrorSessionId": f"tms-{n:017x}",
        "NetworkInterfaceId": source["NetworkInterfaceId"],
        "TrafficMirrorTargetId": target,
        "TrafficMirrorFilterId": filter_id,
    }


def outcomes(planned: Any) -> list[str]:
    return [i.outcome.value for i in planned.items]


def test_a_shared_target_takes_its_sources_once_over_every_place_planned() -> None:
    """Room for 3 sources: account A's session and two new ones fill it, so B's ENIs find it
    full (planned alone, B would have put two more on it)."""
    a = [eni("a1"), eni("a2"), eni("a3")]
    b = [eni("b1"), eni("b2")]
    target = {SHARED: Target(SHARED, "eni-sensor", source_limit=3)}
    in_a = PlaceState([RULE], a, [session(a[0], SHARED, FA, 1)], target, set())
    in_b = PlaceState([Rule(RULE.name, RULE.selectors, (SHARED,), FB)], b, [], target, set())

    first, second = plan_places([in_a, in_b])
    assert outcomes(first) == ["already_mirrored", "create", "create"]
    assert outcomes(second) == ["targets_full", "targets_full"]
    alone = plan(in_b.rules, b, [], target, set())
    assert outcomes(alone) == ["create", "create"]


def test_sessions_of_every_place_count_once_and_least_loaded_sees_them_all() -> None:
    """B's least-loaded choice counts A's sessions on the shared target (listed by A and by
    the owner, counted once), so B's ENI goes to the other target."""
    a, b = eni("a1"), eni("b1")
    targets = {SHARED: Target(SHARED), OTHER: Target(OTHER)}
    rule = Rule("spread", RULE.selectors, (SHARED, OTHER), FB, choose=Choose.LEAST_LOADED)
    on_shared = session(a, SHARED, FA, 1)
    owner = PlaceState([], [], [on_shared, session(eni("o1"), OTHER, FA, 2)], targets, set())
    in_a = PlaceState([], [], [on_shared], targets, set())
    in_b = PlaceState([rule], [b], [], targets, set())

    *_, planned = plan_places([owner, in_a, in_b])
    (item,) = planned.items
    assert (item.outcome, item.target_id) == (Outcome.CREATE, SHARED)  # 1 session each: the first
    *_, planned = plan_places([in_a, in_a, in_b])  # A's one session, seen twice, is one
    assert planned.items[0].target_id == OTHER


def test_a_shared_sensor_is_described_as_its_owner_sees_it() -> None:
    """A workload account cannot describe another's sensor ENI (zone unknown); the owner,
    read in the same pass, can: same-az uses the owner's zone for every place."""
    rule = Rule("near", RULE.selectors, (SHARED, OTHER), FA, choose=Choose.SAME_AZ)
    blind = {SHARED: Target(SHARED, "eni-sensor", source_limit=10), OTHER: Target(OTHER)}
    owner = PlaceState(
        [], [], [], {SHARED: Target(SHARED, "eni-sensor", "us-east-1b", 10)}, {"eni-sensor"}
    )
    workload = PlaceState([rule], [eni("w1", zone="us-east-1a")], [], blind, set())

    (alone,) = plan_places([workload])
    assert alone.items[0].target_id == SHARED  # zone unknown: it might serve us-east-1a
    _, planned = plan_places([owner, workload])
    assert planned.items[0].target_id == OTHER  # the owner's view: it is in us-east-1b
