"""Coverage and dark-session repair, planned from what was read (pure: no EC2, no Redis)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mirrorq.bulk import Live, PlaceRead, plan_read
from mirrorq.coverage import Coverage, EniCoverage, RuleCoverage, compute, percent
from mirrorq.dark import after, plan_repairs
from mirrorq.managed import rule_tag
from mirrorq.planning import PlaceState, Target
from mirrorq.prune import PruneState, plan_prune
from mirrorq.rules import Choose, Rule, Selectors
from mirrorq.targets import Health, health_of
from tasks.contract import NOWHERE

A, B, C = "tmt-aaaaaaaaaaaaaaaaa", "tmt-bbbbbbbbbbbbbbbbb", "tmt-ccccccccccccccccc"
F, OTHER_F = "tmf-00000000000000001", "tmf-00000000000000002"
PROD = Selectors(tags=(("Env", "prod"),))


def eni(n: int, zone: str = "us-east-1a", env: str = "prod") -> dict[str, Any]:
    return {
        "NetworkInterfaceId": f"eni-{n:017x}",
        "AvailabilityZone": zone,
        "InterfaceType": "interface",
        "Attachment": {"InstanceId": f"i-{n:017x}"},
        "TagSet": [{"Key": "Env", "Value": env}],
    }


def session(n: int, target: str, *, rule: str | None = "web", filter_id: str = F) -> dict[str, Any]:
    return {
        "TrafficMirrorSessionId": f"tms-{n:017x}",
        "NetworkInterfaceId": f"eni-{n:017x}",
        "TrafficMirrorTargetId": target,
        "TrafficMirrorFilterId": filter_id,
        "SessionNumber": n,
        "Tags": [rule_tag(rule)] if rule else [],
    }


def live_of(
    rule: Rule,
    enis: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    targets: dict[str, Target],
    health: dict[str, Health],
    types: dict[str, str] | None = None,
) -> Live:
    state = PlaceState([rule], enis, sessions, targets, set(), types or {})
    return Live([rule], [NOWHERE], [PlaceRead(state, [], set(), health)])


def web(*targets: str, choose: Choose | None = Choose.LEAST_LOADED) -> Rule:
    return Rule("web", PROD, targets, F, choose=choose)


ALIVE = {A: Health(A, live=True), B: Health(B, live=True)}
A_DEAD = {A: Health(A, live=False, reason="eni_gone"), B: Health(B, live=True)}


def test_coverage_counts_each_eni_by_state_and_the_percentage_only_what_can_be_mirrored() -> None:
    enis = [eni(1), eni(2), eni(3), eni(4), eni(5, env="dev")]
    sessions = [
        session(1, A),  # dark: A is dead
        session(2, B),  # live
        session(5, B),  # managed, its ENI no longer matches: unwanted
        session(6, B, rule="gone"),  # its rule left the policy: unwanted
        session(7, B, rule=None),  # not managed: never unwanted
    ]
    targets = {A: Target(A, source_limit=None), B: Target(B, source_limit=None)}
    live = live_of(
        web(A, B), enis, sessions, targets, A_DEAD, {eni(4)["NetworkInterfaceId"]: "t2.micro"}
    )
    found = compute(live, region="us-east-1", now=datetime(2026, 12, 6, tzinfo=UTC))
    body = found.to_json()
    assert body["generated_at"] == "2026-12-06T00:00:00Z"
    assert body["totals"] == {
        "matched": 4,
        "eligible": 3,
        "live": 1,
        "dark": 1,
        "repairing": 0,
        "missing": 1,
        "unsupported": 1,
        "unwanted": 2,
    }
    assert body["percent"] == 33.33
    (row,) = body["rules"]
    assert (row["rule"], row["account_id"], row["region"]) == ("web", None, "us-east-1")
    assert row["missing"] == {"not_mirrored": 1}
    states = {
        e["eni"]: (e["state"], e["reason"], e["session_id"], e["target"]) for e in row["enis"]
    }
    assert states == {
        eni(1)["NetworkInterfaceId"]: ("dark", "eni_gone", "tms-00000000000000001", A),
        eni(2)["NetworkInterfaceId"]: ("live", "", "tms-00000000000000002", B),
        eni(3)["NetworkInterfaceId"]: ("missing", "not_mirrored", None, None),
        eni(4)["NetworkInterfaceId"]: ("unsupported", "unsupported_instance_type", None, None),
    }
    assert {e["instance_id"] for e in row["enis"]} == {f"i-{n:017x}" for n in (1, 2, 3, 4)}
    assert {(u["session_id"], u["reason"]) for u in body["unwanted"]} == {
        ("tms-00000000000000005", "eni_not_matched"),
        ("tms-00000000000000006", "rule_gone"),
    }
    assert compute(live_of(web(A, B), [], [], targets, ALIVE)).percent == 100.0


def test_an_eni_with_a_live_and_a_dark_session_of_its_rule_is_live() -> None:
    targets = {A: Target(A), B: Target(B)}
    live = live_of(
        web(A, B),
        [eni(1)],
        [session(1, A), {**session(1, B), "TrafficMirrorSessionId": "tms-2"}],
        targets,
        A_DEAD,
    )
    (row,) = compute(live).rules
    assert [(e.state, e.target) for e in row.enis] == [("live", B)]


def test_dark_sessions_move_to_a_live_target_within_its_limits_and_zone() -> None:
    enis = [eni(n) for n in range(1, 5)]
    sessions = [session(1, A), session(2, A), session(3, A), session(4, B)]
    targets = {A: Target(A, "eni-a", "us-east-1a", 10), B: Target(B, "eni-b", "us-east-1a", 3)}
    live = live_of(web(A, B), enis, sessions, targets, A_DEAD)
    repairs = plan_repairs(live)
    # B takes 3 sources: ENI 4's, and two of the three dark sessions; the third stays dark.
    assert [(r.session_id, r.from_target, r.to_target) for r in repairs] == [
        ("tms-00000000000000001", A, B),
        ("tms-00000000000000002", A, B),
        ("tms-00000000000000003", A, None),
    ]
    assert repairs[0].request() == {
        "TrafficMirrorSessionId": "tms-00000000000000001",
        "TrafficMirrorTargetId": B,
    }
    assert repairs[0].reason == "eni_gone"
    assert "full" in repairs[2].why
    # same-az: a live target in another zone takes none
    other_zone = {A: targets[A], B: Target(B, "eni-b", "us-east-1b", 100)}
    stays = plan_repairs(
        live_of(web(A, B, choose=Choose.SAME_AZ), enis, sessions, other_zone, A_DEAD)
    )
    assert [r.to_target for r in stays] == [None, None, None]
    assert "no live target in us-east-1a" in stays[0].why


def test_only_managed_sessions_of_the_policy_s_rules_are_repaired() -> None:
    sessions = [session(1, A, rule=None), session(2, A, rule="gone"), session(3, A)]
    targets = {A: Target(A), B: Target(B)}
    repairs = plan_repairs(
        live_of(web(A, B), [eni(n) for n in (1, 2, 3)], sessions, targets, A_DEAD)
    )
    assert [r.session_id for r in repairs] == ["tms-00000000000000003"]
    assert plan_repairs(live_of(web(A, B), [eni(3)], [session(3, A)], targets, ALIVE)) == []
    # no live target at all: said, left
    dead = {A: A_DEAD[A], B: Health(B, live=False, reason="instance_stopped")}
    (left,) = plan_repairs(live_of(web(A, B), [eni(3)], [session(3, A)], targets, dead))
    assert left.to_target is None
    assert "no live target" in left.why


def test_creates_go_to_live_targets_counting_the_repairs() -> None:
    """A dead target takes no new session; the moved sessions load their new target."""
    enis = [eni(1), eni(2)]
    targets = {
        A: Target(A, source_limit=10),
        B: Target(B, source_limit=10),
        C: Target(C, source_limit=10),
    }
    health = {**A_DEAD, C: Health(C, live=True)}
    live = live_of(web(A, B, C), enis, [session(1, A)], targets, health)
    repairs = plan_repairs(live)
    assert [r.to_target for r in repairs] == [B]
    plan = plan_read(after(live, repairs))
    (create,) = plan.to_create()
    assert create.target_id == C  # B carries the moved session: C is the least loaded
    assert plan_read(live).counts()["already_mirrored"] == 1  # before: ENI 1's session (dark)


def test_two_dark_sessions_of_one_eni_are_never_both_moved_to_one_target_and_filter() -> None:
    """Two rules matching one ENI through one filter, each to its own sensor (A, C) with a
    shared fallback (B). Both sensors die: the pass must not point both sessions at B through
    that filter (one mirror per ENI, target and filter: the second modify would end
    AlreadyMirrored at every pass, its session dark for ever). The second is said to stay,
    and why; coverage never counts that dark session live (review 2026-12-06)."""
    pci_rule = Rule("pci", PROD, (C, B), F, choose=Choose.LEAST_LOADED)
    rules = [web(A, B), pci_rule]
    sessions = [session(1, A), {**session(1, C, rule="pci"), "TrafficMirrorSessionId": "tms-2"}]
    targets = {t: Target(t) for t in (A, B, C)}
    health = {
        A: Health(A, live=False, reason="instance_terminated"),
        B: Health(B, live=True),
        C: Health(C, live=False, reason="instance_terminated"),
    }
    state = PlaceState(rules, [eni(1)], sessions, targets, set(), {})
    live = Live(rules, [NOWHERE], [PlaceRead(state, [], set(), health)])
    repairs = plan_repairs(live)
    moved_to_b = [r.session_id for r in repairs if r.to_target == B]
    assert len(moved_to_b) <= 1, repairs
    assert [(r.session_id, r.to_target) for r in repairs] == [
        ("tms-00000000000000001", B),
        ("tms-2", None),
    ]
    assert "already mirrors" in repairs[1].why
    assert B in repairs[1].why
    # Once the one move is made, the ENI is mirrored to B through F (pci's wish too), by
    # web's session: coverage names that one, never pci's dark session as live.
    found = compute(after(live, repairs))
    states = {
        (r.rule, e.eni): (e.state, e.session_id, e.target) for r in found.rules for e in r.enis
    }
    eni_id = eni(1)["NetworkInterfaceId"]
    assert states == {
        ("web", eni_id): ("live", "tms-00000000000000001", B),
        ("pci", eni_id): ("live", "tms-00000000000000001", B),
    }
    # And as EC2 holds it before any move: both dark, none live.
    before = compute(live)
    assert [(e.state, e.session_id) for r in before.rules for e in r.enis] == [
        ("dark", "tms-00000000000000001"),
        ("dark", "tms-2"),
    ]
    assert before.percent == 0.0


def test_a_target_s_health_from_what_was_read() -> None:
    target = {"TrafficMirrorTargetId": A, "NetworkInterfaceId": "eni-s", "OwnerId": "111111111111"}
    attached = {"eni-s": {"NetworkInterfaceId": "eni-s", "Attachment": {"InstanceId": "i-s"}}}
    assert health_of(A, None, {}, {}, None) == Health(A, False, "target_gone")
    assert health_of(A, target, attached, {"i-s": "running"}, None).live
    assert health_of(A, target, attached, {"i-s": "stopped"}, None).reason == "instance_stopped"
    # A sensor just launched (its Auto Scaling group's replacement) runs by itself, as a new
    # load balancer becomes active: its sessions are not moved away.
    assert health_of(A, target, attached, {"i-s": "pending"}, None) == Health(
        A, True, "instance_pending", "i-s"
    )
    assert health_of(A, target, attached, {}, None).reason == "instance_gone"
    assert health_of(A, target, {}, {}, "111111111111").reason == "eni_gone"
    assert health_of(A, target, {}, {}, None).live  # whose ENI it is cannot be told
    assert health_of(A, target, {}, {}, "222222222222").live  # shared with us: not ours to see
    detached = {"eni-s": {"NetworkInterfaceId": "eni-s"}}
    assert health_of(A, target, detached, {}, None).reason == "eni_detached"
    available = {"eni-s": {"NetworkInterfaceId": "eni-s", "Status": "available"}}
    assert health_of(A, target, available, {}, None).reason == "eni_detached"
    # Attached, but not to an instance this account can read (a sensor appliance's ENI held
    # by another service): in use, so not judged dead.
    held: dict[str, Any] = {"NetworkInterfaceId": "eni-s", "Status": "in-use"}
    held["Attachment"] = {"AttachmentId": "eni-attach-1", "InstanceOwnerId": "amazon-aws"}
    other = health_of(A, target, {"eni-s": held}, {}, None)
    assert other.live, other
    assert "not checked" in other.reason
    nlb = {"TrafficMirrorTargetId": B, "Type": "network-load-balancer"}
    assert health_of(B, nlb, {}, {}, None).live


def test_a_load_balancer_target_s_health_from_what_was_read() -> None:
    own, other = "111111111111", "222222222222"
    arn = f"arn:aws:elasticloadbalancing:us-east-1:{own}:loadbalancer/net/sensors/0123456789abcdef"
    nlb = {"TrafficMirrorTargetId": B, "NetworkLoadBalancerArn": arn, "OwnerId": own}

    def of_nlb(states: dict[str, str] | None, account: str | None = own) -> Health:
        return health_of(B, nlb, {}, {}, account, balancers=states)

    assert of_nlb({}) == Health(B, False, "load_balancer_gone")
    assert of_nlb({arn: "failed"}) == Health(B, False, "load_balancer_failed")
    assert of_nlb({arn: "active"}) == Health(B, True)
    assert of_nlb({arn: "active_impaired"}).live  # routing traffic, short of capacity
    # A new balancer becomes active by itself: its sessions are not moved away.
    assert of_nlb({arn: "provisioning"}) == Health(B, True, "load_balancer_provisioning")
    assert of_nlb(None).live  # not read: not judged
    assert of_nlb({}, None).live  # whose it is cannot be told
    shared = {**nlb, "OwnerId": other}  # another account's, shared with this one
    assert health_of(B, shared, {}, {}, own, balancers={}).live

    gwlbe = {"TrafficMirrorTargetId": C, "GatewayLoadBalancerEndpointId": "vpce-1", "OwnerId": own}

    def of_endpoint(states: dict[str, str]) -> Health:
        return health_of(C, gwlbe, {}, {}, own, endpoints=states)

    assert of_endpoint({}) == Health(C, False, "endpoint_gone")
    for state in ("deleting", "deleted", "failed", "rejected", "expired"):
        assert of_endpoint({"vpce-1": state}) == Health(C, False, f"endpoint_{state}")
    assert of_endpoint({"vpce-1": "available"}) == Health(C, True)
    assert of_endpoint({"vpce-1": "pending"}).live


def test_a_dark_eni_whose_repair_is_pending_says_so_and_stays_dark() -> None:
    targets = {A: Target(A), B: Target(B)}
    live = live_of(web(A, B), [eni(1), eni(2)], [session(1, A), session(2, A)], targets, A_DEAD)
    found = compute(live, repairs={"tms-00000000000000001": "job-1"})
    (row,) = found.rules
    assert {e.session_id: (e.state, e.reason, e.repair_job) for e in row.enis} == {
        "tms-00000000000000001": ("dark", "eni_gone", "job-1"),
        "tms-00000000000000002": ("dark", "eni_gone", None),
    }
    body = found.to_json()
    assert (body["totals"]["dark"], body["totals"]["repairing"]) == (2, 1)
    assert body["rules"][0]["repairing"] == 1
    assert found.percent == 0.0  # nothing mirrors until the modify lands


def test_one_eni_not_live_among_thousands_is_under_100_percent() -> None:
    """`--fail-under 100` is a pipeline gate: one ENI not live among 30,000 (or 100,000) is
    under 100 %, never rounded up to it."""
    assert percent(29_999, 30_000) < 100.0
    assert percent(99_999, 100_000) < 100.0


def test_the_gate_compares_the_exact_share_not_the_figure_shown() -> None:
    """`--fail-under` (Coverage.under): 2 of 3 live is 66.67 % shown, under a gate of 66.67;
    29,999 of 30,000 is under 100 and not under 99.99; nothing to mirror is never under."""

    def of(live: int, eligible: int) -> Coverage:
        enis = [EniCoverage(f"eni-{n}", None, None, "live") for n in range(live)]
        enis += [EniCoverage(f"eni-x{n}", None, None, "dark") for n in range(eligible - live)]
        return Coverage("2026-12-06T20:00:00Z", [RuleCoverage("web", None, None, enis)], [])

    two_thirds = of(2, 3)
    assert (two_thirds.percent, two_thirds.under(66.67), two_thirds.under(66.66)) == (
        66.67,
        True,
        False,
    )
    almost = of(29_999, 30_000)
    assert (almost.percent, almost.under(100), almost.under(99.99)) == (99.99, True, False)
    assert not of(0, 0).under(100)
    assert not of(5, 5).under(100)


def test_a_dark_session_its_rule_no_longer_wants_is_not_revived_and_reports_agree() -> None:
    """Rule web (targets A, B) no longer matches ENI 1 (Env=dev now), whose web session is on
    A, now dead. Coverage lists the session unwanted (eni_not_matched); `policy plan --prune`
    (plan_prune) does not list it (a dead target's session of a policy rule: 'repair moves
    it'); and the repair points it at B, the live sensor: the pass mirrors an ENI its rule
    excluded (a tag removed to take it out of mirroring) to a live sensor, and deletes it
    only at the next pass. Coverage and prune must agree, and a repair never revive a
    session its rule does not want."""
    from mirrorq.bulk import Live, PlaceRead
    from mirrorq.coverage import compute
    from mirrorq.dark import plan_repairs
    from mirrorq.planning import PlaceState
    from mirrorq.targets import Health
    from tasks.contract import NOWHERE

    a, b = "tmt-aaaaaaaaaaaaaaaaa", "tmt-bbbbbbbbbbbbbbbbb"
    web = Rule("web", Selectors(tags=(("Env", "prod"),)), (a, b), F, prune=True)
    dev = eni(1, env="dev")
    dark = session(1, a)
    health = {a: Health(a, live=False, reason="instance_terminated"), b: Health(b, live=True)}
    state = PlaceState([web], [], [dark], {a: Target(a), b: Target(b)}, set(), {})
    live = Live([web], [NOWHERE], [PlaceRead(state, [], set(), health)])
    unwanted = [u.session_id for u in compute(live).unwanted]
    read = PruneState([web], [web], [web], {dev["NetworkInterfaceId"]: dev}, [dark], frozenset({a}))
    pruned = [d.session_id for d in plan_prune(read, everything=True).deletions]
    moved = [r.session_id for r in plan_repairs(live) if r.to_target is not None]
    assert unwanted == pruned, (unwanted, pruned, moved)
    assert moved == [], moved


def test_a_repair_never_moves_a_session_onto_a_mirror_a_pending_job_makes() -> None:
    """ENI 1: web's session through F on A (dead); pci's create of ENI 1 to B through F is
    pending (submitted by the listener a moment ago, or by an earlier pass, still queued).
    reconcile (run_pass: plan_repairs(live), then plan_read(after(live, repairs), pending))
    moves web's session to B too: whichever of the two jobs runs second ends AlreadyMirrored
    (README: 'Nor is a session moved to a target its ENI already mirrors to through that
    filter'; pending mirrors 'count as made, for the rule and for the ENI')."""
    from mirrorq.bulk import Live, PlaceRead
    from mirrorq.dark import plan_repairs
    from mirrorq.planning import Pending, PlaceState
    from mirrorq.targets import Health
    from tasks.contract import NOWHERE

    a, b = "tmt-aaaaaaaaaaaaaaaaa", "tmt-bbbbbbbbbbbbbbbbb"
    prod = Selectors(tags=(("Env", "prod"),))
    web = Rule("web", prod, (a, b), F)
    pci = Rule("pci", prod, (b,), F)
    one = eni(1)
    health = {a: Health(a, live=False, reason="instance_terminated"), b: Health(b, live=True)}
    state = PlaceState([web, pci], [one], [session(1, a)], {a: Target(a), b: Target(b)}, set(), {})
    live = Live([web, pci], [NOWHERE], [PlaceRead(state, [], set(), health)])
    pending = [Pending("job-pci", one["NetworkInterfaceId"], b, F)]
    repairs = plan_repairs(live, pending)
    onto_pending = [
        r
        for r in repairs
        if r.to_target is not None
        and any((p.eni_id, p.target_id, p.filter_id) == (r.eni_id, r.to_target, F) for p in pending)
    ]
    assert onto_pending == [], onto_pending
