"""Celery messages into jobs: each job's envelope, batch messages, and messages whose jobs never
reach the task, which are recorded `failed` under their job id instead of vanishing: messages
kombu cannot read (dropped by tasks/broker.py) or Celery cannot (which would otherwise stop
the worker with "Unrecoverable error", or come back forever) end InvalidJob; messages Celery
discards unrun, their `expires` passed or their id revoked, end Expired or Revoked.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Literal

from celery import Task
from celery.exceptions import InvalidTaskError
from celery.signals import task_internal_error, task_revoked
from celery.worker import state as worker_state
from celery.worker import strategy
from celery.worker.request import Request
from kombu.exceptions import ContentDisallowed, DecodeError
from redis.exceptions import RedisError

from config import get_settings
from tasks.app import app
from tasks.broker import message_dropped
from tasks.contract import (
    ADMIT_AT,
    ADMIT_EPOCH,
    BATCH_TASK_NAME,
    KIND_OF_TASK,
    DecodedJob,
    Envelope,
    JobKind,
    fleet_scope,
    parse_envelope,
    recordable_job_id,
)
from tasks.errors import InvalidJobError, JobExpiredError, JobRevokedError, MirrorqError
from tasks.records import StepVerdict, accepted, failed, is_terminal, kind_of, may_have_sent
from tasks.store import ResultStore

log = logging.getLogger("mirrorq.jobs")


@functools.cache
def store() -> ResultStore:
    return ResultStore(app, get_settings())


# What Celery raises when a message can't become a call of the task: a body that is not JSON
# (or not allowed: pickle), nested past Python's recursion limit, not [args, kwargs, embed],
# kwargs that are not an object.
UNREADABLE = (
    DecodeError,
    ContentDisallowed,
    InvalidTaskError,
    ValueError,
    TypeError,
    LookupError,
    RecursionError,
)


def refuse(job_id: str, code: str, message: str, *, unless_started: bool = False) -> None:
    """Record a job that will not run `failed` with `code`, by the step a job's outcome takes:
    a finished job stays as it was, one running elsewhere is left to finish, and one accepted
    earlier keeps its request, token and batch (whose counts move). A job that an earlier
    delivery started may have a create out (which may have landed): with `unless_started` it
    is left to the lost-message repair, which publishes it again to settle it with its token;
    otherwise its error says so."""
    try:
        current = store().load(job_id)
        if is_terminal(current):
            return
        if may_have_sent(current) and unless_started:
            store().keep_pending(job_id)
            log.warning(
                "job %s: this copy is not run (%s), but an earlier delivery started the job and "
                "may have sent a create; the lost-message repair publishes it again to settle "
                "it with its token",
                job_id,
                code,
            )
            return
        if current is not None and may_have_sent(current) and kind_of(current) is JobKind.CREATE:
            message += (
                "; an earlier delivery started the job and may have sent a create with its "
                "ClientToken, which may have made a session: submit the request again with "
                "that ClientToken to learn which"
            )
        elif current is not None and may_have_sent(current):
            message += (
                f"; an earlier delivery started the job and may have sent its "
                f"{kind_of(current).action}: describe the session to learn whether it took "
                "effect"
            )
        record = current or accepted(job_id, None, scope=fleet_scope(get_settings()))
        verdict = store().step("finish", failed(record, code, message))
    except RedisError:
        log.warning("job %s: could not record its refusal (%s)", job_id, code)
        return
    if verdict.verdict is StepVerdict.STORED:
        log.warning("job %s refused (%s): %s", job_id, code, message)


def _named_job(task_name: Any, job_id: Any) -> str | None:
    """The job an unreadable message names: the task id of a documented single-job form
    (`task_name` None: its headers could not be read), if a refusal can be recorded under it."""
    single = task_name is None or task_name in KIND_OF_TASK
    return recordable_job_id(job_id) if single else None


def _refuse_unreadable(job_id: str, why: str) -> None:
    """A message that never reaches the task: its job is recorded `failed`/InvalidJob instead
    of vanishing. `why` quotes nothing of the message."""
    refuse(
        job_id,
        InvalidJobError.code,
        f"(message): the message could not be read as a job: {why}; "
        "send JSON: kwargs={'request': {...}}",
    )


def _record_unreadable(task_name: Any, job_id: Any, why: str) -> None:
    named = _named_job(task_name, job_id)
    if named is None:
        log.warning("an unreadable %s message was dropped: %s", task_name, why)
    else:
        _refuse_unreadable(named, why)


@message_dropped.connect
def _dropped(task: Any = None, job_id: Any = None, why: str = "", **_: Any) -> None:
    """tasks/broker.py dropped (and logged) a payload kombu could not read."""
    named = _named_job(task, job_id)
    if named is not None:
        _refuse_unreadable(named, why)


def guarded_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's own strategy, guarded: a message it chokes on while turning it into a request
    (which would otherwise stop the worker with "Unrecoverable error") is recorded and acked."""
    handle = strategy.default(task, app, consumer, **kwargs)

    def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **more: Any) -> Any:
        try:
            _check_embed(message.payload)
            return handle(message, body, ack, reject, callbacks, **more)
        except UNREADABLE as error:
            _record_unreadable(task.name, (message.headers or {}).get("id"), type(error).__name__)
            message.ack_log_error(log, consumer.connection_errors)
            return None

    return guarded


