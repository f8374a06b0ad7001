"""Each batch's record in Redis: totals, counts by status, job order, its plan, start and end.

A batch's status costs the same for 10 or 10,000 jobs: counts by status are kept in a hash
and moved atomically with each job's record (tasks/store.py).
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis

from tasks import keys
from tasks.contract import DEFAULT_ACCOUNT
from tasks.records import JobResult, JobStatus, queue_of

CHUNK = 1000


class BatchStore:
    """Each batch's record: totals, counts by status, job order, start and end."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def create(
        self,
        pipe: Any,
        batch_id: str,
        job_ids: list[str],
        submitted_at: str,
        source: str | None,
        plan: dict[str, Any] | None,
        places: list[str] | None = None,
    ) -> None:
        """Queue the batch's record on `pipe` (the caller executes it with the jobs').
        `places` are the jobs' "<account>/<region>" (place_of): a batch spanning several
        keeps its counts by them too, moved with each job's status by the step script. Made
        again (an acceptance not confirmed is made again, tasks/replication.py), it writes
        the same: counts set, not added to, and the list of jobs written anew."""
        meta = {
            "total": len(job_ids),
            "done": 0,
            "submitted_at": submitted_at,
            "source": source or "",
            "plan": json.dumps(plan or {}),
        }
        batch = keys.batch(batch_id)
        pipe.hset(batch.record, mapping=meta)
        if job_ids:
            pipe.sadd(keys.RUNNING_BATCHES, batch_id)
            pipe.hset(batch.counts, mapping={JobStatus.QUEUED: len(job_ids)})
            pipe.delete(batch.jobs)
            for start in range(0, len(job_ids), CHUNK):
                chunk = job_ids[start : start + CHUNK]
                pipe.rpush(batch.jobs, *chunk)
                pipe.hset(batch.statuses, mapping=dict.fromkeys(chunk, JobStatus.QUEUED))
            spread = Counter(places or ())
            if len(spread) > 1 and places is not None:
                queued = {f"{place}/{JobStatus.QUEUED}": n for place, n in spread.items()}
                pipe.hset(batch.placed_counts, mapping=queued)
                for start in range(0, len(job_ids), CHUNK):
                    ids, where = job_ids[start : start + CHUNK], places[start : start + CHUNK]
                    pipe.hset(batch.placements, mapping=dict(zip(ids, where, strict=True)))
        else:
            pipe.hset(batch.record, "finished_at", submitted_at)
        pipe.zadd(keys.RECENT_BATCHES, {batch_id: time.time()})
        pipe.zremrangebyrank(keys.RECENT_BATCHES, 0, -keys.RECENT_BATCHES_KEPT - 1)
        for key in batch.all():
            pipe.expire(key, self.ttl_s)

    def keep_latest(self, series: str, batch_id: str, submitted: float, keep: int) -> int:
        """Add `batch_id` to a series of batches (a sorted set by submission time) and delete
        the finished ones older than the newest `keep`; an unfinished one stays until it
        finishes (its jobs still move its counts). Returns how many were deleted."""
        self.redis.zadd(series, {batch_id: submitted})
        self.redis.expire(series, self.ttl_s)
        older = [_text(b) for b in self.redis.zrange(series, 0, -keep - 1)]
        if not older:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for old in older:
                pipe.hmget(keys.batch(old).record, ["total", "finished_at"])
            ends = pipe.execute()
        # Finished, or expired already (no total).
        gone = [old for old, (total, end) in zip(older, ends, strict=True) if end or not total]
        if gone:
            with self.redis.pipeline(transaction=False) as pipe:
                for old in gone:
                    pipe.delete(*keys.batch(old).all())
                pipe.zrem(series, *gone)
                pipe.execute()
        return len(gone)

    def status(self, batch_id: str) -> dict[str, Any] | None:
        with self.redis.pipeline(transaction=False) as pipe:
            batch = keys.batch(batch_id)
            pipe.hgetall(batch.record)
            pipe.hgetall(batch.counts)
            pipe.hgetall(batch.placed_counts)
            meta, counts, placed = pipe.execute()
        if not meta:
            return None
        text = {k.decode(): v.decode() for k, v in meta.items()}
        status: dict[str, Any] = {
            "batch_id": batch_id,
            "total": int(text["total"]),
            "done": int(text.get("done", 0)),
            "counts": {k.decode(): int(v) for k, v in counts.items() if int(v)},
            "submitted_at": text["submitted_at"],
            "finished_at": text.get("finished_at"),
            "source": text.get("source") or None,
            "plan": json.loads(text.get("plan") or "{}"),
        }
        if placed:
            status["by_placement"] = _by_placement(placed)
        return status

    def job_ids(self, batch_id: str) -> Iterator[list[str]]:
        """The batch's job ids in submission order, a chunk at a time."""
        start = 0
        jobs = keys.batch(batch_id).jobs
        while chunk := self.redis.lrange(jobs, start, start + CHUNK - 1):
            yield [j.decode() if isinstance(j, bytes) else j for j in chunk]
            start += CHUNK


def messages_of(jobs: list[JobResult], per_message: int) -> list[list[JobResult]]:
    """A batch's jobs as messages, in the order to publish them.

    A message holds up to `per_message` jobs of one queue and one place (account, Region,
    role): its jobs share a road and a bucket. Each queue's messages take its places in
    turn, so the fleet works on every bucket of a batch at once: in submission order, a
    batch listing its places one after another would have the workers fill one bucket at a
    time, whatever the others could serve."""
    places: dict[tuple[Any, ...], list[JobResult]] = {}
    for record in jobs:
        where = (queue_of(record), record.get("account_id"), record.get("region"))
        places.setdefault((*where, record.get("role_arn")), []).append(record)
    chunked = {
        place: [queued[i : i + per_message] for i in range(0, len(queued), per_message)]
        for place, queued in places.items()
    }
    ordered: list[list[JobResult]] = []
    for turn in itertools.zip_longest(*chunked.values()):
        ordered += [message for message in turn if message is not None]
    return ordered


def place_of(account_id: str | None, region: str | None) -> str:
    """A job's "<account>/<region>" in a batch's counts by placement (`default`: the fleet's
    own credentials' account, MIRRORQ_AWS_ACCOUNT_ID unset)."""
    return f"{account_id or DEFAULT_ACCOUNT}/{region or ''}"


def place_of_record(record: JobResult) -> str:
    """`place_of` the job's record says."""
    return place_of(record.get("account_id"), record.get("region"))


def _by_placement(placed: dict[Any, Any]) -> list[dict[str, Any]]:
    """Counts by "<account>/<region>/<status>" as one entry per account and Region, in order."""
    entries: dict[tuple[str, str], dict[str, int]] = {}
    for field, value in placed.items():
        account, region, status = _text(field).split("/", 2)
        if int(value):
            entries.setdefault((account, region), {})[status] = int(value)
    return [
        {
            "account_id": None if account == DEFAULT_ACCOUNT else account,
            "region": region,
            "total": sum(counts.values()),
            "counts": counts,
        }
        for (account, region), counts in sorted(entries.items())
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
