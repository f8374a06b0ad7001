"""Bulk mirroring: rules planned against live EC2 and submitted as one batch.

`mirrorq mirror` (one rule from its options), `mirrorq reconcile` and `mirrorq policy plan`
(the rules of a policy file) all go through here; the HTTP API will too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError

from config import Settings
from mirrorq import planning
from mirrorq.dark import Repair, repair_counts
from mirrorq.inventory import Inventory
from mirrorq.rules import Rule
from mirrorq.targets import Health, target_health
from tasks.contract import NOWHERE, JobKind, JobRequest, Placement, parse_request
from tasks.errors import UnknownResourceError
from tasks.producer import Producer
from worker.errors import STS_OPERATIONS, classify
from worker.logs import log_context
from worker.roads import Place, place_at, planner_roads

log = logging.getLogger(__name__)


async def plan_live(
    settings: Settings,
    rules: Sequence[Rule],
    pending: Iterable[planning.Pending] = (),
    placement: Placement = NOWHERE,
) -> planning.Plan:
    """Every rule planned from EC2's state now (and the mirrors `pending` jobs will make), in
    each place it applies to (its `places`, else `placement`: the fleet's own by default),
    each place read on its own road, then every place planned in turn against one load (a
    target shared by several accounts is one target: its sessions from every place read,
    and what earlier places plan for it, count against its source limit), and the plans
    merged.

    Raises UnknownResourceError naming a target or filter that exists in none
    of its rule's places. One that exists in some places only (targets and filters are
    Regional) is used where it exists; a rule with none of its targets or filters in a place
    is not planned there, and the plan's `missing` says which account-Region has none.
    """
    return plan_read(await read_live(settings, rules, placement), pending)


@dataclass(frozen=True)
class Live:
    """Some rules' places as read now (`read_live`): each place's `PlaceRead`, or why it was not
    read; what planning, coverage (mirrorq/coverage.py) and dark-session repair
    (mirrorq/dark.py) start from."""

    rules: list[Rule]
    places: list[Placement]
    read: list[PlaceRead | planning.Unplanned]
    fleet_region: str = ""  # where a place that names no Region is (for its log lines)

    def views(self) -> list[tuple[Placement, PlaceRead]]:
        return [
            (p, r) for p, r in zip(self.places, self.read, strict=True) if isinstance(r, PlaceRead)
        ]


async def read_live(
    settings: Settings,
    rules: Sequence[Rule],
    placement: Placement = NOWHERE,
    *,
    health: bool = False,
) -> Live:
    """Every place of the rules read on its own road (`plan_live`); with `health`, whether
    each rule's target there is alive too (mirrorq/targets.py)."""
    by_place: dict[Placement, list[Rule]] = {}
    for rule in rules:
        for place in rule.places or (placement,):
            by_place.setdefault(place, []).append(rule)
    # A bound on the places read at once: the roads' cache holds that many.
    slots = asyncio.Semaphore(max(1, settings.client_cache))
    async with planner_roads(settings) as roads:

        async def one(place: Placement) -> PlaceRead | planning.Unplanned:
            try:
                async with slots, roads.use(place_at(place, settings.region)) as road:
                    read = await _read_place(Inventory(road), place, by_place[place])
                    if health:
                        own = place.account_id or await roads.default_account()
                        # The rules' targets, and any a session there mirrors into.
                        used = {s["TrafficMirrorTargetId"] for s in read.state.sessions}
                        found = await target_health(road, {*read.state.targets, *used}, own)
                        read = replace(read, health=found)
                    return read
            except ClientError as error:
                if error.operation_name not in STS_OPERATIONS:
                    raise
                # The place's role was not assumed: only its own ENIs go unplanned.
                failure = classify(error)
                return planning.Unplanned(place, failure.code, failure.message)

        read = await asyncio.gather(*(one(p) for p in by_place))
    _require_somewhere(
        rules, by_place, [r.seen if isinstance(r, PlaceRead) else None for r in read]
    )
    return Live(list(rules), list(by_place), list(read), settings.region)


def plan_read(live: Live, pending: Iterable[planning.Pending] = ()) -> planning.Plan:
    """The places read planned: every place in turn against one load (a target shared by
    several accounts takes its sources once, over all of them), and the plans merged. A
    target known dead (`health`) takes no new session: its rule's live ones do, or none."""
    states = [r.live_state() for r in live.read if isinstance(r, PlaceRead)]
    plans = iter(planning.plan_places(states, pending))
    merged: list[tuple[Placement, planning.Plan]] = []
    for place, r in zip(live.places, live.read, strict=True):
        if isinstance(r, PlaceRead):
            plan = next(plans)
            plan.missing = r.missing
        else:
            plan = planning.Plan([], unplanned=[r])
        merged.append((place, plan))
        _log_planned(plan, place_at(place, live.fleet_region))
    return planning.Plan.merge(list(live.rules), merged)


