"""The Celery tasks: decode a message, hand its jobs to the worker's runtime, and nothing else.

Two message forms carry jobs. The single-job tasks are the documented ones, one per kind
(`create_traffic_mirror_session`, `delete_traffic_mirror_session`,
`modify_traffic_mirror_session`): one job, `kwargs={"request": {...}}` (its action's request
syntax), the task id is the job id; anything may send them. Batches travel as
`create_traffic_mirror_sessions`, several jobs of any kinds to a message
(Settings.jobs_per_message), `kwargs={"jobs": [{"job_id": ..., "kind": ..., "request": {...},
"batch_id": ..., ...}]}`.

The tasks never raise for a bad job and never ask Celery to retry: a message can't loop or
kill the worker. What the jobs do lives in worker/ (runner, execute, repair).
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from celery.worker import state as worker_state
from redis.exceptions import RedisError

from config import get_settings
from tasks.app import app
from tasks.contract import (
    BATCH_TASK_NAME,
    DELETE_TASK_NAME,
    MODIFY_TASK_NAME,
    TASK_NAME,
    DecodedJob,
    JobKind,
    ec2_regions,
    recordable_job_id,
)
from tasks.errors import JobRevokedError
from tasks.messages import JobTask, admit_at, admit_epoch, decode_batch, envelope, refuse, store
from tasks.producer import Producer
from worker.admission import Deferred, Turn, admit
from worker.ratelimit import check_fleet_rates
from worker.repair import Repairer
from worker.runner import run_message
from worker.runtime import close_runtime, get_runtime
from worker.timing import REAL

__all__ = [
    "app",
    "create_traffic_mirror_session",
    "create_traffic_mirror_sessions",
    "delete_traffic_mirror_session",
    "modify_traffic_mirror_session",
]

log = logging.getLogger("mirrorq.jobs")


@app.task(name=TASK_NAME, bind=True, base=JobTask)
def create_traffic_mirror_session(self: Task[Any, None], *args: Any, **kwargs: Any) -> None:
    _run_one(self, JobKind.CREATE, args, kwargs)


@app.task(name=DELETE_TASK_NAME, bind=True, base=JobTask)
def delete_traffic_mirror_session(self: Task[Any, None], *args: Any, **kwargs: Any) -> None:
    _run_one(self, JobKind.DELETE, args, kwargs)


@app.task(name=MODIFY_TASK_NAME, bind=True, base=JobTask)
def modify_traffic_mirror_session(self: Task[Any, None], *args: Any, **kwargs: Any) -> None:
    _run_one(self, JobKind.MODIFY, args, kwargs)


def _run_one(task: Task[Any, None], kind: JobKind, args: Any, kwargs: Any) -> None:
    """A single-job message: the task id is the job id, the task's kind the job's."""
    job_id = recordable_job_id(str(task.request.id))
    if job_id is None:
        log.warning("a message whose id can't be a job's was dropped")
        return
    _run(task, [(job_id, envelope(args, kwargs, kind))])


@app.task(name=BATCH_TASK_NAME, bind=True, base=JobTask)
def create_traffic_mirror_sessions(self: Task[Any, None], *args: Any, **kwargs: Any) -> None:
    at = admit_at(kwargs)
    turn = None if at is None else Turn(at, admit_epoch(kwargs))
    _run(self, _unrevoked(decode_batch(args, kwargs)), turn)


def _unrevoked(jobs: list[DecodedJob]) -> list[DecodedJob]:
    """A batch message's jobs but those whose own id an operator revoked (`celery control
    revoke <job id>`): each ends failed/Revoked, as a single job's message would. Celery
    checks only a message's id, and a batch's (or a deferred job's) is not its jobs'."""
    kept = []
    for job_id, job in jobs:
        if job_id in worker_state.revoked:
            error = JobRevokedError("the job's id was revoked (celery control revoke); not run")
            refuse(job_id, error.code, str(error))
        else:
            kept.append((job_id, job))
    return kept


def _run(task: Task[Any, None], jobs: list[DecodedJob], turn: Turn | None = None) -> None:
    if not jobs:
        return
    runtime = get_runtime(get_settings(), store())
    try:
        jobs = _defer(runtime.run(admit(runtime.worker, jobs, turn)), _expires(task))
        elsewhere = runtime.run(run_message(runtime.worker, jobs))
    except (RedisError, OSError) as error:
        # Jobs wait for Redis themselves; this is the last resort (the runtime could not
        # start): back to the queue, and the redelivery carries on from the records.
        log.warning("message %s goes back to the queue: %r", task.request.id, error)
        raise Reject(repr(error), requeue=True) from error
    for record in elsewhere:  # jobs of another scope, to their own queue before the ack
        try:
            _producer().publish(record)
        except Exception:  # its record stays pending: the lost-message repair publishes it
            log.warning("job %s could not be passed on to its queue", record["job_id"])


def _defer(
    admitted: tuple[list[DecodedJob], list[Deferred]], expires: datetime | None
) -> list[DecodedJob]:
    """Publish again the jobs whose bucket can't serve them soon (worker/admission.py), to
    expire when the delivery they came in would have; the jobs to run now. A deferral that
    can't be published runs now instead."""
    now, deferred = admitted
    for later in deferred:
        try:
            _producer().defer(
                later.records,
                admit_at=later.admit_at,
                epoch=later.epoch,
                countdown=later.countdown_s,
                expires=expires,
            )
        except Exception as error:
            log.warning("%d job(s) could not be deferred (%r); run now", len(later.jobs), error)
            now += later.jobs
    return now


def _expires(task: Task[Any, None]) -> datetime | None:
    """When the message being run expires (Celery's `expires`), if it does."""
    expires = task.request.expires
    if isinstance(expires, datetime):
        return expires
    if isinstance(expires, str):
        try:
            return datetime.fromisoformat(expires)
        except ValueError:
            return None
    return None


@functools.cache
def _producer() -> Producer:
    return Producer(app, get_settings())


_repairer: Repairer | None = None


@worker_ready.connect
def _start_repair(**_: Any) -> None:
    global _repairer  # noqa: PLW0603 - one repair thread per worker process
    producer = _producer()
    _repairer = Repairer(producer.redis, store(), producer.publish, producer.settings, REAL.wall)
    _repairer.start()


@worker_ready.connect
def _open_runtime(**_: Any) -> None:
    """The event loop, the default EC2 client (botocore's EC2 model takes a second or two to
    load), the Redis pools and the Regions envelopes are checked against are made at start,
    not by the first messages."""
    ec2_regions("aws")
    try:
        get_runtime(get_settings(), store())
    except (RedisError, OSError) as error:  # the first message tries again
        log.warning("could not open the EC2 runtime at start: %r", error)


@worker_ready.connect
def _check_fleet_rate(**_: Any) -> None:
    """At start, not at the first job: a worker whose rate is not the fleet's says so."""
    try:
        check_fleet_rates(_producer().redis, get_settings())
    except RedisError as error:  # its first slot checks again
        log.warning("could not read the fleet's EC2 rate: %r", error)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    if _repairer is not None:
        _repairer.stop()
    close_runtime()
