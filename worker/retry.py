"""The retry policy: the only layer that retries (botocore's retries are off, Celery's unused).

Transient failures are retried with exponential backoff and full jitter, capped, for as
long as the job's deadline allows; permanent failures stop at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

from worker.errors import is_transient
from worker.timing import Sleep

OnRetry = Callable[[RetryCallState], Awaitable[None]]


def retry_policy(
    *,
    deadline_s: float,
    backoff_base_s: float,
    backoff_cap_s: float,
    sleep: Sleep = asyncio.sleep,
    before_sleep: OnRetry | None = None,
) -> AsyncRetrying:
    """Sleep ~ U(0, min(cap, base * 2**n)) between attempts; never start one past the deadline."""
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=backoff_base_s, max=backoff_cap_s),
        stop=stop_before_delay(deadline_s),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
