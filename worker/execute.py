"""One job's attempts against EC2 under the retry policy, and the record they end in.

Pure of Celery and of messages: worker/runner.py hands it a started record and stores what
it returns. Every attempt sends exactly `record["request"]`, ClientToken included, so EC2
can tell a retry from a new request. A job with SessionNumber `auto` reads its ENI's
sessions and creates under the ENI's lease (worker/leases.py), so two jobs for one ENI,
target and filter never both create.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from tenacity import RetryCallState

from config import Settings
from tasks import keys, records
from tasks.records import JobResult
from worker.errors import (
    DRY_RUN_OK,
    EC2_SAYS_NUMBER_TAKEN,
    Action,
    AlreadyMirroredError,
    LeaseLostError,
    classify,
)
from worker.leases import Lease, Leases
from worker.metrics import ec2_call
from worker.ratelimit import CREATE_ACTION, DESCRIBE_ACTION, Limiters, SharedRateLimiter
from worker.retry import retry_policy
from worker.sessions import plan_session_number
from worker.timing import Sleep

if TYPE_CHECKING:  # stubs only: a development dependency
    from types_aiobotocore_ec2 import EC2Client

Save = Callable[[JobResult], Awaitable[None]]  # records a job's progress, on the loop
log = logging.getLogger(__name__)
SLOW_SLOT_WARNING_EVERY_S = 60.0
_last_slow_slot_warning = -SLOW_SLOT_WARNING_EVERY_S


@dataclass(frozen=True)
class Ec2:
    """What a job's attempts use: the EC2 client, the shared limiters, the leases."""

    client: EC2Client
    limiters: Limiters
    leases: Leases
    settings: Settings

    @property
    def create_bound_s(self) -> float:
        """The longest a create can take: a fenced lease must outlast it."""
        return self.settings.connect_timeout_s + self.settings.read_timeout_s + 1.0


def slow_slot_warning(waited_s: float, settings: Settings) -> str | None:
    """A slot wait long enough to threaten the visibility timeout, explained; else None.

    Every job a worker holds waits for its slot while its message stays unacked: when the
    fleet holds more jobs than the shared rate serves within the visibility timeout, Redis
    hands messages still waiting to a second worker. Harmless (same tokens, and a copy waits
    for the job's lease) but wasteful, and a sign the fleet is sized past the account's rate.
    """
    if waited_s < settings.visibility_timeout_s / 4:
        return None
    return (
        f"waited {waited_s:.0f} s for an EC2 slot: the fleet holds more jobs than "
        f"{settings.ec2_rate:g} calls/s can serve within the {settings.visibility_timeout_s} s "
        "visibility timeout, so waiting messages may be handed to a second worker; lower "
        "MIRRORQ_CONCURRENCY or run fewer workers, or raise MIRRORQ_VISIBILITY_TIMEOUT_S"
    )


async def take_slot(limiter: SharedRateLimiter | None, settings: Settings) -> None:
    global _last_slow_slot_warning  # noqa: PLW0603 - one warning a minute per process
    if limiter is None:
        return
    warning = slow_slot_warning(await limiter.acquire(), settings)
    now = time.monotonic()
    if warning and now - _last_slow_slot_warning >= SLOW_SLOT_WARNING_EVERY_S:
        _last_slow_slot_warning = now
        log.warning(warning)


async def sessions_on(ec2: Ec2, eni_id: str) -> list[dict[str, Any]]:
    """Every session on the ENI, a page at a time, each page a call paid for at the limiter."""
    sessions: list[dict[str, Any]] = []
    token: dict[str, Any] = {}
    while True:
        await take_slot(ec2.limiters.describe, ec2.settings)
        async with ec2_call(DESCRIBE_ACTION):
            page = await ec2.client.describe_traffic_mirror_sessions(
                Filters=[{"Name": "network-interface-id", "Values": [eni_id]}], **token
            )
        sessions += [dict(s) for s in page.get("TrafficMirrorSessions", [])]
        if not page.get("NextToken"):
            return sessions
        token = {"NextToken": page["NextToken"]}


