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

from config import Settings
from mirrorq import planning
from mirrorq.events import Event
from mirrorq.inventory import Inventory
from mirrorq.planning import Target
from mirrorq.policy_watch import RulesSource, rules_now
from mirrorq.rules import Rule
from tasks.errors import IdempotencyConflictError, InvalidJobError
from tasks.producer import MAX_KEY_LENGTH, Producer
from worker.errors import Action, classify

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
        self, rules: RulesSource, settings: Settings, producer: Producer, inventory: Inventory
    ) -> None:
        self.rules = rules  # a policy's rules, or what gives the rules in use (a watched file)
        self.settings = settings
        self.producer = producer
        self.inventory = inventory
        self.counts: Counter[str] = Counter()
        # When read, for which targets: the targets, and every ENI that is a target.
        self._targets: tuple[float, frozenset[str], dict[str, Target], set[str]] | None = None

    async def handle(self, events: Sequence[Event]) -> list[Outcome]:
        """What became of each event. Raises only what retrying may change (Redis or EC2 away)
        or, for one event alone, what it failed with (the API answers it)."""
        rules = list(rules_now(self.rules))  # one batch, one policy, however long it takes
        try:
            outcomes = await self._handle_together(rules, events)
        except Exception as error:
            if len(events) < 2 or classify(error).action is not Action.FAIL:
                raise
            log.exception("a batch of %d events failed; handling each alone", len(events))
            outcomes = _by_event([await self._handle_alone(rules, event) for event in events])
        for outcome in outcomes:
            self.counts["events"] += 1
            self.counts["jobs"] += len(outcome.job_ids)
            self.counts["duplicates"] += outcome.duplicates
            self.counts["ignored"] += bool(outcome.ignored)
            self.counts["unhandled"] += bool(outcome.error)
        return outcomes

    async def _handle_alone(self, rules: list[Rule], event: Event) -> Outcome:
        try:
            (outcome,) = await self._handle_together(rules, [event])
        except Exception as error:
            return Outcome(event.event_id, error=f"{type(error).__name__}: {error}")
        return outcome

    async def _handle_together(self, rules: list[Rule], events: Sequence[Event]) -> list[Outcome]:
        outcomes = {e.event_id: Outcome(e.event_id) for e in events}
        wanting: list[Event] = []
        for event in events:
            outcome = outcomes[event.event_id]
            if event.region is not None and event.region != self.settings.region:
                outcome.ignored = (
                    f"region {event.region} (this listener serves {self.settings.region})"
                )
            elif event.ignored:
                outcome.ignored = event.ignored
            elif event.job is not None:
                await self._submit_job(event, outcome)
            elif event.wants_enis:
                wanting.append(event)
        if wanting:
            await self._mirror(rules, wanting, outcomes)
        return list(outcomes.values())

    async def _mirror(
        self, rules: list[Rule], events: list[Event], outcomes: dict[str, Outcome]
    ) -> None:
        enis = await self.inventory.enis_named(
            eni_ids=[e for ev in events for e in ev.eni_ids],
            instance_ids=[i for ev in events for i in ev.instance_ids],
        )
        targets, target_enis = await self._targets_now(rules)
        sessions = await self.inventory.sessions_touching(
            [e["NetworkInterfaceId"] for e in enis], targets
        )
        named_by = _first_event_naming(events, enis)
        # Only the ENIs an event names exactly: EC2 reads `*` and `?` in a filter's values.
        enis = [e for e in enis if e["NetworkInterfaceId"] in named_by]
        plan = planning.plan(rules, enis, sessions, targets, target_enis)
        for job in planning.planned_jobs(plan):
            event_id = named_by[job.request["NetworkInterfaceId"]]
            await self._submit(
                job.request,
                event_key(event_id, job.request["NetworkInterfaceId"], job.rule),
                {"rule": job.rule, "event_id": origin_id(event_id)},
                job.alternatives,
                outcomes[event_id],
            )
        for event in events:
            outcome = outcomes[event.event_id]
            if not outcome.job_ids and not outcome.duplicates and not outcome.ignored:
                outcome.ignored = "no ENI of it left to mirror (none matches a rule, or each is "
                outcome.ignored += "mirrored already, gone, or named by an earlier event)"

    async def _submit_job(self, event: Event, outcome: Outcome) -> None:
        try:
            await self._submit(
                event.job,
                event_key(event.event_id),
                {"event_id": origin_id(event.event_id)},
                [],
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
        outcome: Outcome,
    ) -> None:
        try:
            accepted = await asyncio.to_thread(
                self.producer.accept,
                request,
                event_key=key,
                origin=origin,
                alternatives=alternatives,
            )
        except IdempotencyConflictError:
            outcome.duplicates += 1  # made before, and planned differently now: the first stands
            return
        if accepted.new:
            outcome.job_ids.append(accepted.job_id)
        else:
            outcome.duplicates += 1

    async def _targets_now(self, rules: list[Rule]) -> tuple[dict[str, Target], set[str]]:
        now, wanted = time.monotonic(), frozenset(t for r in rules for t in r.targets)
        cached = self._targets
        if cached is None or now - cached[0] > TARGETS_FRESH_S or cached[1] != wanted:
            # Read again when stale, or at once when a reloaded policy names other targets.
            # A rule whose targets are gone makes nothing; the others go on (a listener is a
            # service: one stale rule must not stop every event).
            targets = await self.inventory.targets(wanted, missing_ok=True)
            if missing := sorted(wanted - set(targets)):
                log.warning("policy names targets that do not exist: %s", ", ".join(missing))
            target_enis = await self.inventory.all_target_enis()
            self._targets = cached = (now, wanted, targets, target_enis)
        return cached[2], cached[3]


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
