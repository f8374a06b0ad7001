"""Coverage: is everything a policy puts in scope mirrored, now, to a sensor that is alive?

For each rule (in each account and Region it applies to), every ENI it matches is one of:
`live` (mirrored to a live target), `dark` (mirrored, but to a dead target: EC2 keeps the
session and mirrors nothing), `missing` (not mirrored, with the planner's reason:
`not_mirrored`, `pending`, `session_limit`, `targets_full`, `no_target_in_zone`,
`no_target`) or `unsupported` (it cannot be a source: its instance type, a target's own ENI,
not an `interface` ENI; listed, not counted). The percentage is live over the ENIs that can
be mirrored. Managed sessions (tag `mirrorq:rule`) that no rule wants are `unwanted`.

A dark ENI whose session a pending modify is pointing at another target (a repair queued or
running: its record in Redis, read with the pending creates) says so: `repair_job` names the
job, and each rule and the totals count them as `repairing`. Its state stays `dark`, and it
stays out of the percentage: EC2 mirrors nothing for it until the modify lands, so a
deployment gate (`--fail-under`) and the `state="dark"` gauge keep telling the truth.

`compute` is pure (what bulk.py `read_live(health=True)` read, in); `read_coverage` reads a
policy's places and computes it, for `mirrorq coverage`, `GET /v1/coverage`, reconcile's
passes (which store the view for `/metrics`: `store_view`) and the dashboard.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from mirrorq.bulk import Live, pending_work, plan_read, read_live
from mirrorq.managed import MIRROR_RULE, rule_of
from mirrorq.planning import Outcome, Pending
from mirrorq.policy_watch import RulesSource, rules_now
from mirrorq.prune import Reason, adopted
from mirrorq.targets import Health
from tasks import keys
from tasks.contract import NOWHERE, Placement
from worker.sessions import same_mirror

if TYPE_CHECKING:
    import redis

    from config import Settings
    from mirrorq.rules import Rule
    from tasks.producer import Producer

LIVE, DARK, MISSING, UNSUPPORTED = "live", "dark", "missing", "unsupported"
STATES = (LIVE, DARK, MISSING, UNSUPPORTED)
_LIVE = Health("", live=True)  # a target whose health was not read
NOT_MIRRORED = "not_mirrored"  # a gap reconcile fills
ALMOST_ALL = 99.99  # the most `percent` shows while an ENI is not live
# What the planner says of an ENI that cannot be a source at all (not counted).
CANNOT_BE_SOURCE = frozenset(
    {Outcome.IS_MIRROR_TARGET.value, Outcome.NOT_INTERFACE.value, "unsupported_instance_type"}
)


@dataclass(frozen=True)
class EniCoverage:
    eni: str
    instance_id: str | None
    zone: str | None
    state: str  # live, dark, missing, unsupported
    reason: str = ""  # dark: why its target is dead; live: what of it was not (yet) judged,
    # "" for a verified live target; missing, unsupported: why
    session_id: str | None = None  # live, dark: the rule's session
    target: str | None = None  # live, dark: the session's target
    repair_job: str | None = None  # dark: the pending modify moving its session, if any


@dataclass
class RuleCoverage:
    rule: str
    account_id: str | None
    region: str | None
    enis: list[EniCoverage] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for e in self.enis if e.state == state)

    @property
    def repairing(self) -> int:
        """Dark ENIs whose session a pending modify is moving."""
        return sum(1 for e in self.enis if e.state == DARK and e.repair_job)

    @property
    def missing(self) -> dict[str, int]:
        return dict(sorted(Counter(e.reason for e in self.enis if e.state == MISSING).items()))

    @property
    def eligible(self) -> int:
        return len(self.enis) - self.count(UNSUPPORTED)

    def to_json(self, *, enis: bool = True) -> dict[str, Any]:
        found: dict[str, Any] = {
            "rule": self.rule,
            "account_id": self.account_id,
            "region": self.region,
            "matched": len(self.enis),
            "eligible": self.eligible,
            "live": self.count(LIVE),
            "dark": self.count(DARK),
            "repairing": self.repairing,
            "missing": self.missing,
            "unsupported": self.count(UNSUPPORTED),
            "percent": percent(self.count(LIVE), self.eligible),
        }
        if enis:
            found["enis"] = [e.__dict__ for e in self.enis]
        return found


@dataclass(frozen=True)
class Unwanted:
    session_id: str
    eni: str
    rule: str  # its mirrorq:rule tag
    reason: (
        str  # mirrorq/prune.py's: rule_gone, eni_not_matched, filter_not_rules, target_not_rules
    )


@dataclass
class Coverage:
    generated_at: str
    rules: list[RuleCoverage]
    unwanted: list[Unwanted]
    # Places not read (a role refused) or rules with no target or filter in a place: what
    # these numbers do not count.
    notes: list[str] = field(default_factory=list)
    complete: bool = True  # every place was read (False: a role refused; its ENIs uncounted)

    @property
    def totals(self) -> dict[str, int]:
        return {
            "matched": sum(len(r.enis) for r in self.rules),
            "eligible": sum(r.eligible for r in self.rules),
            "live": sum(r.count(LIVE) for r in self.rules),
            "dark": sum(r.count(DARK) for r in self.rules),
            "repairing": sum(r.repairing for r in self.rules),
            "missing": sum(r.count(MISSING) for r in self.rules),
            "unsupported": sum(r.count(UNSUPPORTED) for r in self.rules),
            "unwanted": len(self.unwanted),
        }

    @property
    def percent(self) -> float:
        totals = self.totals
        return percent(totals["live"], totals["eligible"])

    def under(self, percent: float) -> bool:
        """The exact share of eligible ENIs live is below `percent` (the `--fail-under`
        gate: never the rounded figure shown, 100.0 for 29,999 of 30,000 once)."""
        totals = self.totals
        if totals["eligible"] == 0:
            return percent > 100.0
        return Fraction(100 * totals["live"], totals["eligible"]) < Fraction(percent)

    def to_json(self, *, enis: bool = True) -> dict[str, Any]:
        """The coverage as JSON (`enis` False: counts only, O(rules), as a pass stores it)."""
        return {
            "generated_at": self.generated_at,
            "percent": self.percent,
            "totals": self.totals,
            "rules": [r.to_json(enis=enis) for r in self.rules],
            "unwanted": [u.__dict__ for u in self.unwanted],
            "notes": self.notes,
            "complete": self.complete,
        }


def percent(live: int, eligible: int) -> float:
    """Live over eligible, in percent to two places, as shown; nothing to mirror is fully
    covered. Never 100 while an ENI is not live (29,999 of 30,000 is 99.99, not rounded up):
    a gate compares the exact share (`Coverage.under`), this figure is what it shows."""
    if eligible == 0 or live >= eligible:
        return 100.0
    return min(round(100.0 * live / eligible, 2), ALMOST_ALL)


def compute(
    live: Live,
    pending: Iterable[Pending] = (),
    *,
    region: str | None = None,
    now: datetime | None = None,
    repairs: Mapping[str, str] | None = None,
) -> Coverage:
    """The coverage of what was read (`live`, read with health) and the mirrors pending jobs
    will make; `region` names the fleet's own Region in the rows of its default place;
    `repairs`: the sessions pending modifies are moving, each with its job's id."""
    plan = plan_read(live, pending)
    health: dict[str, Health] = {}
    enis: dict[str, dict[str, Any]] = {}
    sessions: dict[str, dict[str, Any]] = {}
    for _, read in live.views():
        for target_id, h in read.health.items():
            # A target seen from several places: dead if its owner's place says so.
            if target_id not in health or not h.live:
                health[target_id] = h
        enis |= {e["NetworkInterfaceId"]: e for e in read.state.enis}
        sessions |= {s["TrafficMirrorSessionId"]: s for s in read.state.sessions}
    rows: dict[tuple[Placement, str], RuleCoverage] = {}
    for place, _ in live.views():
        for rule in live.rules:
            if place in (rule.places or (NOWHERE,)):
                rows[(place, rule.name)] = RuleCoverage(
                    rule.name, place.account_id, place.region or region
                )
    on_eni: dict[str, list[dict[str, Any]]] = {}
    for s in sessions.values():
        on_eni.setdefault(s["NetworkInterfaceId"], []).append(s)
    for item in plan.items:
        row = rows.get((item.place, item.rule))
        if row is None:
            continue
        detail = item.detail
        planned = plan.place_rules.get((item.place, item.rule))
        if item.outcome is Outcome.ALREADY_MIRRORED and planned is not None:
            # The rule's mirror, a live one first (an ENI may have one dark and one live).
            made = same_mirror(on_eni.get(item.eni_id, []), planned.targets, planned.filter_id)
            made.sort(key=lambda s: not health.get(s["TrafficMirrorTargetId"], _LIVE).live)
            detail = made[0]["TrafficMirrorSessionId"] if made else detail
        found = _eni(item.eni_id, item.outcome, detail, enis, sessions, health)
        job = (repairs or {}).get(found.session_id or "")
        if found.state == DARK and job:
            found = replace(found, repair_job=job)
        row.enis.append(found)
    unwanted = [u for place, read in live.views() for u in _unwanted(live.rules, place, read)]
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    notes = [str(n) for n in (*plan.missing, *plan.unplanned)]
    return Coverage(stamp, list(rows.values()), unwanted, notes, complete=not plan.unplanned)