def _log_planned(plan: planning.Plan, place: Place) -> None:
    """A line per rule planned in a place (DEBUG: a pass's summary line says it all at INFO)."""
    for rule in plan.rules:
        with log_context(rule=rule.name, account_id=place.account_id, region=place.region):
            log.debug(
                "rule %s planned in %s: %s", rule.name, place.describe(), plan.counts(rule.name)
            )


@dataclass(frozen=True)
class PlaceRead:
    """A place as read: what planning needs, the rules it cannot plan there (and why), and
    the ids of the rules' targets and filters that exist there."""

    state: planning.PlaceState
    missing: list[planning.Missing]
    seen: set[str]
    health: dict[str, Health] = field(default_factory=dict)  # read_live(health=True) only

    def live_state(self) -> planning.PlaceState:
        """The state as creates are planned: without the targets known dead, and knowing them
        (a session on one is no rule's mirror but its own rule's, which repair moves)."""
        dead = {t for t, h in self.health.items() if not h.live}
        if not dead:
            return self.state
        targets = {t: v for t, v in self.state.targets.items() if t not in dead}
        return replace(self.state, targets=targets, dead_targets=frozenset(dead))


async def _plan_place(
    inventory: Inventory,
    place: Placement,
    rules: list[Rule],
    pending: list[planning.Pending],
) -> tuple[planning.Plan, set[str]]:
    """The rules planned in one place alone, each with those of its targets and filters
    that exist there (the plan's rules are those, as planned), and the ids of those that
    do. A shared target's load here is this account's sessions only: `plan_live` plans
    several places against one load."""
    read = await _read_place(inventory, place, rules)
    plan = planning.plan_places([read.state], pending)[0]
    plan.missing = read.missing
    return plan, read.seen


@dataclass(frozen=True)
class PlaceRules:
    """A policy's rules as one place can plan them: each with those of its targets and its
    filter that exist there (`here`), or a Missing saying what it has none of; the place's
    targets as read; the ids of the rules' targets and filters that exist there."""

    here: list[Rule]
    missing: list[planning.Missing]
    targets: dict[str, planning.Target]
    seen: set[str]


async def rules_in_place(inventory: Inventory, place: Placement, rules: list[Rule]) -> PlaceRules:
    """The rules as `place` can plan them (reconcile's passes and the event intake alike):
    each rule's targets that exist there, and its filter there, the first of its ids that
    exists there, else the one filter its tag finds (looked for only where none of its ids
    exists; several are refused as ambiguous, naming them)."""
    targets = await inventory.targets((t for rule in rules for t in rule.targets), missing_ok=True)
    filters = await inventory.existing_filters(f for rule in rules for f in rule.filter_ids)
    tagged = await inventory.tagged_filters(
        rule.filter_tag
        for rule in rules
        if rule.filter_tag is not None and not filters.intersection(rule.filter_ids)
    )
    here: list[Rule] = []
    missing: list[planning.Missing] = []
    for rule in rules:
        found = tuple(t for t in rule.targets if t in targets)
        filter_id = next((f for f in rule.filter_ids if f in filters), None)
        matched = tagged.get(rule.filter_tag) if rule.filter_tag is not None else None
        if filter_id is None and matched is not None and len(matched) == 1:
            filter_id = matched[0]
        if not found:
            missing.append(planning.Missing(rule.name, place, "target", rule.targets))
        if filter_id is None:
            ambiguous = tuple(matched or ()) if len(matched or ()) > 1 else ()
            words = rule.filter_words()
            missing.append(planning.Missing(rule.name, place, "filter", words, ambiguous))
        if found and filter_id is not None:
            here.append(
                replace(
                    rule, targets=found, filter_id=filter_id, filter_choices=(), filter_tag=None
                )
            )
    return PlaceRules(here, missing, targets, set(targets) | filters)


async def _read_place(inventory: Inventory, place: Placement, rules: list[Rule]) -> PlaceRead:
    """One place read for its rules (`rules_in_place`), with its ENIs and sessions."""
    placed = await rules_in_place(inventory, place, rules)
    here = placed.here
    enis = await inventory.enis_for(here) if here else []
    sessions = await inventory.sessions() if here else []
    target_enis = await inventory.all_target_enis() if here else set()
    types = await inventory.instance_types(enis)
    state = planning.PlaceState(here, enis, sessions, placed.targets, target_enis, types)
    return PlaceRead(state, placed.missing, placed.seen)


def _require_somewhere(
    rules: Sequence[Rule], by_place: dict[Placement, list[Rule]], seen: list[set[str] | None]
) -> None:
    """A target or filter no place of its rule has is a mistake (a typo, a deleted sensor),
    refused as it is with one place, not planned around. A place not read (None) might have
    any of them: a rule planned in one is not judged."""
    for rule in rules:
        where = [s for p, s in zip(by_place, seen, strict=True) if rule in by_place[p]]
        if any(s is None for s in where):
            continue
        found = {i for s in where if s is not None for i in s}
        for kind, ids in (("target", rule.targets), ("filter", rule.filter_ids)):
            nowhere = [i for i in ids if i not in found]
            if nowhere:
                raise UnknownResourceError(kind, nowhere)