def _check_embed(payload: Any) -> None:
    """Celery reads a message's third part (callbacks, chain...) only in the pool thread, where
    anything but an object fails unseen and leaves the message unacked, to come back forever."""
    if (
        isinstance(payload, list | tuple)
        and len(payload) == 3
        and not isinstance(payload[2], dict | None)
    ):
        raise InvalidTaskError("the message's embedded options are not an object")


@task_internal_error.connect
def _unreadable_call(
    sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any
) -> None:
    """A message that became a request but not a call (kwargs not an object): Celery reports
    it through this signal and acks the message."""
    if sender is not None and isinstance(exception, UNREADABLE):
        _record_unreadable(sender.name, task_id, type(exception).__name__)


@task_revoked.connect
def _discarded(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    """Celery acks and drops a message whose `expires` passed (or whose id was revoked) before
    it ran, and records nothing: each of its jobs ends `failed`/Expired (or Revoked), but for
    an expired job an earlier delivery started, which the repair publishes again to settle."""
    name = getattr(sender, "name", None)
    if request is None or (name not in KIND_OF_TASK and name != BATCH_TASK_NAME):
        return
    if name in KIND_OF_TASK:
        job_ids = [recordable_job_id(request.id)]
    else:
        job_ids = [job_id for job_id, _ in decode_batch(request.args or (), request.kwargs or {})]
    unrun = "before a worker ran it; this message sent nothing to EC2"
    # An id in the revoked set is an operator's revoke (JobRequest keeps expiries out of it),
    # and it holds even when the message has also expired.
    revoked = request.id in worker_state.revoked
    discarded: MirrorqError = (
        JobExpiredError(f"the message expired (expires {request.expires}) {unrun}")
        if expired and not revoked
        else JobRevokedError(f"the job's id was revoked (celery control revoke) {unrun}")
    )
    for job_id in job_ids:
        if job_id is not None:
            refuse(job_id, discarded.code, str(discarded), unless_started=not revoked)


class JobRequest(Request):
    """Celery's request, but an expired message's id is not remembered as revoked: the
    repair's copy of a job an earlier delivery started carries the same id and must run, and
    an id in the revoked set then always means an operator revoked it."""

    def maybe_expire(self) -> Literal[True] | None:
        known = self.id in worker_state.revoked
        expired = super().maybe_expire()
        if expired and not known:
            worker_state.revoked.discard(self.id)
        return expired


class JobTask(Task):  # type: ignore[type-arg]
    Strategy = "tasks.messages:guarded_strategy"
    Request = "tasks.messages:JobRequest"


def envelope(
    args: Any, kwargs: Any, task_kind: JobKind | None = None
) -> Envelope | InvalidJobError:
    """A job's envelope, or why not; `task_kind`: the single-job task's kind (tasks/jobs.py)."""
    try:
        return parse_envelope(args, kwargs, task_kind)
    except InvalidJobError as error:
        return error


def admit_epoch(kwargs: Any) -> int | None:
    """The bucket's epoch a deferred message's turn was given in; anything else is none."""
    value = kwargs.get(ADMIT_EPOCH) if isinstance(kwargs, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def admit_at(kwargs: Any) -> float | None:
    """A deferred message's turn (Unix time), if it is one; anything else is no turn."""
    value = kwargs.get(ADMIT_AT) if isinstance(kwargs, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        turn = float(value)  # JSON's integers have no bound: 10**400 is no float
    except OverflowError:
        return None
    return turn if math.isfinite(turn) else None


def decode_batch(args: Any, kwargs: Any) -> list[DecodedJob]:
    """Each job of a batch message, by id. A job without a usable id can't be recorded,
    so it is logged and left out; a job with one but a bad envelope is recorded as failed."""
    jobs = kwargs.get("jobs") if isinstance(kwargs, dict) else None
    if args or not isinstance(jobs, list) or not set(kwargs) <= {"jobs", ADMIT_AT, ADMIT_EPOCH}:
        log.warning("batch message refused: expected kwargs={'jobs': [...]} only")
        return []
    decoded: list[DecodedJob] = []
    for n, job in enumerate(jobs):
        job_id = recordable_job_id(job.get("job_id") if isinstance(job, dict) else None)
        if job_id is None:
            log.warning("batch message: job %d has no job_id and can't be recorded", n)
            continue
        decoded.append((job_id, envelope((), {k: v for k, v in job.items() if k != "job_id"})))
    return decoded
