"""Planning: for each rule and each ENI it matches, create a session (to which target) or why not.

Pure: the inventory (mirrorq/inventory.py) reads EC2, this decides. Rules apply in order and
every rule that matches an ENI applies; what an earlier rule plans counts for the later ones
(EC2's 3 sessions per ENI, a target's sources, "already mirrored"), and so do the mirrors
jobs still pending will make ("pending"). Running a plan twice creates nothing new; a session
deleted since is planned again, with a new job (a new token).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from mirrorq.eligibility import unsupported
from mirrorq.managed import managed_fields, rule_of
from mirrorq.rules import Choose, Rule
from tasks.contract import NOWHERE, JobKind, Placement
from worker.sessions import same_mirror

SESSIONS_PER_INTERFACE = 3  # EC2's quota of sessions per source ENI


class Outcome(StrEnum):
    CREATE = "create"
    ALREADY_MIRRORED = "already_mirrored"  # to (one of) the rule's targets, through its filter
    PENDING = "pending"  # a queued or running job will make that mirror
    SESSION_LIMIT = "session_limit"  # already 3 sessions, EC2's per-ENI limit
    IS_MIRROR_TARGET = "is_mirror_target"  # a target cannot be a source
    NOT_INTERFACE = "not_interface_type"  # efa, trunk, ... ENIs are not mirrored
    NO_TARGET = "no_target"  # none of the rule's targets exists (deleted since?)
    NO_TARGET_IN_ZONE = "no_target_in_zone"  # same-az: none of the targets serves the ENI's zone
    TARGETS_FULL = "targets_full"  # every candidate target takes no more sources
    # its instance's type cannot be a source (mirrorq/eligibility.py: AWS's list)
    UNSUPPORTED_INSTANCE_TYPE = "unsupported_instance_type"


@dataclass(frozen=True)
class Target:
    """A traffic mirror target, as planning needs it."""

    target_id: str
    eni_id: str | None = None  # a network-interface target's ENI
    zone: str | None = None  # None: serves every zone (NLB, Gateway Load Balancer endpoint)
    source_limit: int | None = None  # None: no limit (NLB, GWLB endpoint)


@dataclass(frozen=True)
class Pending:
    """A mirror a job still queued or running will make (unless its mirror exists already)."""

    job_id: str
    eni_id: str
    target_id: str
    filter_id: str
    alternatives: tuple[str, ...] = ()  # its rule's other targets: one mirror with target_id

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Pending | None:
        """What a job's record says it will make; None for a DryRun or a record without one."""
        request = record.get("request") or {}
        try:
            eni, target, filter_id = (
                request["NetworkInterfaceId"],
                request["TrafficMirrorTargetId"],
                request["TrafficMirrorFilterId"],
            )
        except (KeyError, TypeError):
            return None
        if request.get("DryRun"):
            return None
        alternatives = tuple(record.get("alternatives") or ())
        return cls(str(record["job_id"]), eni, target, filter_id, alternatives)


@dataclass(frozen=True)
class PlanItem:
    rule: str
    eni_id: str
    outcome: Outcome
    target_id: str | None = None  # for CREATE: the target chosen
    detail: str = ""
    place: Placement = NOWHERE  # the account-Region the ENI is in (NOWHERE: the fleet's)


def place_label(place: Placement) -> str:
    """`111111111111/eu-west-1`; `default` for the fleet's own account or Region."""
    return f"{place.account_id or 'default'}/{place.region or 'default'}"


@dataclass(frozen=True)
class Missing:
    """A rule that cannot be planned in one of its places: none of its targets (or filters)
    exists in that account-Region."""

    rule: str
    place: Placement
    kind: str  # "target" or "filter"
    ids: tuple[str, ...]  # as the rule names them (a filter tag as `tagged K=V`)
    # Several filters have the rule's filter tag there: which to use is not mirrorq's guess,
    # so the rule is refused in that place.
    ambiguous: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"account {self.place.account_id or 'default'}, {self.place.region or 'default'}"
        if self.ambiguous:
            return (
                f"rule {self.rule}: refused in {where}: {len(self.ambiguous)} filters are "
                f"{self.ids[-1]} ({', '.join(self.ambiguous)}); tag one only, or name it"
            )
        return (
            f"rule {self.rule}: no {self.kind} of {', '.join(self.ids)} exists in "
            f"account {self.place.account_id or 'default'}, {self.place.region or 'default'}"
        )


@dataclass(frozen=True)
class Unplanned:
    """A place that could not be read at all (its role not assumed: STS's code)."""

    place: Placement
    code: str
    message: str

    def __str__(self) -> str:
        return (
            f"account {self.place.account_id or 'default'}, {self.place.region or 'default'} "
            f"was not planned: {self.code} ({self.message})"
        )


