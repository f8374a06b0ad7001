"""Events into jobs, through the policy: what `mirrorq listen` and `POST /v1/events` share.

A batch of events is planned together (one read of their ENIs, their sessions and the rules'
targets), with the same planner as `reconcile`, under the rules in use when the batch begins (a
watched policy is looked at once per batch: policy_watch.py). Each job is submitted under an
idempotency key per event, ENI and rule, so an event delivered twice (EventBridge delivers at
least once, and a listener may die before it deletes a message) never makes a second job.

One event never holds back another: a batch that fails for a reason retrying cannot change is
handled again one event at a time, so only the event that fails is left unacknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from config import Settings
from mirrorq import planning
from mirrorq.bulk import Live, PlaceRead, plan_read, rules_in_place
from mirrorq.dark import plan_repairs, repair_counts
from mirrorq.events import Event
from mirrorq.inventory import Inventory
from mirrorq.planning import Target
from mirrorq.policy_watch import RulesSource, rules_now
from mirrorq.rules import Rule
from mirrorq.targets import Health, target_health
from tasks.contract import NOWHERE, JobKind, Placement, parse_request
from tasks.errors import IdempotencyConflictError, InvalidJobError
from tasks.producer import MAX_KEY_LENGTH, Producer
from worker.ec2 import Ec2Road
from worker.errors import STS_OPERATIONS, Action, classify
from worker.logs import log_context
from worker.roads import Roads, place_at

log = logging.getLogger(__name__)
TARGETS_FRESH_S = 60.0  # targets change rarely; their load is read with every batch
ORIGIN_ID_MAX = 256  # a job's recorded event id (tasks.contract.Envelope.event_id)


@dataclass
class Outcome:
    """What became of one event."""

    event_id: str
    job_ids: list[str] = field(default_factory=list)
    duplicates: int = 0  # jobs this event made before (a redelivery)
    ignored: str = ""  # why it made no job
    error: str = ""  # why it could not be handled (not acknowledged)

    @property
    def done(self) -> bool:
        """Acknowledge it: every job it asks for is accepted (or it asks for none)."""
        return not self.error


class Intake:
    def __init__(
        self, rules: RulesSource, settings: Settings, producer: Producer, roads: Roads | None
    ) -> None:
        self.rules = rules  # a policy's rules, or what gives the rules in use (a watched file)
        self.settings = settings
        self.producer = producer
        self.roads = roads  # a road per place (worker/roads.py planner_roads)
        self.counts: Counter[str] = Counter()
        # Per place: when read, for which targets and filters: the targets, every ENI that is
        # a target, and the filters that exist there.
        self._read: dict[Placement, _Read] = {}
        self._slots = asyncio.Semaphore(max(1, settings.client_cache))  # places read at once

    async def handle(self, events: Sequence[Event]) -> list[Outcome]:
        """What became of each event. Raises only what retrying may change (Redis or EC2 away)
        or, for one event alone, what it failed with (the API answers it); when the events
        are of several places, what one place fails with fails only its own events."""
        rules = list(rules_now(self.rules))  # one batch, one policy, however long it takes
        accounts = policy_accounts(rules)
        outcomes: list[Outcome] = []
        groups: dict[Placement, list[Event]] = {}
        for event in events:
            where = await self._place_of(accounts, event)
            if isinstance(where, Placement):
                groups.setdefault(where, []).append(event)
            else:
                outcomes.append(Outcome(event.event_id, ignored=where))
                self.counts["other_place"] += 1
        only = len(groups) == 1
        planned = await asyncio.gather(
            *(
                self._handle_place(_rules_at(rules, place), place, group, only=only)
                for place, group in groups.items()
            )
        )
        outcomes = _by_event(outcomes + [o for group in planned for o in group])
        for outcome in outcomes:
            self.counts["events"] += 1
            self.counts["jobs"] += len(outcome.job_ids)
            self.counts["duplicates"] += outcome.duplicates
            self.counts["ignored"] += bool(outcome.ignored)
            self.counts["unhandled"] += bool(outcome.error)
        return outcomes

    async def _place_of(
        self, accounts: dict[str, dict[str, Placement]], event: Event
    ) -> Placement | str:
        """Where the event's jobs run, or why it is ignored: its account and Region as the
        policy's [[accounts]] name them; the fleet's own place (NOWHERE) for a policy without
        any (the event's Region must be the fleet's), and for an event of the fleet's own
        account that no entry names."""
        fleet = self.settings.region
        if not accounts:
            return _fleet_region(
                event, fleet, f"region {event.region} (this listener serves {fleet})"
            )
        account = event.account
        if account is not None and account in accounts:
            regions = accounts[account]
            region = event.region or fleet
            if region in regions:
                return regions[region]
            named = ", ".join(regions)
            return f"region {region} of account {account} (its [[accounts]] entry names {named})"
        if account is not None and not await self._is_own(account):
            return f"account {account} (the policy's [[accounts]] do not name it)"
        why = f"region {event.region} of the fleet's own account (no [[accounts]] entry: "
        return _fleet_region(event, fleet, why + f"served in {fleet} only)")

    async def _is_own(self, account: str) -> bool:
        """The event is of the default credentials' account (STS's answer, which a 12-digit
        MIRRORQ_AWS_ACCOUNT_ID that disagrees does not override: worker/roads.py)."""
        if self.roads is not None:
            return account == await self.roads.default_account()
        return account == self.settings.aws_account_id

    async def _handle_place(
        self, rules: list[Rule], place: Placement, events: list[Event], *, only: bool
    ) -> list[Outcome]:
        region = place.region or self.settings.region
        with log_context(account_id=place.account_id, region=region):
            return await self._handle_place_here(rules, place, events, only=only)

    async def _handle_place_here(
        self, rules: list[Rule], place: Placement, events: list[Event], *, only: bool
    ) -> list[Outcome]:
        try:
            return await self._handle_together(place, rules, events)
        except Exception as error:
            if isinstance(error, ClientError) and error.operation_name in STS_OPERATIONS:
                if only and len(events) < 2:
                    raise  # POST /v1/events answers it
                failure = classify(error)
                why = (
                    f"{where(place)}: its role was not assumed: {failure.code} ({failure.message})"
                )
                log.warning("%d event(s) not handled: %s", len(events), why)
                return [Outcome(e.event_id, error=why) for e in events]
            if len(events) >= 2 and classify(error).action is Action.FAIL:
                log.exception("a batch of %d events failed; handling each alone", len(events))
                return [await self._handle_alone(place, rules, event) for event in events]
            if only:
                raise
            # Another place's events went on: only this one's come back.
            log.warning("%d event(s) of %s not handled: %r", len(events), where(place), error)
            return [Outcome(e.event_id, error=f"{type(error).__name__}: {error}") for e in events]

    async def _handle_alone(self, place: Placement, rules: list[Rule], event: Event) -> Outcome:
        try:
            (outcome,) = await self._handle_together(place, rules, [event])
        except Exception as error:
            return Outcome(event.event_id, error=f"{type(error).__name__}: {error}")
        return outcome

    async def _handle_together(
        self, place: Placement, rules: list[Rule], events: Sequence[Event]
    ) -> list[Outcome]:
        """One place's events (its road, its jobs' placement)."""
        outcomes = {e.event_id: Outcome(e.event_id) for e in events}
        wanting: list[Event] = []
        gone: list[Event] = []
        for event in events:
            outcome = outcomes[event.event_id]
            if event.ignored:
                outcome.ignored = event.ignored
            elif event.job is not None:
                await self._submit_job(place, event, outcome)
            elif event.wants_enis:
                wanting.append(event)
            elif event.gone:
                gone.append(event)
        if wanting or gone:
            assert self.roads is not None
            async with self._slots, self.roads.use(place_at(place, self.settings.region)) as road:
                # The rules' targets judged once a batch, as `reconcile` judges them: a dead
                # one takes no new session, and its sessions are what a repair moves.
                health = await self._health(road, place, rules)
                if wanting:
                    await self._mirror(Inventory(road), place, rules, wanting, outcomes, health)
                if gone:
                    await self._repair(road, place, rules, gone, outcomes, health)
        return list(outcomes.values())

    async def _health(
        self, road: Ec2Road, place: Placement, rules: list[Rule]
    ) -> dict[str, Health]:
        """The health of the place's rules' targets (mirrorq/targets.py, as `reconcile` reads
        it): one read a batch, whatever its number of events and ENIs."""
        _, targets, _ = await self._rules_here(Inventory(road), place, rules)
        if not targets:
            return {}
        assert self.roads is not None
        own = place.account_id or await self.roads.default_account()
        # Spared: a kind of target that cannot be read (its permission missing) is not
        # judged, and fails no event of a rule that does not use it.
        return await target_health(road, targets, own, spare=True)

    async def _repair(
        self,
        road: Ec2Road,
        place: Placement,
        rules: list[Rule],
        events: list[Event],
        outcomes: dict[str, Outcome],
        health: dict[str, Health],
    ) -> None:
        """Something went away (an instance left running, a target or ENI was deleted): the
        place's rules' targets read afresh (`health`, read once for the batch), and every
        managed session on a dead one moved to a live target of its rule, as `reconcile`
        does (mirrorq/dark.py), in one batch credited to the first of these events. Each move
        is claimed per session, so the same repair from a later event, or a pass, makes no
        second job while one is pending."""
        inventory = Inventory(road)
        here, targets, target_enis = await self._rules_here(inventory, place, rules)
        dead = sorted(t for t, h in health.items() if not h.live)
        sessions = await inventory.sessions_touching([], targets) if dead else []
        on_dead = [s for s in sessions if s["TrafficMirrorTargetId"] in dead]
        enis = await inventory.enis_named(eni_ids=[s["NetworkInterfaceId"] for s in on_dead])
        state = planning.PlaceState(here, enis, sessions, targets, target_enis)
        repairs = plan_repairs(Live(here, [place], [PlaceRead(state, [], set(), health)]))
        for repair in repairs:
            if repair.to_target is None:
                log.warning("%s", repair)
        moves = [r for r in repairs if r.to_target is not None]
        first = outcomes[events[0].event_id]
        for event in events:
            if not moves:
                outcomes[event.event_id].ignored = (
                    f"no managed session on a dead target in {where(place)}"
                    if not repairs
                    else f"{len(repairs)} dark session(s) in {where(place)}, none can move"
                )
        if not moves:
            return
        claims = await asyncio.to_thread(self.producer.claim_gaps, [r.gap for r in moves])
        taken = [(r, c.job_id) for r, c in zip(moves, claims, strict=True) if c.holder is None]
        first.duplicates += len(moves) - len(taken)  # another event's or pass's, still pending
        if not taken:
            return
        origin = origin_id(events[0].event_id)
        await asyncio.to_thread(
            self.producer.submit_batch,
            [parse_request(r.request(), JobKind.MODIFY) for r, _ in taken],
            source="mirrorq listen (dark sessions)",
            plan={"repairs": repair_counts(repairs)},
            origins=[{"rule": r.rule, "event_id": origin} for r, _ in taken],
            job_ids=[job_id for _, job_id in taken],
            placements=[place for _ in taken],
            network_interface_ids=[r.eni_id for r, _ in taken],
        )
        first.job_ids += [job_id for _, job_id in taken]
        for event in events[1:]:
            outcomes[event.event_id].ignored = f"repaired with event {first.event_id}'s jobs"
        self.counts["repairs"] += len(taken)

    async def _mirror(
        self,
        inventory: Inventory,
        place: Placement,
        rules: list[Rule],
        events: list[Event],
        outcomes: dict[str, Outcome],
        health: dict[str, Health],
    ) -> None:
        """The events' ENIs planned as `reconcile` plans them (bulk.py `plan_read`): a target
        `health` says is dead takes no new session; with none of a rule's targets live, the
        ENI is skipped as `no_target` (or `no_target_in_zone`), and its event says so."""
        rules, targets, target_enis = await self._rules_here(inventory, place, rules)
        if not rules:
            for event in events:
                outcomes[
                    event.event_id
                ].ignored = f"no rule has a target and a filter in {where(place)}"
            return
        enis = await inventory.enis_named(
            eni_ids=[e for ev in events for e in ev.eni_ids],
            instance_ids=[i for ev in events for i in ev.instance_ids],
        )
        sessions = await inventory.sessions_touching(
            [e["NetworkInterfaceId"] for e in enis], targets
        )
        named_by = _first_event_naming(events, enis)
        # Only the ENIs an event names exactly: EC2 reads `*` and `?` in a filter's values.
        enis = [e for e in enis if e["NetworkInterfaceId"] in named_by]
        types = await inventory.instance_types(enis)
        state = planning.PlaceState(rules, enis, sessions, targets, target_enis, types)
        read = PlaceRead(state, [], set(), health)
        plan = plan_read(Live(rules, [place], [read], self.settings.region))
        for job in planning.planned_jobs(plan):
            event_id = named_by[job.request["NetworkInterfaceId"]]
            with log_context(event_id=event_id, rule=job.rule):
                await self._submit(
                    job.request,
                    event_key(event_id, job.request["NetworkInterfaceId"], job.rule),
                    {"rule": job.rule, "event_id": origin_id(event_id)},
                    job.alternatives,
                    place,
                    outcomes[event_id],
                )
        for event in events:
            outcome = outcomes[event.event_id]
            if not outcome.job_ids and not outcome.duplicates and not outcome.ignored:
                outcome.ignored = "no ENI of it left to mirror (none matches a rule, or each is "
                outcome.ignored += "mirrored already, gone, or named by an earlier event)"
                skipped = Counter(
                    i.outcome.value for i in plan.items if named_by.get(i.eni_id) == event.event_id
                )
                if skipped:
                    outcome.ignored += ": " + ", ".join(
                        f"{k} {n}" for k, n in sorted(skipped.items())
                    )

    async def _submit_job(self, place: Placement, event: Event, outcome: Outcome) -> None:
        try:
            with log_context(event_id=event.event_id):
                await self._submit(
                    event.job,
                    event_key(event.event_id),
                    {"event_id": origin_id(event.event_id)},
                    [],
                    place,
                    outcome,
                )
        except InvalidJobError as error:
            outcome.error = f"its detail is not a valid job: {error}"

    async def _submit(
        self,
        request: object,
        key: str,
        origin: dict[str, str | None],
        alternatives: list[str],
        place: Placement,
        outcome: Outcome,
    ) -> None:
        try:
            accepted = await asyncio.to_thread(
                self.producer.accept,
                request,
                event_key=key,
                origin=origin,
                alternatives=alternatives,
                placement=place,
            )
        except IdempotencyConflictError:
            outcome.duplicates += 1  # made before, and planned differently now: the first stands
            log.debug("a job made before for this event stands (planned differently now)")
            return
        if accepted.new:
            outcome.job_ids.append(accepted.job_id)
        else:
            outcome.duplicates += 1
        # `job_id` a field of the line: the job's own lines (a worker's) carry the event's id.
        what = "accepted" if accepted.new else "accepted before (a redelivery)"
        log.debug("job %s %s", accepted.job_id, what, extra={"job_id": accepted.job_id})

    async def _rules_here(
        self, inventory: Inventory, place: Placement, rules: list[Rule]
    ) -> tuple[list[Rule], dict[str, Target], set[str]]:
        """The rules as planned in this place (bulk.py `rules_in_place`, as `reconcile` plans
        them: each with those of its targets that exist there and its filter there, by id or
        by tag), its targets and every ENI that is a target there; read again when stale, or
        at once when a reloaded policy names other targets or filters. A rule with no target
        or no filter in the place is left out, and said once a read (a listener is a
        service: one stale rule must not stop every event)."""
        wanted = tuple((r.name, r.targets, r.filter_ids, r.filter_tag) for r in rules)
        now, read = time.monotonic(), self._read.get(place)
        if read is None or now - read.at > TARGETS_FRESH_S or read.wanted != wanted:
            placed = await rules_in_place(inventory, place, rules)
            for missing in placed.missing:  # said once a read: targets and filters are Regional
                with log_context(rule=missing.rule):
                    log.warning("%s", missing)
            read = _Read(
                now, wanted, placed.here, placed.targets, await inventory.all_target_enis()
            )
            self._read[place] = read
        return read.here, read.targets, read.target_enis


@dataclass(frozen=True)
class _Read:
    at: float
    wanted: tuple[tuple[object, ...], ...]
    here: list[Rule]
    targets: dict[str, Target]
    target_enis: set[str]


def _fleet_region(event: Event, fleet: str, why: str) -> Placement | str:
    """The fleet's own place for an event of its Region (or of none said), else `why`."""
    return NOWHERE if event.region is None or event.region == fleet else why


