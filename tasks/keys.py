"""Every Redis key mirrorq writes itself (Celery's own keys aside), in one place."""

PREFIX = "mirrorq"


def idempotency(key: str) -> str:
    return f"{PREFIX}:idempotency:{key}"


def eni_lease(eni_id: str) -> str:
    """String: the token of the job planning and creating on this ENI (worker/leases.py)."""
    return f"{PREFIX}:eni-lease:{eni_id}"


def job_lease(job_id: str) -> str:
    """String: the token of the worker running this job, so no copy of it runs beside it."""
    return f"{PREFIX}:job-lease:{job_id}"


def batch(batch_id: str) -> str:
    """Hash: total, done, submitted_at, finished_at, source, plan (JSON)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_counts(batch_id: str) -> str:
    """Hash: status -> number of the batch's jobs in it."""
    return f"{PREFIX}:batch:{batch_id}:counts"


def batch_statuses(batch_id: str) -> str:
    """Hash: job id -> its status, so a transition moves exactly one count."""
    return f"{PREFIX}:batch:{batch_id}:statuses"


def batch_jobs(batch_id: str) -> str:
    """List: the batch's job ids in submission order."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def rate_limit(account: str, region: str, action: str) -> str:
    """Hash: the shared limiter's state (tat, rate, updated, last_cut, throttles)."""
    return f"{PREFIX}:rate:{account}:{region}:{action}"


PENDING = f"{PREFIX}:pending"  # sorted set: accepted jobs not yet finished, by submission time
REPAIR_LOCK = f"{PREFIX}:repair-lock"
REPAIR_SUSPECTS = f"{PREFIX}:repair-suspects"  # jobs that looked lost at the previous sweep
KOMBU_UNACKED = "unacked"  # kombu's Redis transport: delivery tag -> message held by a worker
