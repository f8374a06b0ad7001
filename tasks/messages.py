"""Celery messages into jobs: each job's envelope, batch messages, and messages Celery itself
cannot read, which are recorded `failed`/InvalidJob under their job id instead of vanishing
(or, for some, stopping the worker with "Unrecoverable error").
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Task
from celery.exceptions import InvalidTaskError
from celery.signals import task_internal_error
from celery.worker import strategy
from kombu.exceptions import ContentDisallowed, DecodeError
from redis.exceptions import RedisError

from config import get_settings
from tasks.app import app
from tasks.contract import TASK_NAME, DecodedJob, Envelope, parse_envelope, recordable_job_id
from tasks.errors import InvalidJobError
from tasks.records import accepted, failed
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


def _record_unreadable(task_name: str, job_id: Any, error: BaseException) -> None:
    """A message that never reaches the task still carries its job id (the task id of the
    documented form): the job is recorded `failed`/InvalidJob instead of vanishing."""
    if task_name != TASK_NAME or not isinstance(job_id, str) or not job_id:
        log.warning("an unreadable %s message was dropped: %s", task_name, type(error).__name__)
        return
    refused = failed(
        accepted(job_id, None),
        InvalidJobError.code,
        f"(message): the message could not be read as a job ({type(error).__name__}); "
        "send JSON: kwargs={'request': {...}}",
    )
    try:
        store().step("finish", refused)
        log.warning("job %s refused: its message could not be read", job_id)
    except RedisError:
        log.warning("job %s: could not record that its message was unreadable", job_id)


def guarded_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's own strategy, guarded: a message it chokes on while turning it into a request
    (which would otherwise stop the worker with "Unrecoverable error") is recorded and acked."""
    handle = strategy.default(task, app, consumer, **kwargs)

    def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **more: Any) -> Any:
        try:
            return handle(message, body, ack, reject, callbacks, **more)
        except UNREADABLE as error:
            _record_unreadable(task.name, (message.headers or {}).get("id"), error)
            message.ack_log_error(log, consumer.connection_errors)
            return None

    return guarded


@task_internal_error.connect
def _unreadable_call(
    sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any
) -> None:
    """A message that became a request but not a call (kwargs not an object): Celery reports
    it through this signal and acks the message."""
    if sender is not None and isinstance(exception, UNREADABLE):
        _record_unreadable(sender.name, task_id, exception)


class JobTask(Task):  # type: ignore[type-arg]
    Strategy = "tasks.messages:guarded_strategy"


def envelope(args: Any, kwargs: Any) -> Envelope | InvalidJobError:
    try:
        return parse_envelope(args, kwargs)
    except InvalidJobError as error:
        return error


def decode_batch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[DecodedJob]:
    """Each job of a batch message, by id. A job without a usable id can't be recorded,
    so it is logged and left out; a job with one but a bad envelope is recorded as failed."""
    jobs = kwargs.get("jobs")
    if args or set(kwargs) != {"jobs"} or not isinstance(jobs, list):
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