@dataclass
class Plan:
    rules: list[Rule]
    items: list[PlanItem] = field(default_factory=list)
    # A rule as planned in a place: its targets and filter there, by (place, rule name).
    place_rules: dict[tuple[Placement, str], Rule] = field(default_factory=dict)
    missing: list[Missing] = field(default_factory=list)
    planned_in: list[Placement] = field(default_factory=list)  # every place planned (merge)
    unplanned: list[Unplanned] = field(default_factory=list)

    @classmethod
    def merge(cls, rules: list[Rule], plans: Iterable[tuple[Placement, Plan]]) -> Plan:
        """One plan of the plans of several places (each with the rules as planned there)."""
        merged = cls(rules)
        for place, part in plans:
            merged.planned_in.append(place)
            merged.items += [replace(i, place=place) for i in part.items]
            merged.place_rules |= {(place, r.name): r for r in part.rules}
            merged.missing += part.missing
            merged.unplanned += part.unplanned
        return merged

    def places(self) -> list[Placement]:
        """The places planned, in order (none but the fleet's own: [NOWHERE])."""
        return self.planned_in or [NOWHERE]

    def counts(self, rule: str | None = None, place: Placement | None = None) -> dict[str, int]:
        counted = Counter(
            i.outcome
            for i in self.items
            if (rule is None or i.rule == rule) and (place is None or i.place == place)
        )
        return {o.value: counted[o] for o in Outcome if counted[o]}

    def counts_by_place(self) -> dict[str, dict[str, int]]:
        return {place_label(p): self.counts(place=p) for p in self.places()}

    def to_create(self) -> list[PlanItem]:
        return [i for i in self.items if i.outcome is Outcome.CREATE]

    def hold(self, held: dict[tuple[str, str], str]) -> None:
        """Gaps planned to create that turned out pending, by (rule, ENI): the job claimed
        for each is still queued or running."""
        self.items = [
            replace(i, outcome=Outcome.PENDING, target_id=None, detail=held[(i.rule, i.eni_id)])
            if i.outcome is Outcome.CREATE and (i.rule, i.eni_id) in held
            else i
            for i in self.items
        ]

    def summary(self, *, skipped: bool = True) -> dict[str, Any]:
        """What a batch keeps as its record of the plan (one rule: `mirror`'s shape); without
        `skipped`, its counts only, not the ENIs skipped by reason (O(rules), not O(ENIs))."""
        per_rule = {r.name: self._rule_summary(r, skipped) for r in self.rules}
        places = self.places()
        where: dict[str, Any] = {}
        if places != [NOWHERE]:
            where["places"] = self.counts_by_place()
        if missing := [str(m) for m in self.missing if not m.ambiguous]:
            where["missing"] = missing
        if ambiguous := [str(m) for m in self.missing if m.ambiguous]:
            where["ambiguous"] = ambiguous
        if self.unplanned:
            where["unplanned"] = [str(u) for u in self.unplanned]
        if len(self.rules) == 1:
            return {**next(iter(per_rule.values())), **where}
        return {"counts": self.counts(), "rules": per_rule, **where}

    def _rule_summary(self, rule: Rule, with_skipped: bool) -> dict[str, Any]:
        targets: dict[str, Any] = (
            {"target": rule.targets[0]}
            if rule.choose is None
            else {"targets": list(rule.targets), "choose": rule.choose.value}
        )
        filters: dict[str, Any] = (
            {"filters": list(rule.filter_choices)}
            if rule.filter_choices
            else {"filter": rule.filter_id}
            if rule.filter_id
            else {}
        )
        if rule.filter_tag is not None:
            filters["filter_tag"] = "=".join(rule.filter_tag)
        summary = {**targets, **filters, "counts": self.counts(rule.name)}
        if with_skipped:
            skipped: dict[str, list[str]] = {}
            for item in self.items:
                if item.rule == rule.name and item.outcome is not Outcome.CREATE:
                    skipped.setdefault(item.outcome.value, []).append(item.eni_id)
            summary["skipped"] = skipped
        return summary


