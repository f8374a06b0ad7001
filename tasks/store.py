"""Job results in Celery's Redis result backend, one record per job id; batch counts beside."""

from __future__ import annotations

from typing import Any, cast

from celery import Celery, states

from tasks.batches import BatchStore
from tasks.contract import TERMINAL_STATUSES, JobResult, JobStatus


def celery_state(status: str) -> str:
    """Terminal jobs are SUCCESS to Celery (the task did its work; `status` says how it went),
    so `AsyncResult(job_id).get()` returns the record, and a late write cannot undo them."""
    return states.SUCCESS if status in TERMINAL_STATUSES else status.upper()


class ResultStore:
    def __init__(self, app: Celery) -> None:
        backend: Any = app.backend
        self.backend = backend
        self.batches = BatchStore(backend.client, int(backend.expires or 86400))

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
        self.backend.store_result(record["job_id"], record, celery_state(record["status"]))
        if record["batch_id"]:
            now = record["finished_at"] or record["started_at"] or ""
            self.batches.transition(record["batch_id"], record["job_id"], record["status"], now)

    def queue_initial(self, pipe: Any, record: JobResult) -> None:
        """Write a new job's `queued` record on `pipe`, as Celery's backend would store it."""
        meta: dict[str, Any] = {
            "status": celery_state(record["status"]),
            "result": record,
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": record["job_id"],
        }
        pipe.set(
            self.backend.get_key_for_task(record["job_id"]),
            self.backend.encode(meta),
            ex=int(self.backend.expires or 86400),
        )

    def is_terminal(self, record: JobResult | None) -> bool:
        return record is not None and JobStatus(record["status"]) in TERMINAL_STATUSES
