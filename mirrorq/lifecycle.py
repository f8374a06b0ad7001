"""Deleting and moving managed sessions against live EC2: a reconcile pass's prune
(mirrorq/prune.py decides), `mirrorq unmirror` and `mirrorq retarget` (and their HTTP routes),
each planned, shown and submitted as one batch of delete or modify jobs (tasks/contract.py's
job kinds) through the producer, as `mirror` submits creates.

Every read is on the road every EC2 call takes (worker/ec2.py). Only sessions mirrorq manages
(tag `mirrorq:rule`: mirrorq/managed.py) are selected, unless the operator names a session by
its id. A retarget is a modify of the session's target alone: the session, its SessionNumber
and its filter stay, so mirroring has no gap (no delete and create).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from config import Settings
from mirrorq import prune
from mirrorq.bulk import Live
from mirrorq.inventory import Inventory
from mirrorq.managed import rule_of
from mirrorq.planning import SessionJob, Target
from mirrorq.rules import Rule, Selectors
from mirrorq.targets import target_health
from tasks.contract import NOWHERE, JobKind, Placement, parse_request
from tasks.producer import Producer
from worker.roads import place_at, planner_roads

# A prune pass ---------------------------------------------------------------------------------


@dataclass
class Pruned:
    """What a pass's prune decided: each place's plan, the deletions it will submit (none when
    a refusal stands), and the refusals (the share guard) that stopped it."""

    plans: list[tuple[Placement, prune.PrunePlan]] = field(default_factory=list)
    refusals: list[prune.Refusal] = field(default_factory=list)

    @property
    def planned(self) -> list[prune.Deletion]:
        """Every deletion the pass found, refused or not (what `policy plan` shows)."""
        return [d for _, p in self.plans for d in p.deletions]

    @property
    def deletions(self) -> list[prune.Deletion]:
        """What the pass deletes: nothing while any refusal stands."""
        return [] if self.refusals else self.planned

    def summary(self) -> dict[str, Any]:
        counts = Counter(d.reason.value for d in self.planned)
        return {
            "deletions": len(self.planned),
            "by_reason": dict(counts),
            "adopted": sum(len(p.adopted) for _, p in self.plans),
            "refused": [str(r) for r in self.refusals],
        }


def pruning(rules: Sequence[Rule], everything: bool) -> bool:
    """Does a pass over these rules prune at all (`--prune`, or some rule's `prune`)?"""
    return bool(rules) and (everything or any(r.prune for r in rules))


def prune_live(
    settings: Settings,
    live: Live,
    *,
    everything: bool,
    force: bool = False,
    placement: Placement = NOWHERE,
) -> Pruned:
    """The prune of what `bulk.read_live(health=True)` read (nothing when no rule prunes):
    every ENI its places' managed sessions are on described (`session_enis`), then planned
    (`plan_pruned`) under MIRRORQ_PRUNE_MAX_SHARE."""
    if not pruning(live.rules, everything):
        return Pruned()
    enis = asyncio.run(session_enis(settings, live))
    return plan_pruned(
        live,
        enis,
        everything=everything,
        max_share=settings.prune_max_share,
        force=force,
        placement=placement,
    )


async def session_enis(
    settings: Settings, live: Live
) -> dict[Placement, dict[str, dict[str, Any]]]:
    """Per place read, the ENIs read for planning and every other ENI its managed sessions
    are on, described by id (those the rules no longer match are not among the first). A
    Describe that fails fails the whole prune: nothing is pruned from a partial view."""
    described: dict[Placement, dict[str, dict[str, Any]]] = {}
    async with planner_roads(settings) as roads:
        for place, read in live.views():
            enis = {e["NetworkInterfaceId"]: e for e in read.state.enis}
            others = {
                s["NetworkInterfaceId"]
                for s in read.state.sessions
                if rule_of(s) is not None and s["NetworkInterfaceId"] not in enis
            }
            if others:
                async with roads.use(place_at(place, settings.region)) as road:
                    for eni in await Inventory(road).enis_named(eni_ids=others):
                        enis[eni["NetworkInterfaceId"]] = eni
            described[place] = enis
    return described


def plan_pruned(
    live: Live,
    enis: Mapping[Placement, Mapping[str, Mapping[str, Any]]],
    *,
    everything: bool,
    max_share: float,
    force: bool = False,
    placement: Placement = NOWHERE,
) -> Pruned:
    """The prune of every place read (pure, from `session_enis`'s answer), under the share
    guard. A place not read (its role not assumed) prunes nothing."""
    pruned = Pruned()
    if not pruning(live.rules, everything):
        return pruned
    for place, read in live.views():
        applying = [r for r in live.rules if place in (r.places or (placement,))]
        dead = frozenset(t for t, h in read.health.items() if not h.live)
        state = prune.PruneState(
            live.rules,
            applying,
            read.state.rules,
            enis.get(place, {}),
            read.state.sessions,
            dead,
            place,
        )
        pruned.plans.append((place, prune.plan_prune(state, everything=everything)))
    pruned.refusals = prune.guard(pruned.plans, max_share, force=force)
    return pruned


# Jobs on sessions -----------------------------------------------------------------------------


# The planner's deletes: it has just read each session, so their goal is its absence, and
# EC2 having removed it meanwhile (with its ENI) ends the job `deleted` (tasks/contract.py).
PLANNED_DELETE = {"missing_ok": True}


def deletion_jobs(deletions: Iterable[prune.Deletion], *, dry_run: bool) -> list[SessionJob]:
    return [
        SessionJob(
            JobKind.DELETE,
            {
                "TrafficMirrorSessionId": d.session_id,
                **PLANNED_DELETE,
                **({"DryRun": True} if dry_run else {}),
            },
            d.eni_id,
            d.rule,
            d.place,
        )
        for d in deletions
    ]


def submit_session_jobs(
    producer: Producer,
    jobs: Sequence[SessionJob],
    *,
    source: str,
    plan: dict[str, Any],
    job_ids: list[str] | None = None,
) -> str:
    """The jobs as one batch whose record keeps the plan (a batch of none records a run that
    found nothing to do)."""
    return producer.submit_batch(
        [parse_request(j.request, j.kind) for j in jobs],
        source=source,
        plan=plan,
        origins=[{"rule": j.rule} if j.rule else None for j in jobs],
        placements=[j.place for j in jobs],
        network_interface_ids=[j.eni_id for j in jobs],
        job_ids=job_ids,
    )


class DeadTargetError(Exception):
    """A retarget to a target whose resource is gone (mirrorq/targets.py): refused."""

    def __init__(self, target_id: str, reason: str) -> None:
        super().__init__(
            f"target {target_id} is dead ({reason}): sessions moved to it would mirror nothing"
        )
        self.target_id, self.reason = target_id, reason


# Unmirror and retarget ------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which sessions an operator means: on ENIs the selectors match, to these targets,
    through these filters, made by these rules, or these sessions by id (each kind given must
    match; values of one kind are alternatives). Only managed sessions, unless named by id."""

    selectors: Selectors = field(default_factory=Selectors)
    target_ids: tuple[str, ...] = ()
    filter_ids: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    session_ids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(
            (bool(self.selectors), self.target_ids, self.filter_ids, self.rules, self.session_ids)
        )

    def wants(self, session: Mapping[str, Any]) -> bool:
        """Does this session (as listed) match every kind of selector given (ENIs aside)?"""
        return (
            (not self.target_ids or session.get("TrafficMirrorTargetId") in self.target_ids)
            and (not self.filter_ids or session.get("TrafficMirrorFilterId") in self.filter_ids)
            and (not self.rules or rule_of(session) in self.rules)
            and (not self.session_ids or session.get("TrafficMirrorSessionId") in self.session_ids)
        )


class Action(StrEnum):
    DELETE = "delete"
    MODIFY = "modify"
    UNMANAGED = "unmanaged"  # not mirrorq's (no mirrorq:rule tag), and not named by id
    ALREADY_MIRRORED = "already_mirrored"  # retarget: the ENI mirrors to the new target already
    TARGET_FULL = "target_full"  # retarget: the new target takes no more sources


@dataclass(frozen=True)
class SessionItem:
    session_id: str
    eni_id: str
    rule: str | None
    action: Action
    target_id: str
    to_target: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "network_interface_id": self.eni_id,
            "rule": self.rule,
            "action": self.action.value,
            "target_id": self.target_id,
            "to_target_id": self.to_target,
        }


@dataclass
class SessionPlan:
    """What an unmirror or retarget would do to each session it selected."""

    title: str
    items: list[SessionItem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(i.action.value for i in self.items))

    def summary(self) -> dict[str, Any]:
        return {"title": self.title, "counts": self.counts()}

    def jobs(self, *, dry_run: bool, place: Placement) -> list[SessionJob]:
        dry = {"DryRun": True} if dry_run else {}
        jobs = []
        for item in self.items:
            if item.action is Action.DELETE:
                request = {"TrafficMirrorSessionId": item.session_id, **PLANNED_DELETE, **dry}
                jobs.append(SessionJob(JobKind.DELETE, request, item.eni_id, item.rule, place))
            elif item.action is Action.MODIFY:
                request = {
                    "TrafficMirrorSessionId": item.session_id,
                    "TrafficMirrorTargetId": item.to_target,
                    **dry,
                }
                jobs.append(SessionJob(JobKind.MODIFY, request, item.eni_id, item.rule, place))
        return jobs


def _owned(session: Mapping[str, Any], selection: Selection) -> bool:
    """Managed, or named by the operator."""
    named = session.get("TrafficMirrorSessionId") in selection.session_ids
    return rule_of(session) is not None or named


def plan_unmirror(sessions: Iterable[Mapping[str, Any]], selection: Selection) -> SessionPlan:
    """Pure: a delete for each selected session mirrorq manages (or named by id)."""
    plan = SessionPlan("unmirror")
    for s in sorted(sessions, key=lambda s: str(s["TrafficMirrorSessionId"])):
        if not selection.wants(s):
            continue
        action = Action.DELETE if _owned(s, selection) else Action.UNMANAGED
        plan.items.append(_item(s, action))
    return plan


def plan_retarget(
    sessions: Iterable[Mapping[str, Any]],
    selection: Selection,
    to: Target,
    on_target: Iterable[Mapping[str, Any]],
) -> SessionPlan:
    """Pure: a modify to `to` for each selected session mirrorq manages (or named), unless its
    ENI mirrors to `to` through the same filter already (one mirror per ENI, target and
    filter), or `to` takes no more sources (`on_target`: the sessions it has now)."""
    plan = SessionPlan(f"retarget to {to.target_id}")
    sessions = list(sessions)
    has = {(s["NetworkInterfaceId"], s["TrafficMirrorFilterId"]) for s in on_target}
    sources = {s["NetworkInterfaceId"] for s in on_target}
    for s in sorted(sessions, key=lambda s: str(s["TrafficMirrorSessionId"])):
        if not selection.wants(s) or s["TrafficMirrorTargetId"] == to.target_id:
            continue
        eni = s["NetworkInterfaceId"]
        if not _owned(s, selection):
            action = Action.UNMANAGED
        elif (eni, s["TrafficMirrorFilterId"]) in has:
            action = Action.ALREADY_MIRRORED
        elif to.source_limit is not None and eni not in sources and len(sources) >= to.source_limit:
            action = Action.TARGET_FULL
        else:
            action = Action.MODIFY
            has.add((eni, s["TrafficMirrorFilterId"]))
            sources.add(eni)
        plan.items.append(_item(s, action, to.target_id if action is Action.MODIFY else None))
    return plan


def _item(s: Mapping[str, Any], action: Action, to: str | None = None) -> SessionItem:
    return SessionItem(
        str(s["TrafficMirrorSessionId"]),
        str(s["NetworkInterfaceId"]),
        rule_of(s),
        action,
        str(s["TrafficMirrorTargetId"]),
        to,
    )


async def selected_sessions(inventory: Inventory, selection: Selection) -> list[dict[str, Any]]:
    """The sessions the selection's kinds could match, as listed: those on the ENIs its
    selectors match (when it has any), else every session of the place (narrowed by EC2's
    filters for the targets, filters and ids named); `Selection.wants` decides. EC2 takes `*`
    and `?` in a filter's values as wildcards: the ENIs listed are kept only if the selectors
    match them as written (`Selectors.matches`), so `Env=*` never widens an unmirror."""
    if selection.selectors:
        enis = await inventory.enis(selection.selectors.filters())
        ids = [e["NetworkInterfaceId"] for e in enis if selection.selectors.matches(e)]
        return await inventory.sessions_touching(ids, []) if ids else []
    filters = [
        {"Name": name, "Values": list(values)}
        for name, values in (
            ("traffic-mirror-target-id", selection.target_ids),
            ("traffic-mirror-filter-id", selection.filter_ids),
            ("traffic-mirror-session-id", selection.session_ids),
        )
        if values
    ]
    return await inventory.sessions(filters or None)


async def plan_unmirror_live(
    settings: Settings, selection: Selection, placement: Placement = NOWHERE
) -> SessionPlan:
    """The selection's sessions read in `placement` (on its road) and planned for deletion."""
    async with (
        planner_roads(settings) as roads,
        roads.use(place_at(placement, settings.region)) as road,
    ):
        sessions = await selected_sessions(Inventory(road), selection)
    return plan_unmirror(sessions, selection)


async def plan_retarget_live(
    settings: Settings,
    selection: Selection,
    to_target: str,
    placement: Placement = NOWHERE,
) -> SessionPlan:
    """The selection's sessions (those on its `--from` target) read in `placement` and planned
    to move to `to_target`: UnknownResourceError if that target does not exist there,
    DeadTargetError if it is dead (its sensor gone: the sessions would mirror nothing)."""
    async with (
        planner_roads(settings) as roads,
        roads.use(place_at(placement, settings.region)) as road,
    ):
        inventory = Inventory(road)
        to = (await inventory.targets([to_target]))[to_target]
        own = placement.account_id or await roads.default_account()
        health = (await target_health(road, [to_target], own))[to_target]
        if not health.live:
            raise DeadTargetError(to_target, health.reason)
        sessions = await selected_sessions(inventory, selection)
        on_target = await inventory.sessions(
            [{"Name": "traffic-mirror-target-id", "Values": [to_target]}]
        )
    return plan_retarget(sessions, selection, to, on_target)