class Creates:
    """A job's CreateTrafficMirrorSession calls, and how long one left unanswered (a timeout,
    a dropped connection, a 5xx) may still reach EC2: until `create_bound_s` after it was
    sent. One that lands later than that is beyond what mirrorq can fence."""

    def __init__(self, ec2: Ec2) -> None:
        self._ec2 = ec2
        self._landing_by = 0.0  # monotonic; 0: none of ours is on its way

    async def send(self, request: dict[str, Any]) -> dict[str, Any]:
        bound_s = self._ec2.create_bound_s
        sent_at = time.monotonic()
        try:
            async with ec2_call(CREATE_ACTION):
                response = await asyncio.wait_for(
                    self._ec2.client.create_traffic_mirror_session(**request), bound_s
                )
        except Exception as error:
            if classify(error).retryable:  # unanswered: it may be on its way still
                self._landing_by = sent_at + bound_s
            raise
        self._landing_by = 0.0  # created: one still on its way is answered from the token
        return dict(response)

    def may_land_for_s(self) -> float:
        return max(0.0, self._landing_by - time.monotonic())


async def execute_job(
    ec2: Ec2,
    record: JobResult,
    *,
    save: Save,
    auto: bool,
    alternatives: Sequence[str] = (),
    sleep: Sleep = asyncio.sleep,
) -> JobResult:
    """Create the session `record["request"]` describes; return the finished record.

    With `auto`, each create is preceded by a read of the ENI's sessions under the ENI's
    lease (the same lease for as long as it is held: a retry does not read again), and the
    create is fenced: sent only while that lease is still this job's. The create slot is
    taken last, just before the create: reads are paid at the Describe limiter alone.

    Raises RedisError when Redis, where the job is recorded, is unreachable, and
    SupersededError when another worker took the job over: nothing is decided then.
    """
    settings = ec2.settings
    eni_lease = keys.eni_lease(str((record["request"] or {})["NetworkInterfaceId"]))
    holding: Lease | None = None
    read_under: Lease | None = None
    ours_maybe = False  # a session to this mirror carries our number: ours, if EC2 replays
    creates = Creates(ec2)

    async def on_retry(state: RetryCallState) -> None:
        nonlocal record
        error = state.outcome.exception() if state.outcome else None
        if error is None:
            return
        failure = classify(error)
        record = records.retrying(record, failure.code, failure.message)
        limiter = ec2.limiters.of(failure.operation) if failure.throttled else None
        if limiter is not None:
            await limiter.throttled()
        await save(record)

    policy = retry_policy(
        deadline_s=settings.job_deadline_s,
        backoff_base_s=settings.backoff_base_s,
        backoff_cap_s=settings.backoff_cap_s,
        sleep=sleep,
        before_sleep=on_retry,
    )
    try:
        async for attempt in policy:
            with attempt:
                if auto:
                    if holding is None or holding.lost:
                        holding = await ec2.leases.acquire(eni_lease)
                    if read_under is not holding:
                        request = dict(record["request"] or {})
                        existing = await sessions_on(ec2, request["NetworkInterfaceId"])
                        plan, ours_maybe = plan_session_number(existing, request, alternatives)
                        if plan != request:
                            record = records.planned(record, plan)
                            await save(record)
                        read_under = holding
                # Only now: a read that failed, or found the ENI mirrored, spent no create slot.
                await take_slot(ec2.limiters.create, settings)
                if holding is not None and not await ec2.leases.fence(holding, ec2.create_bound_s):
                    raise LeaseLostError("the ENI's lease lapsed before the create was sent")
                record = records.attempted(record)
                response = await creates.send(record["request"] or {})
    except Exception as error:  # every failure but Redis's becomes the job's outcome
        failure = classify(error)
        if failure.action in (Action.RESUME, Action.YIELD):
            raise
        if failure.code == DRY_RUN_OK:
            return records.dry_run_ok(record)
        if ours_maybe and failure.code == EC2_SAYS_NUMBER_TAKEN:
            # A session to this mirror holds our number, and EC2 did not know our token: it
            # is another job's. (Had it been ours, EC2 would have answered from the token.)
            failure = classify(AlreadyMirroredError(_already(record)))
        return records.failed(record, failure.code, failure.message, retryable=failure.retryable)
    finally:
        if holding is not None:
            # A job that gives up on unanswered creates keeps the ENI until the last of them can
            # no longer land: a job reading the ENI before then would not see its session.
            with contextlib.suppress(RedisError):  # unreleased, it lapses within one TTL
                await ec2.leases.release(holding, after_s=creates.may_land_for_s())
    return records.created(record, response)


def _already(record: JobResult) -> str:
    request = record["request"] or {}
    return (
        f"{request.get('NetworkInterfaceId')} is already mirrored to "
        f"{request.get('TrafficMirrorTargetId')} through {request.get('TrafficMirrorFilterId')}"
    )
