"""Job results in Celery's Redis result backend, one record per job id; batch counts beside."""

from __future__ import annotations

import time
from typing import Any, cast

from celery import Celery, states

from tasks import keys
from tasks.batches import BatchStore
from tasks.contract import TERMINAL_STATUSES, JobResult, JobStatus

# Celery's own store_result reads the record, then writes it: two round trips, and a window
# between them. This does the same in one atomic step: a finished record (SUCCESS) is never
# overwritten, so a late or duplicate delivery cannot undo a job's outcome.
_STORE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['status'] == 'SUCCESS' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def celery_state(status: str) -> str:
    """Terminal jobs are SUCCESS to Celery (the task did its work; `status` says how it went),
    so `AsyncResult(job_id).get()` returns the record, and a late write cannot undo them."""
    return states.SUCCESS if status in TERMINAL_STATUSES else status.upper()


class ResultStore:
    def __init__(self, app: Celery) -> None:
        backend: Any = app.backend
        self.backend = backend
        self.ttl_s = int(backend.expires or 86400)
        self.batches = BatchStore(backend.client, self.ttl_s)
        self._store = backend.client.register_script(_STORE)

    def load(self, job_id: str) -> JobResult | None:
        meta = self.backend.get_task_meta(job_id)
        result = meta.get("result")
        return cast(JobResult, result) if isinstance(result, dict) else None

    def load_many(self, job_ids: list[str]) -> list[JobResult | None]:
        """Many records in one round trip (batch exports)."""
        raw = self.backend.client.mget([self.backend.get_key_for_task(j) for j in job_ids])
        records: list[JobResult | None] = []
        for value in raw:
            result = self.backend.decode_result(value).get("result") if value else None
            records.append(cast(JobResult, result) if isinstance(result, dict) else None)
        return records

    def save(self, record: JobResult) -> None:
        """Store the record (and move its batch's counts) in one round trip."""
        with self.backend.client.pipeline(transaction=False) as pipe:
            key, value = self._encoded(record)
            self._store(keys=[key], args=[value, self.ttl_s], client=pipe)
            pipe.zrem(keys.PENDING, record["job_id"])  # started: no longer at risk of loss
            if record["batch_id"]:
                now = record["finished_at"] or record["started_at"] or ""
                self.batches.transition(
                    record["batch_id"], record["job_id"], record["status"], now, client=pipe
                )
            pipe.execute()

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
        return record is not None and JobStatus(record["status"]) in TERMINAL_STATUSES