def _eni(
    eni_id: str,
    outcome: Outcome,
    detail: str,
    enis: dict[str, dict[str, Any]],
    sessions: dict[str, dict[str, Any]],
    health: dict[str, Health],
) -> EniCoverage:
    eni = enis.get(eni_id, {})
    instance, zone = (eni.get("Attachment") or {}).get("InstanceId"), eni.get("AvailabilityZone")
    if outcome is Outcome.ALREADY_MIRRORED:
        target = sessions.get(detail, {}).get("TrafficMirrorTargetId")
        h = health.get(target or "", _LIVE)
        # A live target's reason too: what was not judged (a shared target, an owner not
        # known) or is not yet settled (`load_balancer_provisioning`, `endpoint_pending`).
        state = LIVE if h.live else DARK
        return EniCoverage(eni_id, instance, zone, state, h.reason, detail, target)
    if outcome.value in CANNOT_BE_SOURCE:
        return EniCoverage(eni_id, instance, zone, UNSUPPORTED, outcome.value)
    reason = NOT_MIRRORED if outcome is Outcome.CREATE else outcome.value
    return EniCoverage(eni_id, instance, zone, MISSING, reason)


def _unwanted(rules: Sequence[Rule], place: Placement, read: Any) -> list[Unwanted]:
    """The managed sessions of a place that no rule wants, and why (prune's reasons:
    mirrorq/prune.py; `mirrorq mirror`'s sessions belong to no policy, never unwanted)."""
    applying = {r.name for r in rules if place in (r.places or (NOWHERE,))}
    here = {r.name: r for r in read.state.rules}
    enis = {e["NetworkInterfaceId"]: e for e in read.state.enis}
    dead = frozenset(t for t, h in read.health.items() if not h.live)
    found = []
    for s in read.state.sessions:
        name = rule_of(s)
        if name is None or name == MIRROR_RULE:
            continue
        session_id, eni_id = s["TrafficMirrorSessionId"], s["NetworkInterfaceId"]
        rule = here.get(name)
        if name not in applying:
            reason = Reason.RULE_GONE
        elif rule is None:
            continue  # its rule cannot be planned here: what it wants here is not known
        elif eni_id not in enis or not rule.selectors.matches(enis[eni_id]):
            reason = Reason.ENI_NOT_MATCHED
        elif s["TrafficMirrorFilterId"] != rule.filter_id:
            reason = Reason.FILTER_NOT_RULES
        elif s["TrafficMirrorTargetId"] not in rule.targets:
            reason = Reason.TARGET_NOT_RULES
        else:
            continue
        found.append(Unwanted(session_id, eni_id, name, reason.value))
    doomed = {u.session_id for u in found}
    kept = adopted(read.state.rules, enis, read.state.sessions, doomed, dead)  # as prune keeps
    return [u for u in found if u.session_id not in kept]


