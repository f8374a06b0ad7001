"""The Celery tasks: decode a message, run its jobs on the process's EC2 runtime, record them.

Two message forms carry jobs. `create_traffic_mirror_session` is the documented one: one job,
`kwargs={"request": {...}}`, the task id is the job id; anything may send it. Batches travel
as `create_traffic_mirror_sessions`, several jobs to a message (Settings.jobs_per_message),
`kwargs={"jobs": [{"job_id": ..., "request": {...}, "batch_id": ..., "submitted_at": ...}]}`.
Either way the thread hands all of the message's jobs to the event loop at once and they run
side by side; the message is acked when the last of them is recorded.

The tasks are thin on purpose (worker/execute.py holds the logic): they never raise for a
bad job and never ask Celery to retry, so a message can't loop or kill the worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from redis.exceptions import RedisError

from config import Settings, get_settings
from tasks import keys
from tasks.app import app
from tasks.contract import (
    AUTO,
    BATCH_TASK_NAME,
    TASK_NAME,
    InvalidJobError,
    JobResult,
    JobStatus,
    new_result,
    parse_request,
    utcnow,
)
from tasks.store import AsyncResultStore, ResultStore, is_terminal
from worker.execute import execute_job
from worker.runtime import Ec2Runtime, close_runtime, get_runtime

__all__ = ["app", "create_traffic_mirror_session", "create_traffic_mirror_sessions"]

log = logging.getLogger("mirrorq.jobs")
ENVELOPE_KEYS = frozenset({"request", "batch_id", "submitted_at"})
Envelope = dict[str, Any] | InvalidJobError  # a job's envelope, or why it has none


def decode_envelope(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The documented payload is `kwargs={"request": {...}}` (plus optional batch_id)."""
    if args:
        raise InvalidJobError(
            [
                {
                    "field": "(message)",
                    "message": "positional arguments are not accepted; "
                    "send kwargs={'request': {...}}",
                }
            ]
        )
    unknown = set(kwargs) - ENVELOPE_KEYS
    if unknown:
        raise InvalidJobError(
            [{"field": k, "message": "unknown envelope field"} for k in sorted(unknown)]
        )
    if "request" not in kwargs:
        raise InvalidJobError([{"field": "request", "message": "Field required"}])
    return kwargs


def decode_batch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Envelope]]:
    """Each job of a batch message, by id. A job without a usable id can't be recorded,
    so it is logged and left out; a job with one but a bad envelope is recorded as failed."""
    jobs = kwargs.get("jobs")
    if args or set(kwargs) != {"jobs"} or not isinstance(jobs, list):
        log.warning("batch message refused: expected kwargs={'jobs': [...]} only")
        return []
    decoded: list[tuple[str, Envelope]] = []
    for n, job in enumerate(jobs):
        job_id = job.get("job_id") if isinstance(job, dict) else None
        if not isinstance(job_id, str) or not job_id:
            log.warning("batch message: job %d has no job_id and can't be recorded", n)
            continue
        envelope = {k: v for k, v in job.items() if k != "job_id"}
        try:
            decoded.append((job_id, decode_envelope((), envelope)))
        except InvalidJobError as error:
            decoded.append((job_id, error))
    return decoded


