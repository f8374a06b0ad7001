"""Dark sessions repaired: a managed session whose target is dead, pointed at a live target of
its rule by a modify job (`ModifyTrafficMirrorSession`: the target only, so its SessionNumber
and filter stay), as EC2's Traffic Mirroring guide says to.

Pure: what was read (bulk.py `read_live(health=True)`) in, the repairs out. A target is
chosen as for a create (`same-az`: one serving the session's ENI's zone; `least-loaded` and
ties: the fewest sessions), within its source limit, counting the repairs planned before it;
never one its ENI already mirrors to through the session's filter, counting the moves planned
before it too (EC2 refuses a second such mirror: `AlreadyMirrored`). With no live target
of the rule that can take it, the session is left as it is and the repair says why
(`to_target` None). Only managed sessions (tag `mirrorq:rule`, naming a rule of the policy)
are repaired: mirrorq changes nothing it does not manage; and only a session its rule still
wants there (its ENI matched by the rule's selectors): one on an ENI taken out of the rule's
scope is not moved to a live sensor but judged by prune (mirrorq/prune.py, `eni_not_matched`).
The mirrors pending jobs will make count as made, as for a create.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mirrorq.managed import rule_of
from mirrorq.rules import Choose
from tasks.contract import NOWHERE, Placement

if TYPE_CHECKING:
    from mirrorq.bulk import Live
    from mirrorq.planning import Pending, Target


@dataclass(frozen=True)
class Repair:
    """A dark session and the live target it moves to (None: none can take it, `why`)."""

    rule: str
    session_id: str
    eni_id: str
    from_target: str
    to_target: str | None
    reason: str  # why the target is dead (targets.Health.reason)
    why: str = ""  # with no to_target: why none
    place: Placement = NOWHERE

    def request(self, *, dry_run: bool = False) -> dict[str, Any]:
        """The modify's request, in EC2's syntax: the target alone changes."""
        assert self.to_target is not None
        request = {
            "TrafficMirrorSessionId": self.session_id,
            "TrafficMirrorTargetId": self.to_target,
        }
        return {**request, "DryRun": True} if dry_run else request

    def __str__(self) -> str:
        where = f"session {self.session_id} (rule {self.rule}, {self.eni_id}) on {self.from_target}"
        if self.to_target is None:
            return f"{where} is dark ({self.reason}) and stays: {self.why}"
        return f"{where} is dark ({self.reason}): to {self.to_target}"

    @property
    def gap(self) -> str:
        """What a pass claims for this repair (tasks/scripts.py CLAIM_GAPS): one modify per
        dark session while it is pending, whichever live target each pass chose."""
        return f"{self.eni_id}:retarget:{self.session_id}"


def plan_repairs(live: Live, pending: Iterable[Pending] = ()) -> list[Repair]:
    """Every managed session on a dead target, in every place read, and where it goes.
    `pending`: the mirrors of jobs not finished yet, which count as made (never a second
    mirror of an ENI to a target through a filter a pending create or modify makes)."""
    views = live.views()
    sessions = _once(s for _, read in views for s in read.state.sessions)
    pending = list(pending)
    load = Counter(s["TrafficMirrorTargetId"] for s in sessions)
    load.update(p.target_id for p in pending)
    sources: dict[str, set[str]] = {}
    for s in sessions:
        sources.setdefault(s["TrafficMirrorTargetId"], set()).add(s["NetworkInterfaceId"])
    for p in pending:
        sources.setdefault(p.target_id, set()).add(p.eni_id)
    repairs: list[Repair] = []
    for place, read in views:
        rules = {r.name: r for r in read.state.rules}
        enis = {e["NetworkInterfaceId"]: e for e in read.state.enis}
        zones = {eni_id: e.get("AvailabilityZone") for eni_id, e in enis.items()}
        on_eni: dict[str, list[dict[str, Any]]] = {}
        for s in read.state.sessions:
            on_eni.setdefault(s["NetworkInterfaceId"], []).append(s)
        for p in pending:
            made = {"TrafficMirrorTargetId": p.target_id, "TrafficMirrorFilterId": p.filter_id}
            on_eni.setdefault(p.eni_id, []).append(made)
        for s in sorted(read.state.sessions, key=lambda s: s["TrafficMirrorSessionId"]):
            name, target = rule_of(s), s["TrafficMirrorTargetId"]
            health = read.health.get(target)
            if name not in rules or health is None or health.live:
                continue
            rule = rules[name]
            eni = s["NetworkInterfaceId"]
            if eni not in enis or not rule.selectors.matches(enis[eni]):
                continue  # its rule no longer wants it: prune judges it (eni_not_matched)
            mirrored = {
                o["TrafficMirrorTargetId"]
                for o in on_eni.get(eni, [])
                if o["TrafficMirrorFilterId"] == s["TrafficMirrorFilterId"]
            }
            alive = [
                read.state.targets[t]
                for t in rule.targets
                if t in read.state.targets and (h := read.health.get(t)) is not None and h.live
            ]
            zone = zones.get(eni)
            if rule.choose is Choose.SAME_AZ and zone is not None:
                alive = [t for t in alive if t.zone is None or t.zone == zone]
            # One mirror per ENI, target and filter: counting the moves planned before it.
            candidates = [t for t in alive if t.target_id not in mirrored]
            room = [t for t in candidates if _has_room(t, eni, sources)]
            base = Repair(name, s["TrafficMirrorSessionId"], eni, target, None, health.reason)
            base = replace(base, place=place)
            if not room:
                why = _why_none(rule.name, candidates, zone, rule.choose)
                if alive and not candidates:
                    taken = ", ".join(t.target_id for t in alive)
                    flt = s["TrafficMirrorFilterId"]
                    why = f"rule {rule.name}: {eni} already mirrors to {taken} through {flt}"
                repairs.append(replace(base, why=why))
                continue
            chosen = min(room, key=lambda t: load[t.target_id])
            load[target] -= 1
            load[chosen.target_id] += 1
            sources.setdefault(chosen.target_id, set()).add(eni)
            moved = {**s, "TrafficMirrorTargetId": chosen.target_id}
            on_eni[eni] = [moved if o is s else o for o in on_eni[eni]]
            repairs.append(replace(base, to_target=chosen.target_id))
    return repairs


def after(live: Live, repairs: Iterable[Repair]) -> Live:
    """What was read, as it will be once the repairs are made: creates planned from it count
    the moved sessions on their new targets."""
    moved = {r.session_id: r.to_target for r in repairs if r.to_target is not None}
    if not moved:
        return live

    def moved_on(read: Any) -> Any:
        if not hasattr(read, "state"):
            return read  # a place not read
        sessions = [
            {**s, "TrafficMirrorTargetId": moved[s["TrafficMirrorSessionId"]]}
            if s.get("TrafficMirrorSessionId") in moved
            else s
            for s in read.state.sessions
        ]
        return replace(read, state=replace(read.state, sessions=sessions))

    return replace(live, read=[moved_on(r) for r in live.read])


def _has_room(target: Target, eni_id: str, sources: dict[str, set[str]]) -> bool:
    held = sources.get(target.target_id, set())
    return target.source_limit is None or eni_id in held or len(held) < target.source_limit


def _why_none(rule: str, candidates: list[Target], zone: str | None, choose: Any) -> str:
    if candidates:
        return f"rule {rule}: every live target is full"
    if choose is Choose.SAME_AZ and zone is not None:
        return f"rule {rule}: no live target in {zone}"
    return f"rule {rule}: no live target"


def _once(sessions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each session once, by its id (an owner lists the sessions of its sharers too)."""
    found: dict[str, dict[str, Any]] = {}
    for s in sessions:
        found.setdefault(s["TrafficMirrorSessionId"], s)
    return list(found.values())


def repair_counts(repairs: Iterable[Repair]) -> dict[str, Any]:
    """What a batch's plan keeps of a pass's repairs: how many move, per rule, and those
    that cannot."""
    moving = Counter(r.rule for r in repairs if r.to_target is not None)
    return {
        "retarget": dict(sorted(moving.items())),
        "left_dark": [str(r) for r in repairs if r.to_target is None],
    }
