"""Prune, pure: which managed sessions no rule of a policy wants any more, and why; and the
guard that refuses a pass deleting too much.

A session is judged only when it is mirrorq's (tagged `mirrorq:rule`: mirrorq/managed.py), of
a policy's rule (not `mirrorq mirror`'s), on an ENI this place describes (an owner of a shared
target lists its sharers' sessions too: theirs to judge), and, when its rule is planned here,
mirroring to a live target (such a session on a dead target is moved by dark-session repair,
mirrorq/dark.py, never deleted; a session on a dead target whose rule is gone, or whose ENI
its rule no longer matches, is judged: no repair will move it). Its rule then wants it unless:

- `rule_gone`: no rule of the policy has its name, or its rule does not apply to this
  account-Region any more;
- `eni_not_matched`: its ENI no longer matches the rule's selectors;
- `filter_not_rules`: its filter is not the rule's filter as planned here (of a rule's
  `filters`, the first that exists here: the planner's; a session through another of them is
  migrated, as one through a filter the rule no longer names);
- `target_not_rules`: its target is none of the rule's.

A session its rule does not want but another rule planned here wants as it is (the ENI matched
by that rule's selectors, its target one of that rule's live targets, its filter that rule's
as planned here; a renamed rule) is kept: *adopted* (`adopted`), and the planner counts it as
that rule's mirror already made, so a pass never deletes a mirror it would create again (a gap
in mirroring). A rule adopts at most one session per ENI, and none where a session that stays
anyway (for whatever reason) is already its mirror; a session on a dead target is no rule's
mirror here and never adopted. The adopted session keeps its tag until it is deleted.

A rule that cannot be planned here (none of its targets or filters exists) prunes nothing
here: what it wants here cannot be known. Nothing is read here: the live read is
mirrorq/bulk.py's, and a Describe that fails fails the whole pass before anything is pruned.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mirrorq.managed import MIRROR_RULE, rule_of
from mirrorq.rules import Rule
from tasks.contract import NOWHERE, Placement


class Reason(StrEnum):
    RULE_GONE = "rule_gone"
    ENI_NOT_MATCHED = "eni_not_matched"
    FILTER_NOT_RULES = "filter_not_rules"
    TARGET_NOT_RULES = "target_not_rules"


@dataclass(frozen=True)
class Deletion:
    """A managed session to delete: its id, its source ENI (for the job's lease), the rule
    that made it, why no rule wants it, and the place it is in."""

    session_id: str
    eni_id: str
    rule: str
    reason: Reason
    detail: str = ""
    place: Placement = NOWHERE
    target_id: str = ""
    filter_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "network_interface_id": self.eni_id,
            "rule": self.rule,
            "reason": self.reason.value,
            "detail": self.detail,
            "target_id": self.target_id,
            "filter_id": self.filter_id,
            "account_id": self.place.account_id,
            "region": self.place.region,
        }


@dataclass(frozen=True)
class PruneState:
    """One place as read for a prune: every rule of the policy, those that apply here and
    those that can be planned here (as planned: their targets and filter here), every ENI
    described here by id (those the rules match, and the other ENIs of managed sessions),
    the sessions listed here, and the targets that are dead (their resource gone)."""

    policy: Sequence[Rule]
    applying: Sequence[Rule]
    here: Sequence[Rule]
    enis: Mapping[str, Mapping[str, Any]]
    sessions: Sequence[Mapping[str, Any]]
    dead_targets: frozenset[str] = frozenset()
    place: Placement = NOWHERE


@dataclass(frozen=True)
class PrunePlan:
    """What one place's prune would delete, how many of its sessions are managed (the
    guard's denominator), and the sessions kept because another rule adopts them."""

    deletions: list[Deletion] = field(default_factory=list)
    managed: int = 0
    adopted: dict[str, str] = field(default_factory=dict)  # kept: session id -> adopting rule


def prunes(rule: Rule, everything: bool) -> bool:
    """Does a pass prune this rule's sessions (`--prune`, or the rule's own `prune`)?"""
    return everything or rule.prune


def plan_prune(state: PruneState, *, everything: bool = False) -> PrunePlan:
    """The managed sessions of this place that no rule wants, with `everything` (`--prune`)
    for every rule, else for the rules that say `prune` (and the sessions of rules no longer
    in the policy only when every rule does). A policy with no rules prunes nothing."""
    if not state.policy:
        return PrunePlan()
    by_name = {r.name: r for r in state.policy}
    applying = {r.name for r in state.applying}
    here = {r.name: r for r in state.here}
    orphans = everything or all(r.prune for r in state.policy)
    judged: list[tuple[Mapping[str, Any], str, tuple[Reason, str]]] = []
    managed = 0
    for session in state.sessions:
        name = rule_of(session)
        eni = state.enis.get(session.get("NetworkInterfaceId", ""))
        if name is None or eni is None:
            continue  # not mirrorq's, or not this place's ENI (or gone: EC2 deletes those)
        managed += 1
        if name == MIRROR_RULE:
            continue
        if (
            name in here
            and session.get("TrafficMirrorTargetId") in state.dead_targets
            and here[name].selectors.matches(dict(eni))
        ):
            continue  # dark-session repair moves it (mirrorq/dark.py: its rule's sessions)
        rule = by_name.get(name)
        if rule is None:
            why = (Reason.RULE_GONE, "no rule of the policy has this name") if orphans else None
        elif name not in applying:
            why = (Reason.RULE_GONE, "the rule no longer applies to this account and Region")
            why = why if prunes(rule, everything) else None
        elif name not in here or not prunes(rule, everything):
            why = None
        else:
            why = _unwanted(rule, here[name], eni, session)
        if why is not None:
            judged.append((session, name, why))
    doomed = {str(s["TrafficMirrorSessionId"]) for s, _, _ in judged}
    kept = adopted(state.here, state.enis, state.sessions, doomed, state.dead_targets)
    deletions = [
        _deletion(session, name, *why, place=state.place)
        for session, name, why in judged
        if str(session["TrafficMirrorSessionId"]) not in kept
    ]
    return PrunePlan(deletions, managed, kept)


def _unwanted(
    rule: Rule, planned: Rule, eni: Mapping[str, Any], session: Mapping[str, Any]
) -> tuple[Reason, str] | None:
    """Why `rule` (as written; `planned`: as planned here) does not want this session."""
    if not rule.selectors.matches(dict(eni)):
        return Reason.ENI_NOT_MATCHED, "the ENI no longer matches the rule's selectors"
    filter_id = session.get("TrafficMirrorFilterId")
    if filter_id != planned.filter_id:
        return Reason.FILTER_NOT_RULES, f"its filter {filter_id} is not the rule's"
    target_id = session.get("TrafficMirrorTargetId")
    if target_id not in rule.targets:
        return Reason.TARGET_NOT_RULES, f"its target {target_id} is not one of the rule's"
    return None


def wants(planned: Rule, eni: Mapping[str, Any], session: Mapping[str, Any]) -> bool:
    """Does a rule (as planned here) want this session as it is: its ENI matched, its target
    one of the rule's, its filter the rule's (the planner's `already_mirrored`)?"""
    return (
        planned.selectors.matches(dict(eni))
        and session.get("TrafficMirrorTargetId") in planned.targets
        and session.get("TrafficMirrorFilterId") == planned.filter_id
    )


def adopted(
    here: Sequence[Rule],
    enis: Mapping[str, Mapping[str, Any]],
    sessions: Sequence[Mapping[str, Any]],
    doomed: Collection[str],
    dead_targets: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Of the sessions `doomed` (by id: those a pass would delete, no rule of theirs wanting
    them), those another rule planned here wants as they are, by session id: the rule that
    adopts each (the first in policy order that has no mirror of the ENI yet). Every other
    session stays, whatever keeps it (its rule wants it, its rule does not prune or cannot be
    planned here, made outside mirrorq or by `mirror`), and so does an adopted one: each is
    the mirror of every rule that wants it, which then adopts none on that ENI (each ENI
    mirrored once to the rule's target). A session on a dead target is no rule's mirror, and
    never adopted (dark-session repair moves only its own rule's sessions)."""
    served: set[tuple[str, str]] = set()  # (rule, ENI) where the rule has its mirror
    candidates: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = []
    for session in sorted(sessions, key=lambda s: str(s.get("TrafficMirrorSessionId"))):
        eni_id = str(session.get("NetworkInterfaceId", ""))
        eni = enis.get(eni_id)
        if eni is None or session.get("TrafficMirrorTargetId") in dead_targets:
            continue
        if str(session.get("TrafficMirrorSessionId")) in doomed:
            candidates.append((eni_id, eni, session))
        else:
            served |= {(r.name, eni_id) for r in here if wants(r, eni, session)}
    found: dict[str, str] = {}
    for eni_id, eni, session in candidates:
        wanting = [r.name for r in here if wants(r, eni, session)]
        adopter = next((name for name in wanting if (name, eni_id) not in served), None)
        if adopter is not None:
            found[str(session["TrafficMirrorSessionId"])] = adopter
            served |= {(name, eni_id) for name in wanting}  # it stays: theirs too
    return found


def _deletion(
    session: Mapping[str, Any], rule: str, reason: Reason, detail: str, *, place: Placement
) -> Deletion:
    return Deletion(
        session_id=str(session["TrafficMirrorSessionId"]),
        eni_id=str(session["NetworkInterfaceId"]),
        rule=rule,
        reason=reason,
        detail=detail,
        place=place,
        target_id=str(session.get("TrafficMirrorTargetId", "")),
        filter_id=str(session.get("TrafficMirrorFilterId", "")),
    )


@dataclass(frozen=True)
class Refusal:
    """A prune pass refused: it would delete more than the allowed share of one account's
    managed sessions."""

    account: str
    deleting: int
    managed: int
    max_share: float

    def __str__(self) -> str:
        share = self.deleting / self.managed if self.managed else 1.0
        return (
            f"prune refused: it would delete {self.deleting} of the {self.managed} managed "
            f"sessions of account {self.account} ({share:.0%}, more than the "
            f"{self.max_share:.0%} allowed by MIRRORQ_PRUNE_MAX_SHARE); nothing is deleted. "
            "Check the policy, then run again with --force to delete them"
        )


def guard(
    plans: Iterable[tuple[Placement, PrunePlan]], max_share: float, *, force: bool = False
) -> list[Refusal]:
    """The accounts whose share of managed sessions a pass would delete is above `max_share`
    (summed over the account's Regions); any refusal means the pass deletes nothing. With
    `force`, none."""
    deleting: dict[str, int] = {}
    managed: dict[str, int] = {}
    for place, plan in plans:
        account = place.account_id or "default"
        deleting[account] = deleting.get(account, 0) + len(plan.deletions)
        managed[account] = managed.get(account, 0) + plan.managed
    if force:
        return []
    return [
        Refusal(account, n, managed[account], max_share)
        for account, n in deleting.items()
        if n and n > max_share * managed[account]
    ]
