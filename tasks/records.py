"""A job's record: its statuses, its shape, and the only functions that change it.

A record moves `queued` → `running` (→ `retrying` → `running`)* → its kind's success
(`created`, `deleted`, `modified`) | `failed` | `dry_run_ok`. Each step is a small pure
function here that returns the next record; the result store (tasks/store.py) writes what
they return, and nothing else edits a record.

The rules of its writes are here too, as data: the terminal statuses, which no write ever
leaves (the scripts that write records are handed them: tasks/scripts.py), and the verdicts
a worker's step comes back with (`StepVerdict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NotRequired

# pydantic (the API's schema of the record) reads TypedDicts only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from tasks.contract import AUTO, NOWHERE, QUEUE, JobKind, Placement, Scope


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    CREATED = "created"
    DELETED = "deleted"  # a delete's session is gone (deleted by this job, or gone already)
    MODIFIED = "modified"
    FAILED = "failed"
    DRY_RUN_OK = "dry_run_ok"


# Each kind's success: the status its job ends in when EC2 did what it asked.
SUCCESS_OF = {
    JobKind.CREATE: JobStatus.CREATED,
    JobKind.DELETE: JobStatus.DELETED,
    JobKind.MODIFY: JobStatus.MODIFIED,
}


# A record's one rule of succession: a job in a terminal status has finished, and its record
# is never written again (a late or duplicate delivery, a copy cut off from Redis, cannot undo
# its outcome). Any other status may be followed by any: `running` and `retrying` alternate,
# and a redelivered job starts `running` again from where its record stands. There is no
# further precedence among statuses. The scripts that write records are handed this set
# (tasks/scripts.py `terminal`), and apply it to the status of the record they find stored;
# a batch's counts move by it too (a job counts done once, when it first reaches one).
TERMINAL_STATUSES = frozenset({*SUCCESS_OF.values(), JobStatus.FAILED, JobStatus.DRY_RUN_OK})
# The order statuses are shown in (tables, progress lines, metrics).
STATUS_ORDER = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.RETRYING,
    JobStatus.CREATED,
    JobStatus.DELETED,
    JobStatus.MODIFIED,
    JobStatus.DRY_RUN_OK,
    JobStatus.FAILED,
)


def may_write(stored: JobStatus | None) -> bool:
    """Whether a step may write over a record in status `stored` (None: no record yet): the
    rule above, as the step script applies it (tasks/scripts.py STEP, verdict `done`)."""
    return stored not in TERMINAL_STATUSES


class StepVerdict(StrEnum):
    """What one step of a job (tasks/store.py `ResultStore.step`: the STEP script) found, and so
    what it did. `start` is a worker taking a job up; `save` and `finish` write its progress and
    its outcome. With the verdicts marked (+) comes the record found stored."""

    # Another worker holds the job's run lease (a copy of the job is running): nothing
    # written. A starting worker waits for it; a saving one has lost the job to it.
    BUSY = "busy"
    # (+) The job has finished (its stored status is terminal): nothing written; this step's
    # lease, if it held one, is released and the job leaves the pending index.
    DONE = "done"
    # (+ if there is one) `start` only: this worker cannot act where the job runs, by the
    # stored record (else the one the step would write): a job runs on any worker reading the
    # queue that carries it, and one without a role only in that worker's own account.
    # Records written before queues must match the worker's account and Region; a record
    # with no Region runs anywhere. Nothing written.
    ELSEWHERE = "elsewhere"
    # `start` only: the job names a batch that did not register it (a stranger naming the
    # batch). Nothing written, and no key made.
    NOT_IN_BATCH = "not-in-batch"
    # (+) `start` only: the job ran before (its stored status is not `queued`: a
    # redelivery). The run lease is taken and nothing else written: the worker carries on
    # from the stored record.
    RESUME = "resume"
    # The record was written, with the fleet's counters, its batch's counts, its run lease
    # (taken on `start` and `save`, released on `finish`) and the pending index (left on
    # `finish`).
    STORED = "stored"


class JobError(TypedDict):
    code: str  # EC2's error code, or mirrorq's own (InvalidJob, AlreadyMirrored, ...)
    message: str
    retryable: bool  # on a failed job: its deadline ran out on a transient error


class JobResult(TypedDict):
    """What `mirrorq status` prints and the result backend holds for every job."""

    job_id: str
    batch_id: str | None
    # Where the job runs, fixed when it is accepted: the account (the role's, read from its
    # ARN; else the accepting fleet's MIRRORQ_AWS_ACCOUNT_ID, None when unset) and the Region
    # (the job's, else the fleet's MIRRORQ_REGION). Records written before scopes have neither.
    account_id: NotRequired[str | None]
    region: NotRequired[str | None]
    # The role the job runs through (None: the fleet's own credentials) and its ExternalId
    # (not a secret, but kept out of logs). Records written before placements have neither.
    role_arn: NotRequired[str | None]
    external_id: NotRequired[str | None]
    # The queue that carries the job's messages: the accepting fleet's for a job with a role
    # (any of its workers can assume it), else that of the fleet acting in the job's account
    # and Region with its own credentials. Records written before placements have none.
    queue: NotRequired[str]
    # What the job does (tasks/contract.py JobKind); a record without one is a create's.
    kind: NotRequired[JobKind]
    # A delete's or a modify's session source, as its sender named it or the worker read it
    # (the ENI whose lease the job takes); a create's is in its request.
    network_interface_id: NotRequired[str | None]
    status: JobStatus
    attempts: int  # calls of the kind's action made, across retries and redeliveries
    client_token: str | None  # a create's; None for a delete or a modify (EC2 takes none)
    request: dict[str, Any] | None  # the request syntax (of the kind's action) as executed
    response: dict[str, Any] | None  # EC2's answer, verbatim
    error: JobError | None
    submitted_at: str | None
    started_at: str | None
    finished_at: str | None
    rule: NotRequired[str | None]  # the policy rule that made the job
    event_id: NotRequired[str | None]  # the EventBridge event that made the job
    # What was accepted beyond `request`, so that the job is published again as it came (the
    # lost-message repair): SessionNumber was `auto` (`request` holds the number chosen since),
    # and the rule's other targets, counted as one mirror with `TrafficMirrorTargetId`.
    auto_session_number: NotRequired[bool]
    alternatives: NotRequired[list[str]]


def utcnow() -> str:
    """Timestamps in records: UTC, ISO 8601, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def is_terminal(record: JobResult | None) -> bool:
    return record is not None and JobStatus(record["status"]) in TERMINAL_STATUSES