def pending_work(producer: Producer) -> tuple[list[planning.Pending], dict[str, str]]:
    """From one read of every pending job's record (O(pending)): the mirrors mirrorq's queued
    and running jobs will make, whoever submitted them (a pass, the listener, the API), and
    the sessions a pending modify points at another target (a dark session's repair under
    way), each with its job's id."""
    mirrors: list[planning.Pending] = []
    repairs: dict[str, str] = {}
    for record in producer.store.pending_records():
        found = planning.Pending.of(record)
        if found is not None:
            mirrors.append(found)
        request = record.get("request") or {}
        if (
            record.get("kind") == JobKind.MODIFY
            and request.get("TrafficMirrorTargetId")
            and not request.get("DryRun")
        ):
            repairs[str(request.get("TrafficMirrorSessionId"))] = str(record["job_id"])
    return mirrors, repairs


def submit_plan(
    producer: Producer,
    plan: planning.Plan,
    *,
    source: str,
    dry_run: bool = False,
    placement: Placement = NOWHERE,
) -> str:
    """The plan's jobs as one batch, whose record keeps the plan (a batch of none records a
    pass that found nothing to do), each run in the place its ENI was planned in (a plan
    of the fleet's own place: where `placement` says).
    Each job records the rule that made it and carries the rule's other targets, so racing
    planners that chose different targets still mirror an ENI once per rule."""
    jobs = planning.planned_jobs(plan, dry_run=dry_run)
    origins: list[dict[str, Any] | None] = [{"rule": j.rule} if j.rule else None for j in jobs]
    return producer.submit_batch(
        [parse_request(j.request) for j in jobs],
        source=source,
        plan=plan.summary(),
        origins=origins,
        alternatives=[j.alternatives for j in jobs],
        placements=[j.placement or placement for j in jobs],
    )


def submit_gaps(
    producer: Producer,
    plan: planning.Plan,
    *,
    source: str,
    dry_run: bool = False,
    repairs: Sequence[Repair] = (),
    others: Sequence[planning.SessionJob] = (),
    noted: dict[str, Any] | None = None,
) -> str | None:
    """The plan's jobs as one batch, each submitted only if it claims its gap: a gap whose
    claimed job is still queued or running (planned by another pass or reconcile process
    meanwhile) is counted `pending` in the plan instead. The batch keeps the plan's counts,
    not its ENIs, and what `noted` adds. None: no job to submit, and no batch stored. Each
    job runs in the place its ENI was planned in. `repairs` (mirrorq/dark.py) go in the same
    batch as modify jobs, and `others` (a prune's deletes: mirrorq/lifecycle.py) as theirs,
    each claimed per session the same way (another's job on the session is left to it)."""
    jobs = planning.planned_jobs(plan, dry_run=dry_run)
    moves = [r for r in repairs if r.to_target is not None]
    claims = producer.claim_gaps(
        [j.gap for j in jobs] + [r.gap for r in moves] + [o.gap for o in others]
    )
    job_claims = claims[: len(jobs)]
    move_claims = claims[len(jobs) : len(jobs) + len(moves)]
    other_claims = claims[len(jobs) + len(moves) :]
    plan.hold(
        {
            (j.rule, j.request["NetworkInterfaceId"]): c.holder
            for j, c in zip(jobs, job_claims, strict=True)
            if c.holder is not None
        }
    )
    taken = [(j, c.job_id) for j, c in zip(jobs, job_claims, strict=True) if c.holder is None]
    more = [
        (
            planning.SessionJob(
                JobKind.MODIFY, r.request(dry_run=dry_run), r.eni_id, r.rule, r.place
            ),
            c,
        )
        for r, c in zip(moves, move_claims, strict=True)
    ]
    more += list(zip(others, other_claims, strict=True))
    chosen = [(o, c.job_id) for o, c in more if c.holder is None]
    if not taken and not chosen:
        return None
    summary = plan.summary(skipped=False)
    if repairs:
        summary["repairs"] = repair_counts(repairs)
    requests: list[JobRequest] = [parse_request(j.request) for j, _ in taken]
    requests += [parse_request(o.request, o.kind) for o, _ in chosen]
    return producer.submit_batch(
        requests,
        source=source,
        plan={**summary, **(noted or {})},
        origins=[_origin(j.rule) for j, _ in taken] + [_origin(o.rule) for o, _ in chosen],
        alternatives=[j.alternatives for j, _ in taken] + [[] for _ in chosen],
        job_ids=[job_id for _, job_id in taken] + [job_id for _, job_id in chosen],
        placements=[j.placement for j, _ in taken] + [o.place for o, _ in chosen],
        network_interface_ids=[None for _ in taken] + [o.eni_id for o, _ in chosen],
    )


def _origin(rule: str | None) -> dict[str, str | None] | None:
    return {"rule": rule} if rule else None