def _envelope(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Envelope:
    try:
        return decode_envelope(args, kwargs)
    except InvalidJobError as error:
        return error


@app.task(name=TASK_NAME, bind=True)
def create_traffic_mirror_session(self: Task[Any, None], *args: Any, **kwargs: Any) -> None:
    _run_message(self, [(str(self.request.id), _envelope(args, kwargs))])


@app.task(name=BATCH_TASK_NAME, bind=True)
def create_traffic_mirror_sessions(self: Task[Any, None], *args: Any, **kwargs: Any) -> None:
    _run_message(self, decode_batch(args, kwargs))


def _run_message(task: Task[Any, None], jobs: list[tuple[str, Envelope]]) -> None:
    if not jobs:
        return
    settings = get_settings()
    runtime = get_runtime(settings)
    # Only a redelivery can find records worth reading (attempts so far, a SessionNumber
    # chosen before, or an outcome); a first delivery carries all it needs in the message.
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    try:
        runtime.run(run_jobs(runtime, _worker_store(runtime), settings, jobs, redelivered))
    except (RedisError, OSError) as error:
        # A job could not be recorded (Redis unreachable, say). Acking would strand it in
        # `running`; back to the queue instead: the redelivery finishes what this left, and
        # skips the jobs already finished.
        log.warning("message %s goes back to the queue: %r", task.request.id, error)
        raise Reject(repr(error), requeue=True) from error


async def run_jobs(
    runtime: Ec2Runtime,
    store: AsyncResultStore,
    settings: Settings,
    jobs: list[tuple[str, Envelope]],
    redelivered: bool,
) -> None:
    """Run a message's jobs side by side; every one is recorded before this returns."""
    previous = (
        await store.load_many([job_id for job_id, _ in jobs]) if redelivered else [None] * len(jobs)
    )

    async def admitted(job_id: str, envelope: Envelope, earlier: JobResult | None) -> None:
        async with runtime.slots:  # a message from elsewhere may hold any number of jobs
            await run_job(runtime, store, settings, job_id, envelope, earlier)

    outcomes = await asyncio.gather(
        *(
            admitted(job_id, envelope, earlier)
            for (job_id, envelope), earlier in zip(jobs, previous, strict=True)
        ),
        return_exceptions=True,
    )
    # A job that could not be recorded fails the message, once its siblings are done.
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def run_job(
    runtime: Ec2Runtime,
    store: AsyncResultStore,
    settings: Settings,
    job_id: str,
    envelope: Envelope,
    previous: JobResult | None,
) -> None:
    if is_terminal(previous):
        log.info("job %s already %s; redelivery ignored", job_id, previous and previous["status"])
        return
    record: JobResult = previous or new_result(job_id, None)
    record["started_at"] = record["started_at"] or utcnow()
    try:
        if isinstance(envelope, InvalidJobError):
            raise envelope
        request = parse_request(envelope["request"])
    except InvalidJobError as error:
        record.update(
            {
                "status": JobStatus.FAILED.value,
                "finished_at": utcnow(),
                "error": {"code": error.code, "message": str(error), "retryable": False},
            }
        )
        await store.save(record)
        log.warning("job %s refused: %s", job_id, error)
        return
    record["batch_id"] = envelope.get("batch_id") or record["batch_id"]
    record["submitted_at"] = record["submitted_at"] or envelope.get("submitted_at")
    kwargs_ = request.to_kwargs()
    earlier = record["request"] or {}
    if request.auto_session_number and earlier.get("SessionNumber", AUTO) != AUTO:
        # A redelivery: the number chosen before the first attempt is part of the request now.
        kwargs_ = dict(earlier)
    # The token fixed at acceptance; a producer that sent none gets one derived from the
    # job id, which every redelivery of this message shares.
    kwargs_["ClientToken"] = request.ClientToken or record["client_token"] or job_id
    record.update(
        {
            "request": kwargs_,
            "client_token": kwargs_["ClientToken"],
            "status": JobStatus.RUNNING.value,
        }
    )
    await store.save(record)

    record = await execute_job(
        runtime.client,
        record,
        settings,
        save=store.save,
        leases=runtime.leases if request.auto_session_number else None,
        limiters=runtime.limiters,
    )
    await store.save(record)
    if record["status"] == JobStatus.FAILED.value and record["error"]:
        log.warning(
            "job %s failed after %d attempt(s): %s",
            job_id,
            record["attempts"],
            record["error"]["code"],
        )
    else:
        # The result backend is the record of every job; a log line each would only be noise.
        log.debug("job %s %s after %d attempt(s)", job_id, record["status"], record["attempts"])


@functools.cache
def _store() -> ResultStore:
    return ResultStore(app)


@functools.cache
def _worker_store(runtime: Ec2Runtime) -> AsyncResultStore:
    """The process's store on its runtime's loop (a new runtime after a fork, a new store)."""
    return AsyncResultStore(_store(), runtime.results_redis)


_stop_repair = threading.Event()


def _repair_loop() -> None:
    """Every few seconds, one worker of the fleet (a Redis lock decides which) looks for
    accepted jobs whose message was lost and publishes them again."""
    from tasks.producer import Producer

    settings = get_settings()
    producer = Producer(app, settings)
    client = producer.store.backend.client
    while not _stop_repair.wait(settings.repair_interval_s):
        try:
            if not client.set(
                keys.REPAIR_LOCK, "1", nx=True, px=int(settings.repair_interval_s * 900)
            ):
                continue
            for job_id in producer.repair_lost_jobs(settings.lost_after_s):
                log.warning("job %s was accepted but its message was lost; published again", job_id)
        except Exception:  # a Redis hiccup must not end the repairs
            log.warning("lost-job repair failed; will try again", exc_info=True)


@worker_ready.connect
def _start_repair(**_: Any) -> None:
    threading.Thread(target=_repair_loop, name="mirrorq-repair", daemon=True).start()


@worker_shutdown.connect
@worker_process_shutdown.connect
def _close_ec2_client(**_: Any) -> None:
    _stop_repair.set()
    close_runtime()
