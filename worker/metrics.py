"""A process's own metrics: jobs in flight, and EC2 call latency by action and outcome, the
latter recorded by every process's road (worker/ec2.py) and served by `mirrorq worker
--metrics-port`. The fleet's metrics are the API's, read from Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import Counter, Gauge, Histogram

from worker.timing import Clock

JOBS_IN_FLIGHT = Gauge("mirrorq_worker_jobs_in_flight", "Jobs this worker process is running")
JOBS_DEFERRED = Counter(
    "mirrorq_worker_jobs_deferred",
    "Jobs this worker process published again for later: their bucket could not serve them "
    "within the admission horizon (worker/admission.py)",
)
EC2_CALLS = Histogram(
    "mirrorq_ec2_call_seconds",
    "EC2 calls made by this process, by action and outcome (ok, or the error code)",
    ["action", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


@asynccontextmanager
async def ec2_call(action: str, clock: Clock) -> AsyncIterator[None]:
    """Time one EC2 call on `clock` (the road's monotonic one); its outcome is `ok`, or the
    code of what it raised."""
    from worker.errors import classify  # the error table; imported late, only when timing

    started = clock()
    outcome = "ok"
    try:
        yield
    except Exception as error:
        outcome = classify(error).code
        raise
    finally:
        EC2_CALLS.labels(action, outcome).observe(clock() - started)
