"""Job results in Celery's Redis result backend, one record per job id."""

from __future__ import annotations

from typing import Any, cast

from celery import Celery, states

from tasks.contract import TERMINAL_STATUSES, JobResult, JobStatus


def celery_state(status: str) -> str:
    """Terminal jobs are SUCCESS to Celery (the task did its work; `status` says how it went),
    so `AsyncResult(job_id).get()` returns the record, and a late write cannot undo them."""
    return states.SUCCESS if status in TERMINAL_STATUSES else status.upper()


class ResultStore:
    def __init__(self, app: Celery) -> None:
        self.backend: Any = app.backend

    def load(self, job_id: str) -> JobResult | None:
        meta = self.backend.get_task_meta(job_id)
        result = meta.get("result")
        return cast(JobResult, result) if isinstance(result, dict) else None

    def save(self, record: JobResult) -> None:
        self.backend.store_result(record["job_id"], record, celery_state(record["status"]))

    def is_terminal(self, record: JobResult | None) -> bool:
        return record is not None and JobStatus(record["status"]) in TERMINAL_STATUSES
