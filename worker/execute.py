"""Running one job against EC2: the attempts, the retry policy and the outcome.

Pure of Celery: the task in tasks/jobs.py decodes the message and stores what this returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tenacity import RetryCallState

from config import Settings
from tasks.contract import AUTO, JobResult, JobStatus, utcnow
from worker.errors import DRY_RUN_OK, AlreadyMirroredError, EniBusyError, classify
from worker.ratelimit import Limiters, SharedRateLimiter
from worker.retry import Sleep, retry_policy
from worker.sessions import EniLeases, lowest_free_session_number, same_mirror

if TYPE_CHECKING:  # stubs only: a development dependency
    from types_aiobotocore_ec2 import EC2Client

Save = Callable[[JobResult], Awaitable[None]]  # records a job's progress, on the loop
log = logging.getLogger(__name__)
SLOW_SLOT_WARNING_EVERY_S = 60.0
_last_slow_slot_warning = -SLOW_SLOT_WARNING_EVERY_S


def slow_slot_warning(waited_s: float, settings: Settings) -> str | None:
    """A slot wait long enough to threaten the visibility timeout, explained; else None.

    Every job a worker holds waits for its slot while its message stays unacked: when the
    fleet holds more jobs than the shared rate serves within the visibility timeout, Redis
    hands messages still waiting to a second worker. Harmless (same tokens, finished jobs
    are skipped) but wasteful, and a sign the fleet is sized past the account's rate.
    """
    if waited_s < settings.visibility_timeout_s / 4:
        return None
    return (
        f"waited {waited_s:.0f} s for an EC2 slot: the fleet holds more jobs than "
        f"{settings.ec2_rate:g} calls/s can serve within the {settings.visibility_timeout_s} s "
        "visibility timeout, so waiting messages may be handed to a second worker; lower "
        "MIRRORQ_CONCURRENCY or run fewer workers, or raise MIRRORQ_VISIBILITY_TIMEOUT_S"
    )


async def _take_slot(limiter: SharedRateLimiter | None, settings: Settings) -> None:
    global _last_slow_slot_warning  # noqa: PLW0603 - one warning a minute per process
    if limiter is None:
        return
    warning = slow_slot_warning(await limiter.acquire(), settings)
    now = time.monotonic()
    if warning and now - _last_slow_slot_warning >= SLOW_SLOT_WARNING_EVERY_S:
        _last_slow_slot_warning = now
        log.warning(warning)


async def _sessions_on(
    client: EC2Client, eni_id: str, limiter: SharedRateLimiter | None, settings: Settings
) -> list[dict[str, Any]]:
    """Every session on the ENI, a page at a time, each page a call paid for at the limiter."""
    sessions: list[dict[str, Any]] = []
    token: dict[str, Any] = {}
    while True:
        await _take_slot(limiter, settings)
        page = await client.describe_traffic_mirror_sessions(
            Filters=[{"Name": "network-interface-id", "Values": [eni_id]}], **token
        )
        sessions += [dict(s) for s in page.get("TrafficMirrorSessions", [])]
        if not page.get("NextToken"):
            return sessions
        token = {"NextToken": page["NextToken"]}


async def _choose_session_number(
    client: EC2Client,
    record: JobResult,
    kwargs: dict[str, Any],
    save: Save,
    limiter: SharedRateLimiter | None,
    settings: Settings,
) -> None:
    """Resolve SessionNumber "auto" and record it before the first create is sent.

    From then on every retry and redelivery sends identical parameters with the same token.
    """
    eni_id = kwargs["NetworkInterfaceId"]
    existing = await _sessions_on(client, eni_id, limiter, settings)
    mirrored = same_mirror(
        existing, kwargs["TrafficMirrorTargetId"], kwargs["TrafficMirrorFilterId"]
    )
    if mirrored is not None:
        raise AlreadyMirroredError(
            f"{eni_id} is already mirrored to {kwargs['TrafficMirrorTargetId']} through "
            f"{kwargs['TrafficMirrorFilterId']} by {mirrored['TrafficMirrorSessionId']}"
        )
    # With no number free (3 sessions is EC2's limit anyway) EC2 gives the precise answer.
    kwargs["SessionNumber"] = lowest_free_session_number(s["SessionNumber"] for s in existing) or 1
    record["request"] = dict(kwargs)
    await save(record)


async def execute_job(
    client: EC2Client,
    record: JobResult,
    settings: Settings,
    *,
    save: Save,
    leases: EniLeases | None = None,
    limiters: Limiters | None = None,
    sleep: Sleep = asyncio.sleep,
) -> JobResult:
    """Create the session described by `record["request"]`; return the finished record.

    `record["request"]` already carries the job's ClientToken: every attempt sends exactly
    these arguments, so EC2 can tell a retry from a new request. With `leases`, the job
    holds its ENI's lease while it plans and creates (SessionNumber "auto"). With
    `limiters`, every EC2 call first takes its slot from the fleet-wide rate limiter.
    """
    limits = limiters or Limiters(create=None, describe=None)
    kwargs: dict[str, Any] = dict(record["request"] or {})
    eni_id: str = kwargs["NetworkInterfaceId"]
    leased = False

    async def publish_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        record["status"] = JobStatus.RETRYING.value
        if error is not None:
            failure = classify(error)
            record["error"] = {"code": failure.code, "message": failure.message, "retryable": True}
            if failure.throttled and limits.create is not None:
                await limits.create.throttled()
        await save(record)

    policy = retry_policy(
        deadline_s=settings.job_deadline_s,
        backoff_base_s=settings.backoff_base_s,
        backoff_cap_s=settings.backoff_cap_s,
        sleep=sleep,
        before_sleep=publish_retry,
    )
    try:
        async for attempt in policy:
            with attempt:
                if leases is not None and not leased:
                    if not await leases.acquire(eni_id, record["job_id"]):
                        raise EniBusyError(f"another job is creating a session on {eni_id}")
                    leased = True
                if kwargs["SessionNumber"] == AUTO:
                    await _choose_session_number(
                        client, record, kwargs, save, limits.describe, settings
                    )
                await _take_slot(limits.create, settings)
                record["attempts"] += 1
                response = await client.create_traffic_mirror_session(**kwargs)
    except Exception as error:  # every failure becomes the job's recorded outcome
        failure = classify(error)
        if failure.code == DRY_RUN_OK:
            record.update({"status": JobStatus.DRY_RUN_OK.value, "error": None})
        else:
            record.update(
                {
                    "status": JobStatus.FAILED.value,
                    "error": {
                        "code": failure.code,
                        "message": failure.message,
                        "retryable": failure.retryable,
                    },
                }
            )
    else:
        answer = {k: v for k, v in response.items() if k != "ResponseMetadata"}
        record.update({"status": JobStatus.CREATED.value, "response": answer, "error": None})
    finally:
        if leased and leases is not None:
            await leases.release(eni_id, record["job_id"])
    record["finished_at"] = utcnow()
    return record
