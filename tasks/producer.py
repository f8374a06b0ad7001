"""The producer API: accept a job (validate, fix its ClientToken, enqueue) and read results."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery

from config import Settings, get_settings
from tasks import keys
from tasks.contract import (
    BATCH_TASK_NAME,
    QUEUE,
    TASK_NAME,
    JobResult,
    SessionRequest,
    new_result,
    parse_request,
    utcnow,
)
from tasks.store import ResultStore


def held_job_ids(unacked: list[bytes]) -> set[str]:
    """The jobs in the messages workers hold unacked (values of kombu's `unacked` hash: the
    raw message, exchange and routing key). A batch message holds several, in its body."""
    held: set[str] = set()
    for value in unacked:
        try:
            message = json.loads(value)[0]
            headers = message["headers"]
            held.add(headers["id"])
            if headers.get("task") == BATCH_TASK_NAME:
                body = message["body"]
                if message["properties"].get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                _, kwargs, _ = json.loads(body)
                held.update(str(job["job_id"]) for job in kwargs["jobs"])
        except (ValueError, LookupError, TypeError):
            continue  # not a message mirrorq sent
    return held


class IdempotencyConflictError(ValueError):
    """The idempotency key was already used for a different request."""


class Producer:
    """Submits jobs to the queue and reads their results; cheap to create, thread-safe."""

    def __init__(self, app: Celery | None = None, settings: Settings | None = None) -> None:
        if app is None:
            from tasks.app import app as default_app

            app = default_app
        self.app = app
        self.settings = settings or get_settings()
        self.store = ResultStore(app)
        self.redis = redis.Redis.from_url(self.settings.broker_url)

    def submit(
        self, request: Any, *, idempotency_key: str | None = None, batch_id: str | None = None
    ) -> str:
        """Validate and enqueue one job; return its id. Raises InvalidJobError naming fields."""
        parsed = parse_request(request)
        job_id = str(uuid.uuid4())
        kwargs = parsed.to_kwargs()
        if idempotency_key is not None:
            existing = self._claim(idempotency_key, job_id, kwargs)
            if existing is not None:
                return existing
        kwargs.setdefault("ClientToken", job_id)
        record = new_result(
            job_id,
            kwargs,
            batch_id=batch_id,
            client_token=kwargs["ClientToken"],
            submitted_at=utcnow(),
        )
        with self.store.backend.client.pipeline(transaction=False) as pipe:
            self.store.queue_initial(pipe, record)
            pipe.execute()
        self._publish(job_id, kwargs, batch_id, record["submitted_at"])
        return job_id

    def repair_lost_jobs(self, lost_after_s: float) -> list[str]:
        """Publish again the accepted jobs whose message is gone; return their ids.

        A job counts as lost when it is still `queued` long after submission, the queue is
        empty (so it is not waiting there) and no worker holds its message, twice in a row
        (one sweep could race a worker that just popped it). Publishing again is safe: the
        job keeps its id and ClientToken, and a finished job is never run twice.
        """
        client = self.store.backend.client
        if client.llen(QUEUE):
            return []
        cutoff = time.time() - lost_after_s
        candidates = [
            j.decode()
            for j in client.zrangebyscore(keys.PENDING, "-inf", cutoff, start=0, num=1000)
        ]
        if not candidates:
            client.delete(keys.REPAIR_SUSPECTS)
            return []
        held = held_job_ids(client.hvals(keys.KOMBU_UNACKED))
        suspects = {s.decode() for s in client.smembers(keys.REPAIR_SUSPECTS)}
        lost: list[tuple[str, JobResult]] = []
        now_suspect: list[tuple[str, JobResult]] = []
        for job_id, record in zip(candidates, self.store.load_many(candidates), strict=True):
            if record is None or record["status"] != "queued":
                client.zrem(keys.PENDING, job_id)
            elif job_id not in held:
                (lost if job_id in suspects else now_suspect).append((job_id, record))
        for job_id, record in lost:
            self._publish(
                job_id, record["request"] or {}, record["batch_id"], record["submitted_at"]
            )
        with client.pipeline(transaction=False) as pipe:
            pipe.delete(keys.REPAIR_SUSPECTS)
            if now_suspect:
                pipe.sadd(keys.REPAIR_SUSPECTS, *[j for j, _ in now_suspect])
                pipe.expire(keys.REPAIR_SUSPECTS, int(max(lost_after_s, 1) * 10))
            pipe.execute()
        return [j for j, _ in lost]

    def _publish(
        self,
        job_id: str,
        request: dict[str, Any],
        batch_id: str | None,
        submitted_at: str | None,
        **options: Any,
    ) -> None:
        self._send(
            TASK_NAME,
            {"request": request, "batch_id": batch_id, "submitted_at": submitted_at},
            f"{{job {job_id} on {request.get('NetworkInterfaceId')}}}",
            task_id=job_id,
            **options,
        )

    def _publish_jobs(
        self,
        jobs: list[tuple[str, dict[str, Any]]],
        batch_id: str,
        submitted_at: str,
        **options: Any,
    ) -> None:
        """Several jobs of a batch in one message; one alone goes in the single-job form."""
        if len(jobs) == 1:
            self._publish(*jobs[0], batch_id, submitted_at, **options)
            return
        entries = [
            {
                "job_id": job_id,
                "request": kwargs,
                "batch_id": batch_id,
                "submitted_at": submitted_at,
            }
            for job_id, kwargs in jobs
        ]
        self._send(
            BATCH_TASK_NAME,
            {"jobs": entries},
            f"{{{len(jobs)} jobs of batch {batch_id}}}",
            **options,
        )

    def _send(self, name: str, kwargs: dict[str, Any], summary: str, **options: Any) -> None:
        self.app.send_task(
            name,
            kwargs=kwargs,
            queue=QUEUE,
            ignore_result=True,  # the task writes its own records (tasks/store.py)
            # What Celery shows in logs and monitors, instead of the whole request.
            argsrepr="()",
            kwargsrepr=summary,
            **options,
        )

    def submit_batch(
        self,
        requests: list[SessionRequest],
        *,
        source: str | None = None,
        plan: dict[str, Any] | None = None,
    ) -> str:
        """Enqueue validated jobs as one batch; return the batch id at once.

        Records and the batch's counts are written in one pipeline, then the messages are
        published through one pipelined producer: a few round trips for thousands of jobs.
        """
        batch_id = str(uuid.uuid4())
        submitted_at = utcnow()
        messages: list[tuple[str, dict[str, Any]]] = []
        client = self.store.backend.client
        with client.pipeline(transaction=False) as pipe:
            for parsed in requests:
                job_id = str(uuid.uuid4())
                kwargs = parsed.to_kwargs()
                kwargs.setdefault("ClientToken", job_id)
                self.store.queue_initial(
                    pipe,
                    new_result(
                        job_id,
                        kwargs,
                        batch_id=batch_id,
                        client_token=kwargs["ClientToken"],
                        submitted_at=submitted_at,
                    ),
                )
                messages.append((job_id, kwargs))
            self.store.batches.create(
                pipe, batch_id, [j for j, _ in messages], submitted_at, source, plan
            )
            pipe.execute()
        per_message = self.settings.jobs_per_message
        with self.app.producer_or_acquire() as producer, producer.batch():
            for n, start in enumerate(range(0, len(messages), per_message)):
                self._publish_jobs(
                    messages[start : start + per_message],
                    batch_id,
                    submitted_at,
                    producer=producer,
                    declare=None if n == 0 else [],
                )
        return batch_id

    def batch_status(self, batch_id: str) -> dict[str, Any] | None:
        return self.store.batches.status(batch_id)

    def batch_results(self, batch_id: str) -> Iterator[JobResult]:
        """Every job's record in submission order (jobs whose record expired are skipped)."""
        for chunk in self.store.batches.job_ids(batch_id):
            yield from (r for r in self.store.load_many(chunk) if r is not None)

    def _claim(self, key: str, job_id: str, kwargs: dict[str, Any]) -> str | None:
        """Bind `key` to `job_id` unless it is bound already; return the earlier job id."""
        digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()
        value = json.dumps({"job_id": job_id, "request_sha256": digest})
        if self.redis.set(keys.idempotency(key), value, nx=True, ex=self.settings.result_ttl_s):
            return None
        raw = self.redis.get(keys.idempotency(key))
        earlier = json.loads(raw) if raw else {"job_id": job_id, "request_sha256": digest}
        if earlier["request_sha256"] != digest:
            raise IdempotencyConflictError(
                f"idempotency key {key!r} was used for job {earlier['job_id']} "
                "with a different request"
            )
        return str(earlier["job_id"])

    def result(self, job_id: str) -> JobResult | None:
        return self.store.load(job_id)

    def wait(self, job_id: str, timeout: float = 300.0, poll: float = 0.2) -> JobResult:
        """Block until the job is terminal; raise TimeoutError with its last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.result(job_id)
            if self.store.is_terminal(record) and record is not None:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout}s: {record}")
            time.sleep(poll)


_producer: Producer | None = None


def _default() -> Producer:
    global _producer  # noqa: PLW0603 - a module-level convenience over one Producer
    if _producer is None:
        _producer = Producer()
    return _producer


def submit(request: Any, *, idempotency_key: str | None = None) -> str:
    """Enqueue one job (request syntax as a dict or JSON text); return its job id."""
    return _default().submit(request, idempotency_key=idempotency_key)


def result(job_id: str) -> JobResult | None:
    """The job's result record, or None if the id is unknown."""
    return _default().result(job_id)