@dataclass
class _Load:
    """What the targets and ENIs hold, existing and planned so far."""

    on_eni: dict[str, list[dict[str, Any]]]
    sessions: Counter[str]
    sources: dict[str, set[str]]

    @classmethod
    def of(cls, sessions: Iterable[dict[str, Any]], pending: Iterable[Pending]) -> _Load:
        load = cls({}, Counter(), {})
        for s in sessions:
            load.add(s["NetworkInterfaceId"], s["TrafficMirrorTargetId"], s)
        for p in pending:
            # A job whose mirror exists (or another pending job's) will end AlreadyMirrored.
            targets = [p.target_id, *p.alternatives]
            if not same_mirror(load.on_eni.get(p.eni_id, []), targets, p.filter_id):
                session = {
                    "TrafficMirrorTargetId": p.target_id,
                    "TrafficMirrorFilterId": p.filter_id,
                    "TrafficMirrorSessionId": "(pending)",
                    "pending_job": p.job_id,
                }
                load.add(p.eni_id, p.target_id, session)
        return load

    def add(self, eni_id: str, target_id: str, session: dict[str, Any]) -> None:
        self.on_eni.setdefault(eni_id, []).append(session)
        self.sessions[target_id] += 1
        self.sources.setdefault(target_id, set()).add(eni_id)

    def has_room(self, target: Target, eni_id: str) -> bool:
        sources = self.sources.get(target.target_id, set())
        return (
            target.source_limit is None or eni_id in sources or len(sources) < target.source_limit
        )


@dataclass(frozen=True)
class PlaceState:
    """One place as read for planning: the rules as planned there (its targets and filter),
    the ENIs they match, the sessions it lists, its view of the targets, and every ENI that
    is a target there (never a source)."""

    rules: list[Rule]
    enis: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    targets: dict[str, Target]
    target_enis: set[str]
    # The instance type of each ENI attached to an instance, by ENI id (eligible sources).
    instance_types: Mapping[str, str] = field(default_factory=dict)
    # The targets known dead (bulk.py PlaceRead.live_state): a session on one is no rule's
    # mirror but its own rule's (dark-session repair moves it: mirrorq/dark.py).
    dead_targets: frozenset[str] = frozenset()


def plan(
    rules: list[Rule],
    enis: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    targets: dict[str, Target],
    target_enis: set[str],
    pending: Iterable[Pending] = (),
    instance_types: Mapping[str, str] | None = None,
) -> Plan:
    """Decide, rule by rule, for each ENI a rule's selectors match. `targets` are the rules'
    targets; `target_enis` every ENI that is a target in the account (never a source);
    `pending` the mirrors of jobs not finished yet, which count as made; `instance_types`
    the type of each ENI's instance (an ENI on a type that cannot be a source is skipped)."""
    state = PlaceState(rules, enis, sessions, targets, target_enis, instance_types or {})
    return plan_places([state], pending)[0]


def plan_places(states: Sequence[PlaceState], pending: Iterable[Pending] = ()) -> list[Plan]:
    """Each place planned as `plan` plans one, in turn, against one load: a target shared
    by several accounts (RAM) is one target, so its sessions and sources are counted over
    every place read (each account lists only its own sessions; an owner's, also those on
    its shared targets: each session counted once), and what an earlier place plans for it
    counts for the later ones. A target seen from several places is described as the one
    that sees the most of it does (its owner sees its ENI, so its zone and size)."""
    load = _Load.of(_once(s for st in states for s in st.sessions), pending)
    known = _fullest(states)
    return [_plan_in(load, st, {t: known[t] for t in st.targets}) for st in states]


