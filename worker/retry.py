"""The retry policy: the only layer that retries (botocore's retries are off, Celery's unused).

Transient failures are retried with exponential backoff and full jitter, capped, for as
long as the job's deadline allows; permanent failures stop at once. The policy sleeps and
reads the time on the worker's `Timing` (tenacity's own deadline would read time.monotonic).
A lease found lost before a create (LeaseLost) sent nothing to EC2: it is retried within the
backoff's base whatever failed before (through a Sentinel failover it may be lost more than
once while a worker's connections still reach the old primary; EC2 is not the one to spare).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_random_exponential,
)

from tasks.errors import LeaseLostError
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
        wait=_backoff(backoff_base_s, backoff_cap_s),
        stop=stop_before_deadline(deadline_s, timing.monotonic),
        sleep=timing.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def _backoff(base_s: float, cap_s: float) -> Callable[[RetryCallState], float]:
    exponential = wait_random_exponential(multiplier=base_s, max=cap_s)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, LeaseLostError):
            return random.uniform(0, base_s)
        return float(exponential(state))

    return wait


def stop_before_deadline(deadline_s: float, clock: Clock) -> Stop:
    """tenacity's `stop_before_delay` on `clock`: stop when the next attempt would start
    `deadline_s` or more from now."""
    deadline = clock() + deadline_s

    def stop(state: RetryCallState) -> bool:
        return clock() + state.upcoming_sleep >= deadline

    return stop
