"""A message's jobs, from start to recorded outcome, side by side on the worker's loop.

For each job: refuse it if its envelope or request is invalid; start it (a job already
finished is skipped, a copy running elsewhere is waited for, a redelivered job resumes from
its record with its token and chosen SessionNumber); run its attempts (worker/execute.py);
record the outcome. A job holds its run lease from start to outcome, so no copy of it runs
beside it. Redis being away decides nothing: the job waits for Redis and runs on.

A job this worker cannot act for is never run here: one with a role runs on any worker
reading the queue that carries it (the accepting fleet's), one without only in the worker's
own account and Region. It is handed back to be published to its own queue, or, when that is
this worker's own queue, it ends failed/WrongScope.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
    JobKind,
    JobRequest,
    Scope,
    SessionRequest,
    client_token,
    parse_request,
)
from tasks.errors import InvalidJobError, MirrorqError, SupersededError, WrongScopeError
from tasks.records import (
    JobResult,
    JobStatus,
    StepVerdict,
    describe_placement,
    may_have_sent,
    queue_of,
)
from tasks.scripts import Step
from tasks.store import AsyncResultStore, StepResult
from worker.execute import Ec2, execute_change, execute_job
from worker.leases import Lease
from worker.metrics import JOBS_IN_FLIGHT
from worker.roads import Roads, place_of
from worker.timing import Sleep, Timing

log = logging.getLogger(__name__)
REDIS_WAIT_LOG_EVERY_S = 60.0
Ping = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Worker:
    """What running jobs needs: EC2 and the leases, the records, the admission slots, the
    scope (account, Region) the worker acts in, and its sleep and clock (which its roads and
    leases share). `ec2.road` is the default place's road; a job placed elsewhere (its
    Region, its role) runs on that place's, from `roads`."""

    ec2: Ec2
    roads: Roads
    store: AsyncResultStore
    slots: asyncio.Semaphore
    ping: Ping  # is Redis (where records live) back?
    scope: Scope
    timing: Timing


async def run_message(worker: Worker, jobs: list[DecodedJob]) -> list[JobResult]:
    """Run a message's jobs side by side; every one is recorded before this returns, but the
    jobs of another scope, returned: the caller publishes each to its scope's queue."""

    async def admitted(job_id: str, envelope: Envelope | InvalidJobError) -> JobResult | None:
        async with worker.slots:  # a message from elsewhere may hold any number of jobs
            JOBS_IN_FLIGHT.inc()
            try:
                return await run_job(worker, job_id, envelope)
            finally:
                JOBS_IN_FLIGHT.dec()

    outcomes = await asyncio.gather(*(admitted(job_id, envelope) for job_id, envelope in jobs))
    return [record for record in outcomes if record is not None]


async def run_job(
    worker: Worker, job_id: str, envelope: Envelope | InvalidJobError
) -> JobResult | None:
    """Run one job; its record if it belongs to another scope's queue instead."""
    lease = Lease(keys.job_lease(job_id))  # one token for the job's whole stay here
    while True:
        try:
            return await _run(worker, job_id, envelope, lease)
        except SupersededError:
            log.warning("job %s: another worker owns it now; this copy stops", job_id)
            return None
        except RedisError as error:
            # Nothing is decided about the job: it carries on from its record once Redis
            # answers again (with its token and chosen SessionNumber, from the record).
            log.warning(
                "job %s paused: Redis unreachable (%r); carrying on when it is back", job_id, error
            )
            await until_redis(worker.ping, worker.timing.sleep)
        finally:
            worker.ec2.leases.forget(lease)


async def _run(
    worker: Worker, job_id: str, envelope: Envelope | InvalidJobError, lease: Lease
) -> JobResult | None:
    if isinstance(envelope, InvalidJobError):
        await _refuse(worker, records.accepted(job_id, None, scope=worker.scope), envelope, lease)
        return None

    def accepted(request: dict[str, Any] | None) -> JobResult:
        # A job sent with no record (another service's send_task) runs where its envelope
        # says, else in the worker's scope; whether this worker can act there is checked when
        # it starts, against the stored record if there is one (StepVerdict.ELSEWHERE).
        return records.accepted(
            job_id,
            request,
            batch_id=envelope.batch_id,
            submitted_at=envelope.submitted_at,
            origin=envelope.origin(),
            alternatives=envelope.alternatives,
            scope=worker.scope,
            placement=envelope.placement,
            kind=envelope.kind,
            network_interface_id=envelope.network_interface_id,
        )

    base = accepted(None)
    try:
        request = parse_request(envelope.request, envelope.kind)
        kwargs = request.to_kwargs()
        if isinstance(request, SessionRequest):  # the producer fixed it; else the job id
            kwargs["ClientToken"] = client_token(request, job_id)
    except InvalidJobError as error:
        await _refuse(worker, base, error, lease)
        return None
    record = records.started(accepted(kwargs), kwargs)
    start = await _start(worker, record, lease)
    if start.verdict is StepVerdict.DONE:
        log.info("job %s already finished; this copy ends", job_id)
        return None
    if start.verdict is StepVerdict.ELSEWHERE:
        stored = start.current is not None
        return await _elsewhere(worker, start.current or accepted(kwargs), lease, stored=stored)
    if start.verdict is StepVerdict.NOT_IN_BATCH:
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
        return None
    if start.verdict is StepVerdict.RESUME and start.current is not None:
        record = _resumed(start.current, record, request)
    worker.ec2.leases.hold(lease)
    place = place_of(envelope, start.current, worker.scope.region)
    async with worker.roads.use(place) as road:
        ec2 = dataclasses.replace(worker.ec2, road=road)

        async def save(progress: JobResult) -> None:
            await _save(worker, "save", progress, lease)

        if envelope.kind is JobKind.CREATE:
            outcome = await execute_job(
                ec2,
                record,
                save=save,
                auto=request.auto_session_number,
                alternatives=envelope.alternatives,
            )
        else:
            # Resumed: an earlier delivery started the job and may have sent its call.
            resumed = start.verdict is StepVerdict.RESUME
            outcome = await execute_change(ec2, record, save=save, sent_before=resumed)
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
    return None