def _once(sessions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each session once, by its id (an owner lists the sessions of its sharers too)."""
    ids: set[str] = set()
    found = []
    for session in sessions:
        session_id = session.get("TrafficMirrorSessionId")
        if session_id not in ids:
            found.append(session)
        if session_id is not None:
            ids.add(session_id)
    return found


def _fullest(states: Sequence[PlaceState]) -> dict[str, Target]:
    """Each target as the place that knows most of it describes it (its zone known first)."""
    known: dict[str, Target] = {}
    for state in states:
        for target_id, target in state.targets.items():
            seen = known.get(target_id)
            if seen is None or (seen.zone is None and target.zone is not None):
                known[target_id] = target
    return known


def _plan_in(load: _Load, state: PlaceState, targets: dict[str, Target]) -> Plan:
    result = Plan(state.rules)
    for rule in state.rules:
        seen: set[str] = set()
        for eni in state.enis:
            eni_id = eni["NetworkInterfaceId"]
            if eni_id in seen or not rule.selectors.matches(eni):
                continue
            seen.add(eni_id)
            item = _decide(rule, eni, load, targets, state)
            result.items.append(item)
            if item.target_id is not None:
                planned = {
                    "TrafficMirrorTargetId": item.target_id,
                    "TrafficMirrorFilterId": rule.filter_id,
                    "TrafficMirrorSessionId": "(planned)",
                }
                load.add(eni_id, item.target_id, planned)
    return result


def _decide(  # noqa: PLR0911 - a return per outcome
    rule: Rule,
    eni: dict[str, Any],
    load: _Load,
    targets: dict[str, Target],
    state: PlaceState,
) -> PlanItem:
    eni_id = eni["NetworkInterfaceId"]
    existing = load.on_eni.get(eni_id, [])
    same = [
        s
        for s in same_mirror(existing, rule.targets, rule.filter_id)
        if s["TrafficMirrorTargetId"] not in state.dead_targets or rule_of(s) == rule.name
    ]
    made = [s for s in same if "pending_job" not in s]
    if made:
        return PlanItem(
            rule.name, eni_id, Outcome.ALREADY_MIRRORED, detail=made[0]["TrafficMirrorSessionId"]
        )
    if same:
        return PlanItem(rule.name, eni_id, Outcome.PENDING, detail=same[0]["pending_job"])
    if eni_id in state.target_enis:
        return PlanItem(rule.name, eni_id, Outcome.IS_MIRROR_TARGET)
    if eni.get("InterfaceType", "interface") != "interface":
        return PlanItem(rule.name, eni_id, Outcome.NOT_INTERFACE, detail=eni["InterfaceType"])
    instance_type = state.instance_types.get(eni_id)
    why = unsupported(instance_type) if instance_type else None
    if why is not None:
        detail = f"{instance_type}: {why}"
        return PlanItem(rule.name, eni_id, Outcome.UNSUPPORTED_INSTANCE_TYPE, detail=detail)
    if len(existing) >= SESSIONS_PER_INTERFACE:
        return PlanItem(
            rule.name, eni_id, Outcome.SESSION_LIMIT, detail=f"{len(existing)} sessions"
        )
    candidates = [targets[t] for t in rule.targets if t in targets]
    if not candidates:
        return PlanItem(rule.name, eni_id, Outcome.NO_TARGET, detail=", ".join(rule.targets))
    if rule.choose is Choose.SAME_AZ:
        zone = eni.get("AvailabilityZone")
        candidates = [t for t in candidates if t.zone is None or t.zone == zone]
        if not candidates:
            return PlanItem(rule.name, eni_id, Outcome.NO_TARGET_IN_ZONE, detail=str(zone))
    room = [t for t in candidates if load.has_room(t, eni_id)]
    if not room:
        return PlanItem(rule.name, eni_id, Outcome.TARGETS_FULL)
    # Fewest sessions first; ties go to the target listed first.
    chosen = min(room, key=lambda t: load.sessions[t.target_id])
    return PlanItem(rule.name, eni_id, Outcome.CREATE, target_id=chosen.target_id)


@dataclass(frozen=True)
class PlannedJob:
    """A job to submit: its request, what made it, and the rule's other targets."""

    request: dict[str, Any]
    rule: str
    alternatives: list[str]
    placement: Placement = NOWHERE

    @property
    def gap(self) -> str:
        """What names the gap this job fills, for its claim: the ENI, and the mirror it lacks
        (the rule's targets, its filter), whatever target was chosen and whatever the rule
        is called; a DryRun job's gap is another one."""
        request = self.request
        mirror = [
            request["TrafficMirrorFilterId"],
            sorted({request["TrafficMirrorTargetId"], *self.alternatives}),
            bool(request.get("DryRun")),
        ]
        digest = hashlib.sha256(json.dumps(mirror).encode()).hexdigest()[:24]
        return f"{request['NetworkInterfaceId']}:{digest}"


def planned_jobs(plan: Plan, *, dry_run: bool = False) -> list[PlannedJob]:
    """One job per ENI and rule to create, each with the rule's session options and tagged
    `mirrorq:rule` = the rule's name (mirrorq/managed.py): a session mirrorq manages."""
    rules = {r.name: r for r in plan.rules}
    jobs = []
    for item in plan.to_create():
        rule = plan.place_rules.get((item.place, item.rule)) or rules[item.rule]
        assert item.target_id is not None
        request = {
            "NetworkInterfaceId": item.eni_id,
            "TrafficMirrorTargetId": item.target_id,
            "TrafficMirrorFilterId": rule.filter_id,
            "SessionNumber": rule.session_number,
            **managed_fields(rule),
            **({"DryRun": True} if dry_run else {}),
        }
        others = [t for t in rule.targets if t != item.target_id]
        jobs.append(PlannedJob(request, rule.name, others, item.place))
    return jobs


@dataclass(frozen=True)
class SessionJob:
    """A delete or modify planned for one session: its request in EC2's syntax, its source
    ENI (for the job's ENI lease), the rule that made the session, and where it runs."""

    kind: JobKind
    request: dict[str, Any]
    eni_id: str
    rule: str | None = None
    place: Placement = NOWHERE

    @property
    def gap(self) -> str:
        """What a reconcile pass claims for it (tasks/scripts.py CLAIM_GAPS): one job per
        session and kind while one is pending."""
        return f"{self.eni_id}:{self.kind.value}:{self.request['TrafficMirrorSessionId']}"
