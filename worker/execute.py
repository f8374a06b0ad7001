"""One job's attempts against EC2 under the retry policy, and the record they end in.

Pure of Celery and of messages: worker/runner.py hands it a started record and stores what
it returns. Its EC2 calls go the road every EC2 call goes (worker/ec2.py: the slot, the
metrics, the limiter told of throttles, the retry policy); what is the job's own is here.
Every attempt sends exactly `record["request"]`, ClientToken included, so EC2
can tell a retry from a new request. A job with SessionNumber `auto` reads its ENI's
sessions and creates under the ENI's lease (worker/leases.py), so two jobs for one ENI,
target and filter never both create.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from tenacity import RetryCallState

from config import Settings
from tasks import keys, records
from tasks.errors import AlreadyMirroredError, LeaseLostError
from tasks.records import JobResult
from worker.ec2 import Ec2Road
from worker.errors import DRY_RUN_OK, EC2_SAYS_NUMBER_TAKEN, Action, classify
from worker.leases import Lease, Leases
from worker.logs import log_context
from worker.ratelimit import CREATE_ACTION, DESCRIBE_ACTION
from worker.sessions import plan_session_number

Save = Callable[[JobResult], Awaitable[None]]  # records a job's progress, on the loop
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ec2:
    """What a job's attempts use: the road every EC2 call takes, the leases, the settings."""

    road: Ec2Road
    leases: Leases
    settings: Settings

    @property
    def create_bound_s(self) -> float:
        """The longest a create can take: a fenced lease must outlast it."""
        return self.settings.connect_timeout_s + self.settings.read_timeout_s + 1.0


async def sessions_on(ec2: Ec2, eni_id: str) -> list[dict[str, Any]]:
    """Every session on the ENI, a page at a time, each page a call paid for at the limiter;
    a page that fails fails the attempt, which reads again from the start."""
    return await ec2.road.paginate(
        DESCRIBE_ACTION,
        "TrafficMirrorSessions",
        retry=False,
        Filters=[{"Name": "network-interface-id", "Values": [eni_id]}],
    )


class Creates:
    """A job's CreateTrafficMirrorSession calls, and how long one left unanswered (a timeout,
    a dropped connection, a 5xx) may still reach EC2: until `create_bound_s` after it was
    sent (on the road's clock). One that lands later is beyond what mirrorq can fence."""

    def __init__(self, ec2: Ec2) -> None:
        self._ec2 = ec2
        self._clock = ec2.road.timing.monotonic
        self._landing_by = 0.0  # on the clock; 0: none of ours is on its way

    async def send(self, request: dict[str, Any]) -> dict[str, Any]:
        bound_s = self._ec2.create_bound_s
        sent_at = self._clock()
        try:
            response = await self._ec2.road.send(CREATE_ACTION, timeout_s=bound_s, **request)
        except Exception as error:
            if classify(error).retryable:  # unanswered: it may be on its way still
                self._landing_by = sent_at + bound_s
            raise
        self._landing_by = 0.0  # created: one still on its way is answered from the token
        return response

    def may_land_for_s(self) -> float:
        return max(0.0, self._landing_by - self._clock())


async def execute_job(
    ec2: Ec2,
    record: JobResult,
    *,
    save: Save,
    auto: bool,
    alternatives: Sequence[str] = (),
) -> JobResult:
    """Create the session `record["request"]` describes; return the finished record.

    With `auto`, each create is preceded by a read of the ENI's sessions under the ENI's
    lease (the same lease for as long as it is held: a retry does not read again), and the
    create is fenced: sent only while that lease is still this job's. The create slot is
    taken last, just before the create: reads are paid at the Describe limiter alone.

    Raises RedisError when Redis, where the job is recorded, is unreachable, and
    SupersededError when another worker took the job over: nothing is decided then.
    """
    eni_lease = _eni_lease(ec2.road, str((record["request"] or {})["NetworkInterfaceId"]))
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
        # At DEBUG: under throttling a batch retries thousands of times, and the record keeps
        # the last error; the line is for following one job.
        log.debug(
            "EC2 call failed (%s); retrying in %.2f s (%d create attempt(s) so far)",
            failure.code,
            state.upcoming_sleep,
            record["attempts"],
            extra={"error_code": failure.code, "attempt": record["attempts"]},
        )
        record = records.retrying(record, failure.code, failure.message)
        await save(record)

    policy = ec2.road.retrying(before_sleep=on_retry)
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
                # The slot comes before the fence: a fenced lease outlasts the create alone.
                await ec2.road.slot(CREATE_ACTION)
                if holding is not None and not await ec2.leases.fence(holding, ec2.create_bound_s):
                    raise LeaseLostError("the ENI's lease lapsed before the create was sent")
                record = records.attempted(record)
                with log_context(attempt=record["attempts"]):  # botocore's lines of the call
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


def _eni_lease(road: Ec2Road, eni_id: str) -> str:
    """The ENI's lease, in the account and Region of the road its job runs on."""
    if road.own:
        return keys.eni_lease(eni_id)
    return keys.eni_lease(eni_id, road.limiters.account, road.limiters.region)


def _already(record: JobResult) -> str:
    request = record["request"] or {}
    return (
        f"{request.get('NetworkInterfaceId')} is already mirrored to "
        f"{request.get('TrafficMirrorTargetId')} through {request.get('TrafficMirrorFilterId')}"
    )
