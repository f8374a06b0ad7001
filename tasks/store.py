"""Job results in Celery's Redis result backend, one record per job id; batch counts beside."""

from __future__ import annotations

import time
from typing import Any, cast

import redis.asyncio as aioredis
from celery import Celery, states

from tasks import keys
from tasks.batches import TERMINAL_ARG, TRANSITION_FUNCTION, BatchStore, batch_keys
from tasks.contract import TERMINAL_STATUSES, JobResult, JobStatus

# Celery's own store_result reads the record, then writes it: two round trips, and a window
# between them. This does the same in one atomic step: a finished record (SUCCESS) is never
# overwritten, so a late or duplicate delivery cannot undo a job's outcome. The same step
# takes the job off the pending index and moves its batch's counts. One script, one command:
# a pipeline of scripts would cost redis-py a SCRIPT EXISTS round trip on every save.
# KEYS: record, pending index[, batch statuses, batch counts, batch record]
# ARGV: record JSON, ttl, job id[, status, now, terminal statuses]
_SAVE = (
    TRANSITION_FUNCTION
    + """
local current = redis.call('GET', KEYS[1])
local stored = 0
if not (current and cjson.decode(current)['status'] == 'SUCCESS') then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  redis.call('PUBLISH', KEYS[1], ARGV[1])
  stored = 1
end
redis.call('ZREM', KEYS[2], ARGV[3])
if #KEYS == 5 then
  transition(KEYS[3], KEYS[4], KEYS[5], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
end
return stored
"""
)


def celery_state(status: str) -> str:
    """Terminal jobs are SUCCESS to Celery (the task did its work; `status` says how it went),
    so `AsyncResult(job_id).get()` returns the record, and a late write cannot undo them."""
    return states.SUCCESS if status in TERMINAL_STATUSES else status.upper()


class ResultStore:
    """Records through Celery's Redis backend (its keys, its encoding), for producers and CLI."""

    def __init__(self, app: Celery) -> None:
        backend: Any = app.backend
        self.backend = backend
        self.ttl_s = int(backend.expires or 86400)
        self.batches = BatchStore(backend.client, self.ttl_s)
        self._save = backend.client.register_script(_SAVE)

    def load(self, job_id: str) -> JobResult | None:
        meta = self.backend.get_task_meta(job_id)
        result = meta.get("result")
        return cast(JobResult, result) if isinstance(result, dict) else None

    def load_many(self, job_ids: list[str]) -> list[JobResult | None]:
        """Many records in one round trip (batch exports)."""
        return self.decode_many(self.backend.client.mget(self.keys_for(job_ids)))

    def keys_for(self, job_ids: list[str]) -> list[str]:
        return [self.backend.get_key_for_task(j) for j in job_ids]

    def decode_many(self, values: list[Any]) -> list[JobResult | None]:
        records: list[JobResult | None] = []
        for value in values:
            result = self.backend.decode_result(value).get("result") if value else None
            records.append(cast(JobResult, result) if isinstance(result, dict) else None)
        return records

    def save(self, record: JobResult) -> None:
        """Store the record, and move its batch's counts, in one atomic round trip."""
        script_keys, args = self.save_arguments(record)
        self._save(keys=script_keys, args=args)

    def save_arguments(self, record: JobResult) -> tuple[list[str], list[Any]]:
        """The save script's keys and arguments for this record."""
        key, value = self._encoded(record)
        script_keys, args = [key, keys.PENDING], [value, self.ttl_s, record["job_id"]]
        if record["batch_id"]:
            script_keys += batch_keys(record["batch_id"])
            now = record["finished_at"] or record["started_at"] or ""
            args += [record["status"], now, TERMINAL_ARG]
        return script_keys, args

    def queue_initial(self, pipe: Any, record: JobResult) -> None:
        """Write a new job's `queued` record on `pipe`, and note it as pending."""
        key, value = self._encoded(record)
        pipe.set(key, value, ex=self.ttl_s)
        pipe.zadd(keys.PENDING, {record["job_id"]: time.time()})

    def _encoded(self, record: JobResult) -> tuple[str, str]:
        """The key and value Celery's Redis backend would write for this record."""
        status = celery_state(record["status"])
        meta: dict[str, Any] = {
            "status": status,
            "result": record,
            "traceback": None,
            "children": [],
            "date_done": record["finished_at"] if status == states.SUCCESS else None,
            "task_id": record["job_id"],
        }
        return self.backend.get_key_for_task(record["job_id"]), self.backend.encode(meta)

    def is_terminal(self, record: JobResult | None) -> bool:
        return is_terminal(record)


def is_terminal(record: JobResult | None) -> bool:
    return record is not None and JobStatus(record["status"]) in TERMINAL_STATUSES


class AsyncResultStore:
    """The same records and script on a worker's event loop (redis.asyncio): a job's writes
    never block the loop that every job in the process shares, nor cost a thread hop."""

    def __init__(self, store: ResultStore, client: aioredis.Redis) -> None:
        self._store = store
        self._client = client
        self._save = client.register_script(_SAVE)

    async def load_many(self, job_ids: list[str]) -> list[JobResult | None]:
        return self._store.decode_many(await self._client.mget(self._store.keys_for(job_ids)))

    async def save(self, record: JobResult) -> None:
        script_keys, args = self._store.save_arguments(record)
        await self._save(keys=script_keys, args=args)
