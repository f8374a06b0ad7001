"""Running one job against EC2: the attempts, the retry policy and the outcome.

Pure of Celery: the task in tasks/jobs.py decodes the message and stores what this returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from tenacity import RetryCallState
from types_aiobotocore_ec2 import EC2Client

from config import Settings
from tasks.contract import JobResult, JobStatus
from worker.errors import DRY_RUN_OK, classify
from worker.retry import Sleep, retry_policy

Save = Callable[[JobResult], None]


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def execute_job(
    client: EC2Client,
    record: JobResult,
    settings: Settings,
    *,
    save: Save,
    sleep: Sleep = asyncio.sleep,
    acquire: Callable[[], Awaitable[None]] | None = None,
) -> JobResult:
    """Create the session described by `record["request"]`; return the finished record.

    `record["request"]` already carries the job's ClientToken: every attempt sends exactly
    these arguments, so EC2 can tell a retry from a new request.
    """
    kwargs: dict[str, Any] = dict(record["request"] or {})

    async def publish_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        failure = classify(error) if error is not None else None
        record["status"] = JobStatus.RETRYING.value
        if failure is not None:
            record["error"] = {"code": failure.code, "message": failure.message, "retryable": True}
        # A blocking Redis write must not stall the loop every other job shares.
        await asyncio.to_thread(save, dict(record))  # type: ignore[arg-type]

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
                if acquire is not None:
                    await acquire()
                record["attempts"] += 1
                response = await client.create_traffic_mirror_session(**kwargs)
    except Exception as error:
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
    record["finished_at"] = utcnow()
    return record
