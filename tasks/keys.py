"""Every Redis key mirrorq writes itself (Celery's own keys aside), in one place."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "mirrorq"


def _key(*parts: str) -> str:
    return ":".join((PREFIX, *parts))


# String: a counter every write that must be replicated bumps just before its WAIT
# (tasks/replication.py). WAIT covers the writes of its own connection, up to its last one;
# a write of its own makes it cover everything Redis applied before it, whichever
# connection wrote that (a lease taken, a message published).
REPLICATION_FENCE = _key("replication-fence")


def idempotency(key: str, where: tuple[str, str] | None = None) -> str:
    """String: {"job_id", "request_sha256"} of the job a client's idempotency key names.
    `where`: the (account, Region) of a job placed outside its fleet's own, so the same key
    in two accounts names two jobs (in a namespace of their own, which no unscoped key can
    spell); a job in the fleet's own keeps the key it always had."""
    return _key("idempotency", key) if where is None else _key("idempotency-in", *where, key)


def event_claim(key: str, where: tuple[str, str] | None = None) -> str:
    """String: the same, for the job an event makes for one ENI and rule (mirrorq/intake.py),
    scoped the same way. A namespace of its own: no client's key can take an event's job."""
    return _key("event-claim", key) if where is None else _key("event-claim-in", *where, key)


def gap_claim(key: str) -> str:
    """String: the id of the job a reconcile pass submitted for one gap (an ENI not yet
    mirrored to a rule's targets through its filter). It holds while that job is pending: a
    later pass, or another reconcile process, submits nothing for the gap until it finishes
    (tasks/scripts.py CLAIM_GAPS)."""
    return _key("gap-claim", key)


def eni_lease(eni_id: str, account: str | None = None, region: str | None = None) -> str:
    """String: the token of the job reading and creating on this ENI (worker/leases.py).
    An ENI of the fleet's own account and Region keeps the key it always had; one elsewhere
    is keyed by its account and Region too (an id is only unique within them)."""
    if account is None or region is None:
        return _key("eni-lease", eni_id)
    return _key("eni-lease", account, region, eni_id)


def job_lease(job_id: str) -> str:
    """String: the token of the worker running this job, so no copy of it runs beside it."""
    return _key("job-lease", job_id)


def rate_limit(account: str, region: str, action: str) -> str:
    """Hash: the shared limiter's state (tat, rate, updated, last_event, epoch, throttles)
    and the bucket's configuration for the fleet (configured, burst, source)."""
    return _key("rate", account, region, action)


@dataclass(frozen=True)
class BatchKeys:
    """A batch's keys."""

    record: str  # hash: total, done, submitted_at, finished_at, source, plan (JSON)
    counts: str  # hash: status -> number of the batch's jobs in it
    statuses: str  # hash: job id -> its status, so a transition moves exactly one count
    jobs: str  # list: the batch's job ids in submission order
    # Only for a batch spanning several accounts or Regions:
    placements: str  # hash: job id -> "<account>/<region>" it runs in
    placed_counts: str  # hash: "<account>/<region>/<status>" -> number of the batch's jobs

    def all(self) -> tuple[str, ...]:
        return (
            self.record,
            self.counts,
            self.statuses,
            self.jobs,
            self.placements,
            self.placed_counts,
        )


def batch(batch_id: str) -> BatchKeys:
    record = _key("batch", batch_id)
    return BatchKeys(
        record,
        f"{record}:counts",
        f"{record}:statuses",
        f"{record}:jobs",
        f"{record}:placements",
        f"{record}:placed-counts",
    )


STATS_STATUS = _key("stats", "status")  # hash: status -> jobs that entered it (a counter)
# hash: "<account>/<region>/<status>" -> jobs of that place that entered it; the scripts name
# it from STATS_STATUS (KEYS[n] .. ":placed"), a key they are given
STATS_PLACED = f"{STATS_STATUS}:placed"
STATS_FAILED = _key("stats", "failed")  # hash: error code -> jobs that failed with it
STATS_DURATION = _key("stats", "duration")  # hash: submission-to-outcome bucket -> jobs, sum
RUNNING_BATCHES = _key("batches", "running")  # set: batches not finished yet
# sorted set: batches by submission time (Unix), the newest RECENT_BATCHES_KEPT kept, so the
# dashboard lists recent ones without scanning keys (tasks/batches.py create)
RECENT_BATCHES = _key("batches", "recent")
RECENT_BATCHES_KEPT = 200
# sorted set: reconcile's pass batches by submission time, the finished ones past the newest
# few deleted (tasks/batches.py keep_latest)
RECONCILE_PASSES = _key("reconcile", "passes")
# string: the last reconcile pass's coverage, counts only (mirrorq/coverage.py store_view),
# read by the API's gauges
COVERAGE_VIEW = _key("coverage", "view")
PENDING = _key("pending")  # sorted set: accepted jobs not yet finished, by submission time
REPAIR_LOCK = _key("repair-lock")
REPAIR_SUSPECTS = _key("repair-suspects")  # jobs that looked lost at the previous sweep
KOMBU_UNACKED = "unacked"  # kombu's Redis transport: delivery tag -> message held by a worker