async def _elsewhere(
    worker: Worker, record: JobResult, lease: Lease, *, stored: bool = True
) -> JobResult | None:
    """A job this worker cannot act for reached it (a send to the wrong queue, a producer of
    another scope, a job sent with a Region and no role): never run against this account and
    Region. It goes back to the caller to be published to its own queue; when that queue is
    this one (the default account in two Regions), it ends failed/WrongScope, unless an
    earlier delivery started it (its fleet did): the lost-message repair publishes that one
    again. `stored`: the job has a record (a job sent with none is refused, not passed on:
    nothing would find it again if the publish failed)."""
    where = describe_placement(record)
    queue = queue_of(record)
    if queue != worker.scope.queue and stored:
        log.warning(
            "job %s runs in %s, where this worker (%s) cannot act; passed on to queue %s",
            record["job_id"],
            where,
            worker.scope.describe(),
            queue,
        )
        return record
    if stored and may_have_sent(record):
        log.warning(
            "job %s runs in %s and started there; not run in %s, left to the "
            "lost-message repair to publish again",
            record["job_id"],
            where,
            worker.scope.describe(),
        )
        return None
    error = WrongScopeError(
        f"the job runs in {where}, but the worker it reached acts in "
        f"{worker.scope.describe()} and reads the queue {worker.scope.queue}; nothing was sent "
        f"to EC2. A job with no role_arn runs only on a worker of its own account and Region "
        f"(queue {queue}): give it a role_arn, or set MIRRORQ_AWS_ACCOUNT_ID on every process "
        "of each fleet, so that each fleet has a queue of its own"
    )
    await _refuse(worker, record, error, lease)
    return None


async def _start(worker: Worker, record: JobResult, lease: Lease) -> StepResult:
    """Take the job's run lease and record it running; wait while a copy runs elsewhere."""
    told = False
    busy = StepVerdict.BUSY
    while (start := await worker.store.step("start", record, lease.token)).verdict is busy:
        if not told:
            log.info(
                "job %s is running elsewhere; this copy waits for its outcome", record["job_id"]
            )
            told = True
        poll = min(1.0, worker.ec2.leases.ttl_ms / 4000)
        await worker.timing.sleep(random.uniform(poll / 2, poll))
    return start


def _resumed(previous: JobResult, record: JobResult, request: JobRequest) -> JobResult:
    """A job that ran before carries on with what it recorded: its attempts, its start, its
    token, and the SessionNumber it chose (every retry sends identical parameters); a delete
    or a modify its request as sent (none is changed by a worker) and its session's ENI."""
    kwargs = dict(record["request"] or {})
    if not isinstance(request, SessionRequest):
        resumed = records.started({**previous, "batch_id": record["batch_id"]}, kwargs)
        eni = previous.get("network_interface_id") or record.get("network_interface_id")
        return {**resumed, "network_interface_id": eni}
    earlier = previous["request"] or {}
    if request.auto_session_number and earlier.get("SessionNumber", AUTO) != AUTO:
        kwargs = dict(earlier)
    kwargs["ClientToken"] = request.ClientToken or previous["client_token"] or kwargs["ClientToken"]
    return records.started({**previous, "batch_id": record["batch_id"]}, kwargs)


async def _save(worker: Worker, step: Step, record: JobResult, lease: Lease) -> None:
    result = await worker.store.step(step, record, lease.token)
    if result.verdict in (StepVerdict.BUSY, StepVerdict.DONE):
        # Another copy took over (this one was cut off from Redis past its lease) or
        # finished the job: it owns the record now.
        raise SupersededError(f"job {record['job_id']} is owned by another worker")


async def _refuse(worker: Worker, record: JobResult, error: MirrorqError, lease: Lease) -> None:
    refused = records.failed(record, error.code, str(error))
    result = await worker.store.step("finish", refused, lease.token)
    if result.verdict is StepVerdict.STORED:
        log.warning("job %s refused: %s", record["job_id"], error)


async def until_redis(ping: Ping, sleep: Sleep) -> None:
    """Wait until Redis answers `ping`: 0.2 s, then twice as long each time up to 5 s, with a
    warning about once a minute."""
    waited, delay = 0.0, 0.2
    while True:
        await sleep(delay)
        waited += delay
        try:
            await ping()
            return
        except RedisError:
            if waited % REDIS_WAIT_LOG_EVERY_S < delay:
                log.warning("still waiting for Redis (%.0f s)", waited)
            delay = min(delay * 2, 5.0)
