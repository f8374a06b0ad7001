"""A message's jobs, from start to recorded outcome, side by side on the worker's loop.

For each job: refuse it if its envelope or request is invalid; start it (a job already
finished is skipped, a copy running elsewhere is waited for, a redelivered job resumes from
its record with its token and chosen SessionNumber); run its attempts (worker/execute.py);
record the outcome. A job holds its run lease from start to outcome, so no copy of it runs
beside it. Redis being away decides nothing: the job waits for Redis and runs on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from tasks import keys, records
from tasks.contract import (
    AUTO,
    DecodedJob,
    Envelope,
    SessionRequest,
    client_token,
    parse_request,
)
from tasks.errors import InvalidJobError
from tasks.records import JobResult, JobStatus
from tasks.store import AsyncResultStore, Step, StepResult
from worker.errors import SupersededError
from worker.execute import Ec2, execute_job
from worker.leases import Lease
from worker.metrics import JOBS_IN_FLIGHT

log = logging.getLogger(__name__)
REDIS_WAIT_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Worker:
    """What running jobs needs: EC2 and the leases, the records, the admission slots."""

    ec2: Ec2
    store: AsyncResultStore
    slots: asyncio.Semaphore
    ping: Callable[[], Awaitable[object]]  # is Redis (where records live) back?


async def run_message(worker: Worker, jobs: list[DecodedJob]) -> None:
    """Run a message's jobs side by side; every one is recorded before this returns."""

    async def admitted(job_id: str, envelope: Envelope | InvalidJobError) -> None:
        async with worker.slots:  # a message from elsewhere may hold any number of jobs
            JOBS_IN_FLIGHT.inc()
            try:
                await run_job(worker, job_id, envelope)
            finally:
                JOBS_IN_FLIGHT.dec()

    await asyncio.gather(*(admitted(job_id, envelope) for job_id, envelope in jobs))


async def run_job(worker: Worker, job_id: str, envelope: Envelope | InvalidJobError) -> None:
    lease = Lease(keys.job_lease(job_id))  # one token for the job's whole stay here
    while True:
        try:
            await _run(worker, job_id, envelope, lease)
            return
        except SupersededError:
            log.warning("job %s: another worker owns it now; this copy stops", job_id)
            return
        except RedisError as error:
            # Nothing is decided about the job: it carries on from its record once Redis
            # answers again (with its token and chosen SessionNumber, from the record).
            log.warning(
                "job %s paused: Redis unreachable (%r); carrying on when it is back", job_id, error
            )
            await _until_redis(worker)
        finally:
            worker.ec2.leases.forget(lease)


async def _run(
    worker: Worker, job_id: str, envelope: Envelope | InvalidJobError, lease: Lease
) -> None:
    if isinstance(envelope, InvalidJobError):
        await _refuse(worker, records.accepted(job_id, None), envelope, lease)
        return

    def accepted(request: dict[str, Any] | None) -> JobResult:
        return records.accepted(
            job_id,
            request,
            batch_id=envelope.batch_id,
            submitted_at=envelope.submitted_at,
            origin=envelope.origin(),
            alternatives=envelope.alternatives,
        )

    base = accepted(None)
    try:
        request = parse_request(envelope.request)
        token = client_token(request, job_id)  # the producer fixed it; else the job id
    except InvalidJobError as error:
        await _refuse(worker, base, error, lease)
        return
    kwargs = {**request.to_kwargs(), "ClientToken": token}
    record = records.started(accepted(kwargs), kwargs)
    start = await _start(worker, record, lease)
    if start.verdict == "done":
        log.info("job %s already finished; this copy ends", job_id)
        return
    if start.verdict == "not-in-batch":
        stranger = InvalidJobError(
            [
                {
                    "field": "batch_id",
                    "message": f"batch {envelope.batch_id} does not exist or did not register "
                    "this job; only a batch's own jobs count toward it",
                }
            ]
        )
        await _refuse(worker, {**base, "batch_id": None}, stranger, lease)
        return
    if start.verdict == "resume" and start.current is not None:
        record = _resumed(start.current, record, request)
    worker.ec2.leases.hold(lease)
    outcome = await execute_job(
        worker.ec2,
        record,
        save=lambda r: _save(worker, "save", r, lease),
        auto=request.auto_session_number,
        alternatives=envelope.alternatives,
    )
    await _save(worker, "finish", outcome, lease)
    if outcome["status"] is JobStatus.FAILED and outcome["error"]:
        log.warning(
            "job %s failed after %d attempt(s): %s",
            job_id,
            outcome["attempts"],
            outcome["error"]["code"],
        )
    else:
        # The result backend is the record of every job; a log line each would only be noise.
        log.debug("job %s %s after %d attempt(s)", job_id, outcome["status"], outcome["attempts"])


async def _start(worker: Worker, record: JobResult, lease: Lease) -> StepResult:
    """Take the job's run lease and record it running; wait while a copy runs elsewhere."""
    told = False
    while (start := await worker.store.step("start", record, lease.token)).verdict == "busy":
        if not told:
            log.info(
                "job %s is running elsewhere; this copy waits for its outcome", record["job_id"]
            )
            told = True
        poll = min(1.0, worker.ec2.leases.ttl_ms / 4000)
        await asyncio.sleep(random.uniform(poll / 2, poll))
    return start


def _resumed(previous: JobResult, record: JobResult, request: SessionRequest) -> JobResult:
    """A job that ran before carries on with what it recorded: its attempts, its start, its
    token, and the SessionNumber it chose (every retry sends identical parameters)."""
    kwargs = dict(record["request"] or {})
    earlier = previous["request"] or {}
    if request.auto_session_number and earlier.get("SessionNumber", AUTO) != AUTO:
        kwargs = dict(earlier)
    kwargs["ClientToken"] = request.ClientToken or previous["client_token"] or kwargs["ClientToken"]
    return records.started({**previous, "batch_id": record["batch_id"]}, kwargs)


async def _save(worker: Worker, step: Step, record: JobResult, lease: Lease) -> None:
    result = await worker.store.step(step, record, lease.token)
    if result.verdict in ("busy", "done"):
        # Another copy took over (this one was cut off from Redis past its lease) or
        # finished the job: it owns the record now.
        raise SupersededError(f"job {record['job_id']} is owned by another worker")


async def _refuse(worker: Worker, record: JobResult, error: InvalidJobError, lease: Lease) -> None:
    refused = records.failed(record, error.code, str(error))
    result = await worker.store.step("finish", refused, lease.token)
    if result.verdict == "stored":
        log.warning("job %s refused: %s", record["job_id"], error)


async def _until_redis(worker: Worker) -> None:
    waited, delay = 0.0, 0.2
    while True:
        await asyncio.sleep(delay)
        waited += delay
        try:
            await worker.ping()
            return
        except RedisError:
            if waited % REDIS_WAIT_LOG_EVERY_S < delay:
                log.warning("still waiting for Redis (%.0f s)", waited)
            delay = min(delay * 2, 5.0)
