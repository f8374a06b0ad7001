"""The Celery task: decode the message, run the job on the process's EC2 runtime, record it.

The task is thin on purpose (worker/execute.py holds the logic): it never raises for a
bad job and never asks Celery to retry, so a message can't loop or kill the worker.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from celery import Task
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from config import get_settings
from tasks import keys
from tasks.app import app
from tasks.contract import (
    AUTO,
    TASK_NAME,
    InvalidJobError,
    JobResult,
    JobStatus,
    new_result,
    parse_request,
    utcnow,
)
from tasks.store import ResultStore
from worker.execute import execute_job
from worker.runtime import close_runtime, get_runtime

__all__ = ["app", "create_traffic_mirror_session"]

log = logging.getLogger("mirrorq.jobs")
ENVELOPE_KEYS = frozenset({"request", "batch_id", "submitted_at"})


def decode_envelope(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The documented payload is `kwargs={"request": {...}}` (plus optional batch_id)."""
    if args:
        raise InvalidJobError(
            [
                {
                    "field": "(message)",
                    "message": "positional arguments are not accepted; "
                    "send kwargs={'request': {...}}",
                }
            ]
        )
    unknown = set(kwargs) - ENVELOPE_KEYS
    if unknown:
        raise InvalidJobError(
            [{"field": k, "message": "unknown envelope field"} for k in sorted(unknown)]
        )
    if "request" not in kwargs:
        raise InvalidJobError([{"field": "request", "message": "Field required"}])
    return kwargs


@app.task(name=TASK_NAME, bind=True)
def create_traffic_mirror_session(self: Task[Any, None], *args: Any, **kwargs: Any) -> None:
    job_id = str(self.request.id)
    settings = get_settings()
    store = _store()
    # Only a redelivery can find a record worth reading (attempts so far, a SessionNumber
    # chosen before, or an outcome); a first delivery carries all it needs in the message.
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    previous = store.load(job_id) if redelivered else None
    if store.is_terminal(previous):
        log.info("job %s already %s; redelivery ignored", job_id, previous and previous["status"])
        return
    record: JobResult = previous or new_result(job_id, None)
    record["started_at"] = record["started_at"] or utcnow()
    try:
        envelope = decode_envelope(args, kwargs)
        request = parse_request(envelope["request"])
    except InvalidJobError as error:
        record.update(
            {
                "status": JobStatus.FAILED.value,
                "finished_at": utcnow(),
                "error": {"code": error.code, "message": str(error), "retryable": False},
            }
        )
        store.save(record)
        log.warning("job %s refused: %s", job_id, error)
        return
    record["batch_id"] = envelope.get("batch_id") or record["batch_id"]
    record["submitted_at"] = record["submitted_at"] or envelope.get("submitted_at")
    kwargs_ = request.to_kwargs()
    earlier = record["request"] or {}
    if request.auto_session_number and earlier.get("SessionNumber", AUTO) != AUTO:
        # A redelivery: the number chosen before the first attempt is part of the request now.
        kwargs_ = dict(earlier)
    # The token fixed at acceptance; a producer that sent none gets one derived from the
    # job id, which every redelivery of this message shares.
    kwargs_["ClientToken"] = request.ClientToken or record["client_token"] or job_id
    record.update(
        {
            "request": kwargs_,
            "client_token": kwargs_["ClientToken"],
            "status": JobStatus.RUNNING.value,
        }
    )
    store.save(record)

    runtime = get_runtime(settings)
    leases = runtime.leases if request.auto_session_number else None
    record = runtime.run(
        execute_job(
            runtime.client,
            record,
            settings,
            save=store.save,
            leases=leases,
            limiters=runtime.limiters,
        )
    )
    store.save(record)
    if record["status"] == JobStatus.FAILED.value and record["error"]:
        log.warning(
            "job %s failed after %d attempt(s): %s",
            job_id,
            record["attempts"],
            record["error"]["code"],
        )
    else:
        # The result backend is the record of every job; a log line each would only be noise.
        log.debug("job %s %s after %d attempt(s)", job_id, record["status"], record["attempts"])


@functools.cache
def _store() -> ResultStore:
    return ResultStore(app)


_stop_repair = threading.Event()


def _repair_loop() -> None:
    """Every few seconds, one worker of the fleet (a Redis lock decides which) looks for
    accepted jobs whose message was lost and publishes them again."""
    from tasks.producer import Producer

    settings = get_settings()
    producer = Producer(app, settings)
    client = producer.store.backend.client
    while not _stop_repair.wait(settings.repair_interval_s):
        try:
            if not client.set(
                keys.REPAIR_LOCK, "1", nx=True, px=int(settings.repair_interval_s * 900)
            ):
                continue
            for job_id in producer.repair_lost_jobs(settings.lost_after_s):
                log.warning("job %s was accepted but its message was lost; published again", job_id)
        except Exception:  # a Redis hiccup must not end the repairs
            log.warning("lost-job repair failed; will try again", exc_info=True)


@worker_ready.connect
def _start_repair(**_: Any) -> None:
    threading.Thread(target=_repair_loop, name="mirrorq-repair", daemon=True).start()


@worker_shutdown.connect
@worker_process_shutdown.connect
def _close_ec2_client(**_: Any) -> None:
    _stop_repair.set()
    close_runtime()
