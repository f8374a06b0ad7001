"""Job records in Celery's Redis result backend, and every write that changes them.

A record is written by one script per step, atomically with what depends on it: the job's
run lease (only the worker holding it may write), the pending index (accepted jobs not yet
finished, which the lost-message repair reads) and its batch's counts. A finished record is
never overwritten (tasks/records.py TERMINAL_STATUSES, handed to the scripts), so a late or
duplicate delivery cannot undo a job's outcome. Each script's arguments are built here by
name, as its TypedDict in tasks/scripts.py says.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import redis.asyncio as aioredis
from celery import Celery, states

from config import Settings
from tasks import keys, replication
from tasks.batches import CHUNK, BatchStore, place_of_record
from tasks.connections import sync_client
from tasks.contract import fleet_scope
from tasks.records import TERMINAL_STATUSES, JobResult, JobStatus, StepVerdict, is_terminal, loaded
from tasks.scripts import (
    ACCEPT,
    ACCEPT_MANY,
    CLAIM_GAPS,
    STEP,
    TERMINAL,
    UNACCEPT,
    UNACCEPT_MANY,
    AcceptArguments,
    AcceptManyArguments,
    ClaimGapsArguments,
    Step,
    StepArguments,
    UnacceptArguments,
    UnacceptManyArguments,
    arguments,
)


@dataclass(frozen=True)
class StepResult:
    verdict: StepVerdict
    current: JobResult | None = None  # the record stored: with done, elsewhere, resume


def celery_state(status: JobStatus) -> str:
    """Terminal jobs are SUCCESS to Celery (the task did its work; `status` says how it went),
    so `AsyncResult(job_id).get()` returns the record, and a late write cannot undo them."""
    return states.SUCCESS if status in TERMINAL_STATUSES else status.upper()


# Submission to outcome, in seconds: the buckets of the fleet's histogram (/metrics).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
# Their fields in the histogram's hash (and the bounds the step script reads).
DURATION_FIELDS = [repr(b) for b in DURATION_BUCKETS]


def seconds_to_finish(record: JobResult) -> str:
    """How long a finished job took from submission ("" for one not finished, or untimed)."""
    if not (record["finished_at"] and record["submitted_at"]):
        return ""
    try:
        took = datetime.fromisoformat(record["finished_at"]) - datetime.fromisoformat(
            record["submitted_at"]
        )
    except ValueError:  # a sender's own submitted_at that is not a timestamp
        return ""
    return repr(max(0.0, took.total_seconds()))


def batch_keys(batch_id: str) -> list[str]:
    """The keys a transition moves: the job's status, the counts, the batch's record."""
    batch = keys.batch(batch_id)
    return [batch.statuses, batch.counts, batch.record]


class ResultStore:
    """Records through Celery's Redis backend (its keys, its encoding), for any process."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        backend: Any = app.backend  # its key names and encoding; the client is ours
        self.backend = backend
        self.settings = settings
        self.client: redis.Redis = sync_client(settings.result_backend, settings)
        self.ttl_s = int(backend.expires or 86400)
        self.lease_ms = int(settings.lease_s * 1000)
        # This process's own account and Region (a worker's: where it acts without a role).
        self.scope = fleet_scope(settings)
        self.batches = BatchStore(self.client, self.ttl_s)
        self._step = self.client.register_script(STEP)
        self._accept = self.client.register_script(ACCEPT)
        self._unaccept = self.client.register_script(UNACCEPT)
        self._claim_gaps = self.client.register_script(CLAIM_GAPS)
        self._accept_many = self.client.register_script(ACCEPT_MANY)
        self._unaccept_many = self.client.register_script(UNACCEPT_MANY)
        # How every acceptance, a job's or a batch's, is confirmed (tasks/replication.py).
        self.confirmation = replication.Confirmation.of(self.client, settings)

    def load(self, job_id: str) -> JobResult | None:
        return self.load_many([job_id])[0]

    def load_many(self, job_ids: list[str]) -> list[JobResult | None]:
        """Many records in one round trip (batch exports)."""
        return self.decode_many(self.client.mget(self.keys_for(job_ids)) if job_ids else [])

    def keys_for(self, job_ids: list[str]) -> list[str]:
        return [self.backend.get_key_for_task(j) for j in job_ids]

    def decode(self, value: Any) -> JobResult | None:
        result = self.backend.decode_result(value).get("result") if value else None
        return loaded(result) if isinstance(result, dict) else None

    def decode_many(self, values: list[Any]) -> list[JobResult | None]:
        return [self.decode(value) for value in values]

    def is_terminal(self, record: JobResult | None) -> bool:
        return is_terminal(record)

    # Acceptance (producers) ------------------------------------------------------------------

    def accept(self, record: JobResult, claim: tuple[str, str] | None = None) -> str | None:
        """Write a new job's `queued` record and pending entry, with its idempotency claim
        (the claim's Redis key, claim JSON) if any, atomically, confirmed as the settings say
        (tasks/replication.py). Returns the earlier claim if the key was taken."""
        script_keys, args = self._accept_arguments(record, claim)

        def earlier_of(written: list[Any]) -> str | None:
            answer = written[0]
            earlier: str | None = answer.decode() if isinstance(answer, bytes) else answer
            if earlier is not None and json.loads(earlier)["job_id"] == record["job_id"]:
                # Made again (a pipeline sent again through a failover after the first
                # reached Redis, or an unconfirmed acceptance not undone): its own claim.
                return None
            return earlier

        def queue(pipe: Any) -> None:
            self._accept(keys=script_keys, args=args, client=pipe)

        def undo(written: list[Any]) -> None:
            if earlier_of(written) is None:  # this job's acceptance, not another's claim
                self.unaccept(record, claim)

        what = f"job {record['job_id']}'s acceptance"
        return earlier_of(self.confirmation.write(self.client, queue, undo, what))

    def unaccept_batch(self, batch_id: str, records: Sequence[JobResult]) -> None:
        """Undo `accept_on` and `BatchStore.create` (nothing of the batch was published): the
        counters lose only the records deleted here."""
        with self.client.pipeline(transaction=False) as pipe:
            for start in range(0, len(records), CHUNK):
                chunk = records[start : start + CHUNK]
                named: UnacceptManyArguments = {
                    "jobs": [r["job_id"] for r in chunk],
                    "statuses": [r["status"] for r in chunk],
                    "places": [place_of_record(r) for r in chunk],
                }
                self._unaccept_many(
                    keys=[keys.PENDING, keys.STATS_STATUS, *self.keys_for(named["jobs"])],
                    args=arguments(named),
                    client=pipe,
                )
            pipe.delete(*keys.batch(batch_id).all())
            pipe.srem(keys.RUNNING_BATCHES, batch_id)
            pipe.zrem(keys.RECENT_BATCHES, batch_id)  # the dashboard's index: no batch to show
            pipe.execute()

    def accept_on(self, pipe: Any, records: Sequence[JobResult]) -> None:
        """The same for many jobs, queued on `pipe` (a batch writes all its records in one
        pipeline): a script a thousand jobs, counting only the records it wrote where there
        were none (tasks/scripts.py `ACCEPT_MANY`)."""
        now = time.time()
        for start in range(0, len(records), CHUNK):
            chunk = records[start : start + CHUNK]
            encoded = [self.encoded(record) for record in chunk]
            named: AcceptManyArguments = {
                "records": [value for _, value in encoded],
                "jobs": [r["job_id"] for r in chunk],
                "statuses": [r["status"] for r in chunk],
                "places": [place_of_record(r) for r in chunk],
                "ttl_s": self.ttl_s,
                "now": now,
            }
            self._accept_many(
                keys=[keys.PENDING, keys.STATS_STATUS, *(key for key, _ in encoded)],
                args=arguments(named),
                client=pipe,
            )

    def claim_gaps(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        """Take each (gap's Redis key, job id) claim for its job, atomically, unless a job
        still pending holds it; for each, None (taken: the job is in the pending index now)
        or the id of the job that holds it."""
        if not claims:
            return []
        named: ClaimGapsArguments = {
            "ttl_s": self.ttl_s,
            "now": time.time(),
            "jobs": [job_id for _, job_id in claims],
        }
        held = self._claim_gaps(
            keys=[keys.PENDING, *(key for key, _ in claims)], args=arguments(named)
        )
        return [(h.decode() if isinstance(h, bytes) else str(h)) or None for h in held]

    def pending_records(self, chunk: int = 1000) -> Iterator[JobResult]:
        """The record of every job in the pending index that has not finished: O(pending),
        read `chunk` at a time (a planner counts what they will make)."""
        ids: list[str] = []
        for member, _ in self.client.zscan_iter(keys.PENDING, count=chunk):
            ids.append(member.decode() if isinstance(member, bytes) else str(member))
            if len(ids) >= chunk:
                yield from (r for r in self.load_many(ids) if r and not is_terminal(r))
                ids = []
        yield from (r for r in self.load_many(ids) if r and not is_terminal(r))

    def keep_pending(self, job_id: str) -> None:
        """Put a job the repair must look at in the pending index (a job another service sent
        was never accepted here), as pending since long ago; kept if it is there."""
        self.client.zadd(keys.PENDING, {job_id: 0}, nx=True)

    def unaccept(self, record: JobResult, claim: tuple[str, str] | None = None) -> None:
        """Undo `accept` (its message could not be queued), if nothing ran the job since."""
        script_keys = [
            self.backend.get_key_for_task(record["job_id"]),
            keys.PENDING,
            keys.STATS_STATUS,
        ]
        named: UnacceptArguments = {
            "job": record["job_id"],
            "queued": JobStatus.QUEUED,
            "status": record["status"],
            "place": place_of_record(record),
        }
        if claim is not None:
            script_keys.append(claim[0])
            named["claim"] = claim[1]
        self._unaccept(keys=script_keys, args=arguments(named))

    def _accept_arguments(
        self, record: JobResult, claim: tuple[str, str] | None
    ) -> tuple[list[str], list[str]]:
        key, value = self.encoded(record)
        script_keys = [key, keys.PENDING, keys.STATS_STATUS]
        named: AcceptArguments = {
            "record": value,
            "ttl_s": self.ttl_s,
            "job": record["job_id"],
            "now": time.time(),
            "status": record["status"],
            "place": place_of_record(record),
        }
        if claim is not None:
            script_keys.append(claim[0])
            named["claim"] = claim[1]
        return script_keys, arguments(named)

    # A worker's steps ------------------------------------------------------------------------

    def step(self, step: Step, record: JobResult, token: str = "") -> StepResult:
        """One step of a job, from a thread (a message refused before it could run)."""
        script_keys, args = self.step_arguments(step, record, token)
        return self.step_result(self._step(keys=script_keys, args=args))

    def step_arguments(
        self, step: Step, record: JobResult, token: str
    ) -> tuple[list[str], list[str]]:
        key, value = self.encoded(record)
        status = JobStatus(record["status"])
        script_keys = [key, keys.PENDING, keys.job_lease(record["job_id"])]
        script_keys += [keys.STATS_STATUS, keys.STATS_FAILED, keys.STATS_DURATION]
        here = self.scope
        named: StepArguments = {
            "step": step,
            "record": value,
            "ttl_s": self.ttl_s,
            "job": record["job_id"],
            "token": token,
            "lease_ms": self.lease_ms,
            "status": status,
            "now": record["finished_at"] or record["started_at"] or "",
            "terminal": TERMINAL,
            "queued": JobStatus.QUEUED,
            "batch": record["batch_id"] or "",
            "worker": {
                "account": here.account_id or "",
                "region": here.region,
                "queue": here.queue,
            },
            "placement": {
                "account": record.get("account_id") or "",
                "region": record.get("region") or "",
                "role": record.get("role_arn") or "",
                "queue": record.get("queue") or "",
            },
        }
        error = record["error"] if status is JobStatus.FAILED else None
        if error and error["code"]:
            named["error_code"] = error["code"]
        if seconds := seconds_to_finish(record):
            named["seconds"], named["buckets"] = seconds, DURATION_FIELDS
        if record["batch_id"]:
            batch = keys.batch(record["batch_id"])
            script_keys += [*batch_keys(record["batch_id"]), keys.RUNNING_BATCHES]
            script_keys += [batch.placements, batch.placed_counts]
        return script_keys, arguments(named)

    def step_result(self, answer: list[Any]) -> StepResult:
        verdict = answer[0].decode() if isinstance(answer[0], bytes) else answer[0]
        current = self.decode(answer[1]) if len(answer) > 1 else None
        return StepResult(StepVerdict(verdict), current)

    def encoded(self, record: JobResult) -> tuple[str, str]:
        """The key and value Celery's Redis backend would write for this record."""
        status = celery_state(JobStatus(record["status"]))
        meta: dict[str, Any] = {
            "status": status,
            "result": record,
            "traceback": None,
            "children": [],
            "date_done": record["finished_at"] if status == states.SUCCESS else None,
            "task_id": record["job_id"],
        }
        return self.backend.get_key_for_task(record["job_id"]), self.backend.encode(meta)


class AsyncResultStore:
    """The same records and steps on a worker's event loop (redis.asyncio): a job's writes
    never block the loop every job in the process shares, nor cost a thread hop."""

    def __init__(self, store: ResultStore, client: aioredis.Redis) -> None:
        self._store = store
        self._client = client
        self._step = client.register_script(STEP)

    async def load_many(self, job_ids: list[str]) -> list[JobResult | None]:
        return self._store.decode_many(await self._client.mget(self._store.keys_for(job_ids)))

    async def step(self, step: Step, record: JobResult, token: str) -> StepResult:
        script_keys, args = self._store.step_arguments(step, record, token)
        return self._store.step_result(await self._step(keys=script_keys, args=args))
