"""The retry policy: the only layer that retries (botocore's retries are off, Celery's unused).

Transient failures are retried with exponential backoff and full jitter, capped, for as
long as the job's deadline allows; permanent failures stop at once. The policy sleeps and
reads the time on the worker's `Timing` (tenacity's own deadline would read time.monotonic).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_random_exponential,
)

from worker.errors import is_transient
from worker.timing import Clock, Timing

OnRetry = Callable[[RetryCallState], Awaitable[None]]
Stop = Callable[[RetryCallState], bool]


def retry_policy(
    *,
    deadline_s: float,
    backoff_base_s: float,
    backoff_cap_s: float,
    timing: Timing,
    before_sleep: OnRetry | None = None,
) -> AsyncRetrying:
    """Sleep ~ U(0, min(cap, base * 2**n)) between attempts; never start one past the deadline.

    The deadline runs from when the policy is made: one policy for one job's attempts, or one
    call's (`Ec2Road.retrying()`)."""
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=backoff_base_s, max=backoff_cap_s),
        stop=stop_before_deadline(deadline_s, timing.monotonic),
        sleep=timing.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def stop_before_deadline(deadline_s: float, clock: Clock) -> Stop:
    """tenacity's `stop_before_delay` on `clock`: stop when the next attempt would start
    `deadline_s` or more from now."""
    deadline = clock() + deadline_s

    def stop(state: RetryCallState) -> bool:
        return clock() + state.upcoming_sleep >= deadline

    return stop