def may_have_sent(record: JobResult | None) -> bool:
    """Whether a create may be out for this job: a worker started it (a worker killed mid-call
    leaves `running` with the attempt not yet written) or recorded an attempt."""
    return (
        record is not None
        and (record["attempts"] > 0 or JobStatus(record["status"]) is not JobStatus.QUEUED)
        and not is_terminal(record)
    )


def scope_of(record: JobResult) -> Scope | None:
    """The account and Region the job runs in; None for a record written before scopes (or
    a refusal of a job whose scope nobody knew)."""
    region = record.get("region")
    return None if region is None else Scope(record.get("account_id"), region)


def placement_of(record: JobResult) -> Placement:
    """The placement the job was accepted with, as its messages carry it (tasks/producer.py,
    the lost-message repair): the Region always once known, the role if it has one. Not
    checked again: it was when accepted, and a fleet's own MIRRORQ_REGION (a lab's) may be
    no Region of EC2's."""
    return Placement.model_construct(
        region=record.get("region"),
        role_arn=record.get("role_arn"),
        external_id=record.get("external_id"),
    )


def queue_of(record: JobResult) -> str:
    """The queue the job's messages go to: the one its record names, else its scope's
    (`mirrorq` for a record written before scopes, when every job went there)."""
    queue = record.get("queue")
    if queue:
        return queue
    scope = scope_of(record)
    return QUEUE if scope is None else scope.queue


def describe_placement(record: JobResult) -> str:
    """Where a job runs, in words (log lines, WrongScope errors): never its ExternalId."""
    scope = scope_of(record)
    where = scope.describe() if scope else "no known account or Region"
    role = record.get("role_arn")
    return f"{where} through role {role}" if role else where


def loaded(raw: dict[str, Any]) -> JobResult:
    """A record read back from JSON, its status (and kind) typed again."""
    record: Any = dict(raw)
    record["status"] = JobStatus(record["status"])
    if "kind" in record:
        record["kind"] = JobKind(record["kind"])
    return record  # type: ignore[no-any-return]


def kind_of(record: JobResult) -> JobKind:
    """What the job does: a record written before kinds is a create's."""
    return JobKind(record.get("kind") or JobKind.CREATE)


def eni_of(record: JobResult) -> str | None:
    """The source ENI the job acts on, if known: a create's request names it, a delete's or a
    modify's sender may have (or its worker read it from the session)."""
    if kind_of(record) is JobKind.CREATE:
        eni = (record["request"] or {}).get("NetworkInterfaceId")
        return eni if isinstance(eni, str) else None
    return record.get("network_interface_id")


