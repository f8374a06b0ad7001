"""The producer API: accept jobs (validate, fix their ClientToken, record, enqueue), read results.

A job is accepted when its `queued` record and its pending entry are written (with its
idempotency claim, if it has a key, in the same atomic step) and its message is queued. If
the message cannot be queued, the acceptance is undone and the caller gets the error. The
written acceptance (a job's, or a whole batch's) is confirmed before anything is published,
one way for both, as the settings say (tasks/replication.py `Confirmation`: with
MIRRORQ_REDIS_MIN_REPLICAS it must reach that many replicas; with Sentinel and none required,
the primary that survives a failover); unconfirmed, it is undone and the caller gets
NotReplicatedError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from redis.exceptions import RedisError

from config import Settings, get_settings
from tasks import contract, keys
from tasks.batches import messages_of, place_of_record
from tasks.connections import sync_client
from tasks.contract import (
    ADMIT_AT,
    ADMIT_EPOCH,
    BATCH_TASK_NAME,
    DEFAULT_ACCOUNT,
    NOWHERE,
    JobKind,
    JobRequest,
    Placement,
    ec2_regions,
    fleet_scope,
    parse_kind,
    parse_network_interface_id,
    parse_placement,
    parse_request,
)
from tasks.errors import IdempotencyConflictError, InvalidJobError
from tasks.records import (
    JobResult,
    accepted,
    accepted_request,
    eni_of,
    is_terminal,
    kind_of,
    placement_of,
    queue_of,
    utcnow,
)
from tasks.store import ResultStore

log = logging.getLogger(__name__)
Origin = dict[str, str | None]  # {"rule": ..., "event_id": ...}: what made a job
MAX_KEY_LENGTH = 256


@dataclass(frozen=True)
class Acceptance:
    job_id: str
    new: bool  # False: the idempotency key named this job already


@dataclass(frozen=True)
class GapClaim:
    job_id: str  # the id to submit the gap's job under, if the claim was taken
    holder: str | None  # else the pending job that holds the gap (it makes the mirror)


class Producer:
    """Submits jobs to the queue and reads their results; cheap to create, thread-safe.

    Jobs are accepted by the producer's fleet (MIRRORQ_AWS_ACCOUNT_ID, MIRRORQ_REGION), to run
    in that account and Region unless they name their own (`region`, `role_arn`,
    `external_id`); each job's message goes to the queue its record names."""

    def __init__(self, app: Celery | None = None, settings: Settings | None = None) -> None:
        if app is None:
            from tasks.app import app as default_app

            app = default_app
        self.app = app
        self.settings = settings or get_settings()
        self.scope = fleet_scope(self.settings)
        self.store = ResultStore(app, self.settings)
        self.redis = sync_client(self.settings.broker_url, self.settings)

    # Accepting jobs --------------------------------------------------------------------------

    def submit(self, request: Any, **options: Any) -> str:
        """Validate and enqueue one job; return its id (the options are `accept`'s)."""
        return self.accept(request, **options).job_id

    def accept(
        self,
        request: Any,
        *,
        idempotency_key: str | None = None,
        event_key: str | None = None,
        origin: Origin | None = None,
        alternatives: Iterable[str] = (),
        region: str | None = None,
        role_arn: str | None = None,
        external_id: str | None = None,
        placement: Placement | None = None,
        kind: JobKind | str = JobKind.CREATE,
        network_interface_id: str | None = None,
    ) -> Acceptance:
        """Validate and enqueue one job of `kind` (its request that action's syntax): its id,
        and whether it is new or its key named it already. The key is a client's
        `idempotency_key`, or the `event_key` of an event's job (a namespace of its own),
        scoped to the job's account and Region. Where the job runs is `placement`, or
        `region`, `role_arn`, `external_id` (checked here). A delete's or a modify's
        `network_interface_id` is its session's source ENI (for the ENI's lease; the worker
        reads the session for it when none is named). Raises InvalidJobError naming fields,
        IdempotencyConflictError if the key was used for another request."""
        given: Placement | dict[str, Any] = (
            {"region": region, "role_arn": role_arn, "external_id": external_id}
            if placement is None
            else placement
        )
        kind, kwargs, network_interface_id, placement = _validated(
            request, kind, network_interface_id, given
        )
        job_id = str(uuid.uuid4())
        claim = None
        key = _claim_key(idempotency_key, event_key, self._claim_scope(placement))
        if key is not None:
            signed: Any = kwargs
            if placement.role_arn:  # the key names the request and the role it runs through
                role = placement.model_dump(include={"role_arn", "external_id"}, exclude_none=True)
                signed = {"request": kwargs, **role}
            if kind is not JobKind.CREATE:  # and what it does (a create's signs as it did)
                signed = {"kind": kind.value, "request": signed}
            digest = hashlib.sha256(json.dumps(signed, sort_keys=True).encode()).hexdigest()
            claim = (key, json.dumps({"job_id": job_id, "request_sha256": digest}))
        if kind is JobKind.CREATE:
            kwargs.setdefault("ClientToken", job_id)
        record = accepted(
            job_id,
            kwargs,
            submitted_at=utcnow(),
            origin=origin,
            alternatives=list(alternatives),
            scope=self.scope,
            placement=placement,
            kind=kind,
            network_interface_id=network_interface_id,
        )
        earlier = self.store.accept(record, claim)
        if earlier is not None:
            named = idempotency_key or event_key or ""
            return Acceptance(_same_request(named, earlier, claim), new=False)
        try:
            self._publish(record)
        except Exception:
            self._unaccept(record, claim)
            raise
        return Acceptance(job_id, new=True)

    def submit_batch(
        self,
        requests: Sequence[JobRequest],
        *,
        source: str | None = None,
        plan: dict[str, Any] | None = None,
        origins: list[Origin | None] | None = None,
        alternatives: list[list[str]] | None = None,
        job_ids: list[str] | None = None,
        placements: list[Placement] | None = None,
        network_interface_ids: Sequence[str | None] | None = None,
    ) -> str:
        """Enqueue validated jobs as one batch; return the batch id at once. Each job's kind
        is its request's (`parse_request(raw, kind)`: creates, deletes and modifies mix
        freely); `network_interface_ids` the source ENIs of its deletes' and modifies'
        sessions where known (validated: parse_network_interface_id; None for a create).
        `job_ids` are the jobs' ids if they were chosen already (claimed gaps), else new
        ones; `placements` where each runs (validated: parse_placement), else the fleet's
        account and Region.

        Records and the batch's counts are written in one pipeline, then the messages are
        published through one pipelined producer: a few round trips for thousands of jobs.
        Should publishing fail part way, the batch stands (its records are written) and the
        workers' lost-message repair publishes what is missing.
        """
        batch_id = str(uuid.uuid4())
        submitted_at = utcnow()
        jobs: list[JobResult] = []
        for n, parsed in enumerate(requests):
            job_id = job_ids[n] if job_ids else str(uuid.uuid4())
            kwargs = parsed.to_kwargs()
            if parsed.kind is JobKind.CREATE:
                kwargs.setdefault("ClientToken", job_id)
            record = accepted(
                job_id,
                kwargs,
                batch_id=batch_id,
                submitted_at=submitted_at,
                origin=origins[n] if origins else None,
                alternatives=alternatives[n] if alternatives else (),
                scope=self.scope,
                placement=placements[n] if placements else NOWHERE,
                kind=parsed.kind,
                network_interface_id=(  # a create's is in its request
                    network_interface_ids[n]
                    if network_interface_ids and parsed.kind is not JobKind.CREATE
                    else None
                ),
            )
            jobs.append(record)

        def write(pipe: Any) -> None:
            self.store.accept_on(pipe, jobs)
            self.store.batches.create(
                pipe,
                batch_id,
                [r["job_id"] for r in jobs],
                submitted_at,
                source,
                plan,
                places=[place_of_record(r) for r in jobs],
            )

        # Confirmed as the settings say, else undone before anything is published
        # (tasks/replication.py).
        self.store.confirmation.write(
            self.store.client,
            write,
            lambda _: self.store.unaccept_batch(batch_id, jobs),
            f"batch {batch_id}'s acceptance",
        )
        with self.app.producer_or_acquire() as producer, producer.batch():
            declared: set[str] = set()
            for message in messages_of(jobs, self.settings.jobs_per_message):
                queue = queue_of(message[0])
                first = queue not in declared
                declared.add(queue)
                self._publish_jobs(message, producer=producer, declare=None if first else [])
        return batch_id

    def claim_gaps(self, gaps: list[str]) -> list[GapClaim]:
        """Claim each gap (a key naming an ENI and the mirror it lacks) for a new job, unless
        a job claimed for it is still pending. Submit the taken ones with `submit_batch(...,
        job_ids=...)`; one never submitted (the process died) frees its gap once the
        lost-message repair finds it has no record."""
        job_ids = [str(uuid.uuid4()) for _ in gaps]
        held = self.store.claim_gaps(
            [(keys.gap_claim(gap), job_id) for gap, job_id in zip(gaps, job_ids, strict=True)]
        )
        return [GapClaim(j, h) for j, h in zip(job_ids, held, strict=True)]

    def publish(self, record: JobResult) -> None:
        """Publish an accepted job's message again (the lost-message repair, a job passed on by
        a worker of another scope): same id, token and envelope, the request as accepted
        (SessionNumber `auto` included), to the queue of the scope it was accepted for."""
        self._publish(record)

    def defer(
        self,
        records: list[JobResult],
        *,
        admit_at: float,
        epoch: int,
        countdown: float,
        expires: datetime | None = None,
    ) -> None:
        """Publish accepted jobs of one queue and place again as one message that a worker
        runs `countdown` seconds from now: their bucket's turn for them is at `admit_at`,
        given in the bucket's `epoch` (worker/admission.py), both of which the message
        carries, and it expires when the delivery it replaces would have (`expires`)."""
        entries = [{"job_id": r["job_id"], **_envelope(r, self.scope.region)} for r in records]
        self._send(
            BATCH_TASK_NAME,
            {"jobs": entries, ADMIT_AT: admit_at, ADMIT_EPOCH: epoch},
            f"{{{len(records)} jobs waiting for their turn}}",
            queue=queue_of(records[0]),
            countdown=countdown,
            expires=expires,
        )

    def _claim_scope(self, placement: Placement) -> tuple[str, str] | None:
        """The (account, Region) a job's claim is scoped to: None (the key it always had) for
        a job in the fleet's own account and Region."""
        account = placement.account_id or self.scope.account_id
        region = placement.region or self.scope.region
        if (account, region) == (self.scope.account_id, self.scope.region):
            return None
        return (account or DEFAULT_ACCOUNT, region)

    def _unaccept(self, record: JobResult, claim: tuple[str, str] | None) -> None:
        try:
            self.store.unaccept(record, claim)
        except RedisError:
            # The job stays accepted; the workers' repair will publish its message.
            log.warning("job %s: could not undo its acceptance; it will run", record["job_id"])

    # Messages --------------------------------------------------------------------------------

    def _publish(self, record: JobResult, **options: Any) -> None:
        """A job alone, to its kind's single-job task (the one other services send to)."""
        kind = kind_of(record)
        request = record["request"] or {}
        on = request.get("TrafficMirrorSessionId") or eni_of(record)
        self._send(
            kind.task_name,
            _envelope(record, self.scope.region),
            f"{{{kind} job {record['job_id']} on {on}}}",
            queue=queue_of(record),
            task_id=record["job_id"],
            **options,
        )

    def _publish_jobs(self, jobs: list[JobResult], **options: Any) -> None:
        """Several jobs of a batch in one message; one alone goes in the single-job form. The
        jobs share one queue and place (tasks/batches.py `messages_of`)."""
        if len(jobs) == 1:
            self._publish(jobs[0], **options)
            return
        entries = [{"job_id": r["job_id"], **_envelope(r, self.scope.region)} for r in jobs]
        self._send(
            BATCH_TASK_NAME,
            {"jobs": entries},
            f"{{{len(jobs)} jobs of batch {jobs[0]['batch_id']}}}",
            queue=queue_of(jobs[0]),
            **options,
        )

    def _send(self, name: str, kwargs: dict[str, Any], summary: str, **options: Any) -> None:
        """Send one message; `options` are send_task's, `queue` among them."""
        self.app.send_task(
            name,
            kwargs=kwargs,
            ignore_result=True,  # the task writes its own records (tasks/store.py)
            # What Celery shows in logs and monitors, instead of the whole request.
            argsrepr="()",
            kwargsrepr=summary,
            **options,
        )

    # Reading results -------------------------------------------------------------------------

    def batch_status(self, batch_id: str) -> dict[str, Any] | None:
        return self.store.batches.status(batch_id)

    def batch_results(self, batch_id: str) -> Iterator[JobResult]:
        """Every job's record in submission order (jobs whose record expired are skipped)."""
        for chunk in self.store.batches.job_ids(batch_id):
            yield from (r for r in self.store.load_many(chunk) if r is not None)

    def wait_batch(
        self, batch_id: str, timeout: float = 300.0, poll: float = 0.5
    ) -> dict[str, Any] | None:
        """The batch's status once it ended, or as it stands after `timeout` (None: unknown)."""
        deadline = time.monotonic() + timeout
        while (status := self.batch_status(batch_id)) is not None and not status["finished_at"]:
            if time.monotonic() > deadline:
                break
            time.sleep(poll)
        return status

    def result(self, job_id: str) -> JobResult | None:
        return self.store.load(job_id)

    def wait(self, job_id: str, timeout: float = 300.0, poll: float = 0.2) -> JobResult:
        """Block until the job is terminal; raise TimeoutError with its last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.result(job_id)
            if record is not None and is_terminal(record):
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout}s: {record}")
            time.sleep(poll)


def _validated(
    request: Any,
    kind: JobKind | str,
    network_interface_id: str | None,
    placement: Placement | dict[str, Any],
) -> tuple[JobKind, dict[str, Any], str | None, Placement]:
    """A job's kind, request (as keyword arguments), source ENI and placement (a Placement
    as given, or its fields to check), or InvalidJobError naming every bad field."""
    errors = []
    kwargs: dict[str, Any] = {}
    try:
        kind = parse_kind(kind)
    except InvalidJobError as error:
        errors += error.errors
    else:
        try:
            kwargs = parse_request(request, kind).to_kwargs()
        except InvalidJobError as error:
            errors += error.errors
        try:
            network_interface_id = parse_network_interface_id(network_interface_id, kind)
        except InvalidJobError as error:
            errors += error.errors
    if not isinstance(placement, Placement):
        try:
            placement = parse_placement(**placement)
        except InvalidJobError as error:
            errors += error.errors
    if errors or not isinstance(kind, JobKind) or not isinstance(placement, Placement):
        raise InvalidJobError(errors)
    return kind, kwargs, network_interface_id, placement


def _envelope(record: JobResult, fleet_region: str) -> dict[str, Any]:
    """A job's message as it was accepted (the record keeps what the request alone does not)."""
    envelope: dict[str, Any] = {
        "request": accepted_request(record),
        "batch_id": record["batch_id"],
        "submitted_at": record["submitted_at"],
    }
    kind = kind_of(record)
    if kind is not JobKind.CREATE:  # a create's message stays as every create's was
        envelope["kind"] = kind.value
        if record.get("network_interface_id"):
            envelope["network_interface_id"] = record.get("network_interface_id")
    for name in ("rule", "event_id"):
        if record.get(name):
            envelope[name] = record.get(name)
    # Where it runs, whole: any worker of the queue runs it, wherever that worker is (it
    # assumes a job's role; its own credentials serve every Region), so a job names its Region
    # even when that is the publishing fleet's, unless that is no Region EC2 has (a lab's).
    placement = placement_of(record)
    if placement.role_arn or placement.region != fleet_region or fleet_region in ec2_regions("aws"):
        envelope.update(placement.model_dump(exclude_none=True))
    if record.get("alternatives"):
        envelope["alternatives"] = record.get("alternatives")
    return envelope