def policy_accounts(rules: Sequence[Rule]) -> dict[str, dict[str, Placement]]:
    """The places of a policy's [[accounts]], by account and Region (none: no [[accounts]])."""
    accounts: dict[str, dict[str, Placement]] = {}
    for rule in rules:
        for place in rule.places:
            if place.account_id is not None and place.region is not None:
                accounts.setdefault(place.account_id, {})[place.region] = place
    return accounts


def _rules_at(rules: list[Rule], place: Placement) -> list[Rule]:
    """The rules that apply in a place: those whose places hold it; at the fleet's own place,
    every rule (as before [[accounts]])."""
    if place == NOWHERE:
        return rules
    return [rule for rule in rules if place in rule.places]


def where(place: Placement) -> str:
    """A place as the messages name it."""
    if place == NOWHERE:
        return "the fleet's own account and Region"
    return f"account {place.account_id}, {place.region}"


def _by_event(outcomes: list[Outcome]) -> list[Outcome]:
    """One outcome per event id, as a batch has (messages that share an id share it)."""
    merged: dict[str, Outcome] = {}
    for outcome in outcomes:
        first = merged.setdefault(outcome.event_id, outcome)
        if first is not outcome:
            first.job_ids += outcome.job_ids
            first.duplicates += outcome.duplicates
            first.error = first.error or outcome.error
    return list(merged.values())


def event_key(event_id: str, *parts: str) -> str:
    """The idempotency key of an event's job: its id, then its ENI and rule. An id too long for
    a key (EventBridge's are 36-character UUIDs, but whoever can send to the queue picks their
    own) stands as `sha256:` and its digest: still one key per event, ENI and rule, and the
    same at every redelivery. Keys that fit are the id itself, as they always were."""
    key = ":".join((event_id, *parts))
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return ":".join((_digest(event_id), *parts))


def origin_id(event_id: str) -> str:
    """The event id a job records (as `sha256:` and its digest when it is too long to)."""
    return event_id if len(event_id) <= ORIGIN_ID_MAX else _digest(event_id)


def _digest(event_id: str) -> str:
    return "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def _first_event_naming(events: list[Event], enis: list[dict[str, Any]]) -> dict[str, str]:
    """Each ENI found, and the first event of the batch that named it (by id or instance)."""
    named: dict[str, str] = {}
    for event in events:
        for eni in enis:
            instance = (eni.get("Attachment") or {}).get("InstanceId")
            if eni["NetworkInterfaceId"] in event.eni_ids or instance in event.instance_ids:
                named.setdefault(eni["NetworkInterfaceId"], event.event_id)
    return named