async def read_coverage(settings: Settings, rules: Sequence[Rule], producer: Producer) -> Coverage:
    """A policy's coverage now: its places read on their roads (with their targets' health),
    and the mirrors of mirrorq's pending jobs, as `reconcile` counts them."""
    pending, repairs = await asyncio.to_thread(pending_work, producer)
    live = await read_live(settings, rules, health=True)
    return compute(live, pending, region=settings.region, repairs=repairs)


def store_view(client: redis.Redis, coverage: Coverage) -> None:
    """Keep a pass's view (counts, no ENI lists) for the API's gauges (api/metrics.py)."""
    client.set(keys.COVERAGE_VIEW, json.dumps(coverage.to_json(enis=False)))


def stored_view(client: redis.Redis) -> dict[str, Any] | None:
    raw = client.get(keys.COVERAGE_VIEW)
    return None if raw is None else dict(json.loads(raw))


class CoverageCache:
    """A policy's coverage for the API: read at most once per `fresh_s` (concurrent requests
    share one read), each read with the rules in use then."""

    def __init__(
        self, settings: Settings, rules: RulesSource, producer: Producer, fresh_s: float
    ) -> None:
        self._settings, self._rules, self._producer = settings, rules, producer
        self._fresh_s = fresh_s
        self._lock = asyncio.Lock()
        self._at = -fresh_s
        self._json: dict[str, Any] | None = None

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            now = time.monotonic()
            if self._json is None or now - self._at >= self._fresh_s:
                rules = list(rules_now(self._rules))
                found = await read_coverage(self._settings, rules, self._producer)
                self._json, self._at = found.to_json(), time.monotonic()
            return self._json