def accepted(
    job_id: str,
    request: dict[str, Any] | None,
    *,
    batch_id: str | None = None,
    submitted_at: str | None = None,
    origin: dict[str, str | None] | None = None,
    alternatives: Sequence[str] = (),
    scope: Scope | None = None,
    placement: Placement = NOWHERE,
    kind: JobKind = JobKind.CREATE,
    network_interface_id: str | None = None,
) -> JobResult:
    """A new job of `kind`, `queued`, accepted by the fleet of `scope` to run where
    `placement` says (its account and Region where it names none): a create's ClientToken is
    the request's, fixed from now on. A delete's or a modify's `network_interface_id` is its
    session's source, if its sender named it."""
    account = placement.account_id or (scope.account_id if scope else None)
    region = placement.region or (scope.region if scope else None)
    record: JobResult = {
        "job_id": job_id,
        "batch_id": batch_id,
        "account_id": account,
        "region": region,
        "role_arn": placement.role_arn,
        "external_id": placement.external_id,
        "status": JobStatus.QUEUED,
        "attempts": 0,
        "client_token": (request or {}).get("ClientToken"),
        "request": request,
        "response": None,
        "error": None,
        "submitted_at": submitted_at,
        "started_at": None,
        "finished_at": None,
    }
    if kind is not JobKind.CREATE:
        # Only a delete's or a modify's record says its kind: a create's stays as it was.
        record["kind"] = kind
        record["network_interface_id"] = network_interface_id
    if scope is not None:
        # The accepting fleet's workers run its jobs wherever they are placed: a role's in its
        # account, the fleet's own credentials' in any Region (a fleet is one account).
        record["queue"] = scope.queue
    if origin:
        record["rule"] = origin.get("rule")
        record["event_id"] = origin.get("event_id")
    if (request or {}).get("SessionNumber") == AUTO:
        record["auto_session_number"] = True
    if alternatives:
        record["alternatives"] = list(alternatives)
    return record


def accepted_request(record: JobResult) -> dict[str, Any] | None:
    """The request as the job was accepted: SessionNumber `auto` again once it chose one."""
    request = record["request"]
    if request is None or not record.get("auto_session_number"):
        return request
    return {**request, "SessionNumber": AUTO}


def started(record: JobResult, request: dict[str, Any]) -> JobResult:
    """A worker runs the job with `request` (its token included) from now on."""
    return {
        **record,
        "status": JobStatus.RUNNING,
        "request": request,
        "client_token": request.get("ClientToken"),
        "started_at": record["started_at"] or utcnow(),
    }


def planned(record: JobResult, request: dict[str, Any]) -> JobResult:
    """SessionNumber `auto` resolved: every attempt from now on sends exactly `request`."""
    return {**record, "request": request}


def located(record: JobResult, network_interface_id: str) -> JobResult:
    """A delete's or a modify's session source, read from EC2 (its sender named none)."""
    return {**record, "network_interface_id": network_interface_id}


def attempted(record: JobResult) -> JobResult:
    """One more call of the kind's action is on its way."""
    return {**record, "attempts": record["attempts"] + 1}


def retrying(record: JobResult, code: str, message: str) -> JobResult:
    return {
        **record,
        "status": JobStatus.RETRYING,
        "error": {"code": code, "message": message, "retryable": True},
    }


def created(record: JobResult, response: dict[str, Any]) -> JobResult:
    return succeeded(record, response)


def succeeded(record: JobResult, response: dict[str, Any]) -> JobResult:
    """EC2 did what the job asked: `created`, `deleted` or `modified` by the job's kind, with
    EC2's answer (a delete whose session was already gone after an attempt of ours: the
    answer that says so, worker/execute.py)."""
    answer = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    return _finished(record, SUCCESS_OF[kind_of(record)], response=answer)


def dry_run_ok(record: JobResult) -> JobResult:
    return _finished(record, JobStatus.DRY_RUN_OK)


def failed(record: JobResult, code: str, message: str, *, retryable: bool = False) -> JobResult:
    return _finished(
        record,
        JobStatus.FAILED,
        error={"code": code, "message": message, "retryable": retryable},
    )


def _finished(
    record: JobResult,
    status: JobStatus,
    *,
    response: dict[str, Any] | None = None,
    error: JobError | None = None,
) -> JobResult:
    now = utcnow()
    return {
        **record,
        "status": status,
        "response": response,
        "error": error,
        "started_at": record["started_at"] or now,
        "finished_at": now,
    }