def _claim_key(
    idempotency_key: str | None, event_key: str | None, where: tuple[str, str] | None = None
) -> str | None:
    """The Redis key of a job's claim, if it has one, in the job's (account, Region) `where`
    (None: the fleet's own); a key that names nothing is refused."""
    if idempotency_key is not None and event_key is not None:
        raise ValueError("a job has an idempotency_key or an event_key, not both")
    if idempotency_key is not None:
        idempotency_key = contract.idempotency_key(idempotency_key)  # the rule of every door
    for field, key, namespace in (
        ("idempotency_key", idempotency_key, keys.idempotency),
        ("event_key", event_key, keys.event_claim),
    ):
        if key is None:
            continue
        if not key.strip() or len(key) > MAX_KEY_LENGTH:
            raise InvalidJobError(
                [{"field": field, "message": f"1 to {MAX_KEY_LENGTH} characters, not blank"}]
            )
        return namespace(key, where)
    return None


def _same_request(key: str, earlier: str, claim: tuple[str, str] | None) -> str:
    """The job an idempotency key already names, if it was claimed for the same request."""
    first = json.loads(earlier)
    ours = json.loads(claim[1]) if claim else first
    if first["request_sha256"] != ours["request_sha256"]:
        raise IdempotencyConflictError(
            f"idempotency key {key!r} was used for job {first['job_id']} with a different request"
        )
    return str(first["job_id"])


_producer: Producer | None = None


def _default() -> Producer:
    global _producer  # noqa: PLW0603 - a module-level convenience over one Producer
    if _producer is None:
        _producer = Producer()
    return _producer


def submit(
    request: Any,
    *,
    idempotency_key: str | None = None,
    region: str | None = None,
    role_arn: str | None = None,
    external_id: str | None = None,
    kind: JobKind | str = JobKind.CREATE,
    network_interface_id: str | None = None,
) -> str:
    """Enqueue one job of `kind` (its action's request syntax as a dict or JSON text), in
    `region` through `role_arn` if given; return its job id."""
    return _default().submit(
        request,
        idempotency_key=idempotency_key,
        region=region,
        role_arn=role_arn,
        external_id=external_id,
        kind=kind,
        network_interface_id=network_interface_id,
    )


def result(job_id: str) -> JobResult | None:
    """The job's result record, or None if the id is unknown."""
    return _default().result(job_id)
