"""The lost-message repair: accepted jobs whose message is gone are published again.

kombu's Redis transport pops a message before it records it as unacked, so a worker killed
in between loses it; a Redis crash can lose the last second of writes. Every accepted job
stays in the pending index until it finishes. Every few seconds one worker of the fleet (a
Redis lock decides which) looks at the jobs pending longer than `lost_after_s` and publishes
again each one that is nowhere: not running under a live run lease, not in a message a worker
holds, not waiting in its queue (read in chunks, up to QUEUE_SCAN_MAX messages, only while
some job is not found elsewhere). The sweep covers every fleet on the Redis database: each job
is looked for in, and published again to, the queue of the scope it was accepted for. A job
must look lost twice in a row (one sweep could race a worker that just popped it). Publishing
again is safe: the job keeps its id and token, a finished job is never run twice, and a copy
never runs beside a running job.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import redis

from config import Settings
from tasks import keys
from tasks.contract import BATCH_TASK_NAME
from tasks.records import JobResult, queue_of
from tasks.store import ResultStore
from worker.timing import Clock

log = logging.getLogger(__name__)
SCAN = 1000  # pending jobs looked at per sweep
# The queue is read a chunk at a time, newest first, up to this many messages (a batch
# message holds 8 jobs); longer, and nothing looks lost until it is shorter.
QUEUE_CHUNK = 500
QUEUE_SCAN_MAX = 10_000
Publish = Callable[[JobResult], None]


def held_job_ids(unacked: Iterable[bytes | str]) -> set[str]:
    """The jobs in the messages workers hold unacked (values of kombu's `unacked` hash: the
    raw message, exchange and routing key)."""
    return _job_ids(unacked, lambda value: json.loads(value)[0])


def queued_job_ids(queued: Iterable[bytes | str]) -> set[str]:
    """The jobs in messages waiting in the queue (kombu's list of raw messages)."""
    return _job_ids(queued, json.loads)


def _job_ids(values: Iterable[bytes | str], message_of: Callable[[bytes | str], Any]) -> set[str]:
    """The job ids of kombu messages, read from their headers (the task id); a batch message
    holds several, in its body."""
    ids: set[str] = set()
    for value in values:
        try:
            message = message_of(value)
            headers = message["headers"]
            ids.add(headers["id"])
            if headers.get("task") == BATCH_TASK_NAME:
                body = message["body"]
                if message["properties"].get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                _, kwargs, _ = json.loads(body)
                ids.update(str(job["job_id"]) for job in kwargs["jobs"])
        except (ValueError, LookupError, TypeError, RecursionError):
            continue  # not a message mirrorq sent
    return ids


def queued_among(broker: redis.Redis, queue: str, wanted: set[str]) -> set[str] | None:
    """Which of `wanted` wait in `queue`; None if the queue is too long to read.

    Read from the head (index 0, where messages are pushed) on: a message pushed meanwhile
    shifts the rest one place on (read twice, harmless), a message popped from the tail
    shifts nothing, so no message that stays in the queue is missed.
    """
    found: set[str] = set()
    for start in range(0, QUEUE_SCAN_MAX, QUEUE_CHUNK):
        chunk = broker.lrange(queue, start, start + QUEUE_CHUNK - 1)
        found |= queued_job_ids(chunk) & wanted
        if len(chunk) < QUEUE_CHUNK or found == wanted:
            return found
    return found if broker.llen(queue) <= QUEUE_SCAN_MAX else None


def repair_lost_jobs(
    broker: redis.Redis, store: ResultStore, publish: Publish, lost_after_s: float, now: float
) -> list[str]:
    """Publish again the accepted jobs whose message is gone; return their ids. Only jobs
    pending `lost_after_s` or longer at `now` (Unix time, as the pending index keeps) count."""
    results = store.client
    cutoff = now - lost_after_s
    candidates = [
        _text(j) for j in results.zrangebyscore(keys.PENDING, "-inf", cutoff, start=0, num=SCAN)
    ]
    if not candidates:
        results.delete(keys.REPAIR_SUSPECTS)
        return []
    with results.pipeline(transaction=False) as pipe:
        for job_id in candidates:
            pipe.exists(keys.job_lease(job_id))
        running = {j for j, leased in zip(candidates, pipe.execute(), strict=True) if leased}
    held = _held(broker)
    missing: dict[str, JobResult] = {}
    for job_id, record in zip(candidates, store.load_many(candidates), strict=True):
        if record is None or store.is_terminal(record):
            results.zrem(keys.PENDING, job_id)  # finished (or expired): not pending any more
        elif job_id not in held and job_id not in running:
            missing[job_id] = record
    if missing:
        by_queue: dict[str, set[str]] = {}
        for job_id, record in missing.items():
            by_queue.setdefault(queue_of(record), set()).add(job_id)
        for queue, wanted in by_queue.items():
            # Too many messages to read: nothing of that queue looks lost while they wait.
            queued = queued_among(broker, queue, wanted)
            for job_id in wanted if queued is None else queued:
                missing.pop(job_id, None)
        # A message popped while the queues were read is held by a worker by now.
        for job_id in _held(broker):
            missing.pop(job_id, None)
    suspects = {_text(s) for s in results.smembers(keys.REPAIR_SUSPECTS)}
    lost = [record for job_id, record in missing.items() if job_id in suspects]
    now_suspect = [job_id for job_id in missing if job_id not in suspects]
    for record in lost:
        publish(record)
    with results.pipeline(transaction=False) as pipe:
        pipe.delete(keys.REPAIR_SUSPECTS)
        if now_suspect:
            pipe.sadd(keys.REPAIR_SUSPECTS, *now_suspect)
            pipe.expire(keys.REPAIR_SUSPECTS, int(max(lost_after_s, 1) * 10))
        pipe.execute()
    return [r["job_id"] for r in lost]


def _held(broker: redis.Redis) -> set[str]:
    return held_job_ids(broker.hvals(keys.KOMBU_UNACKED))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Repairer:
    """The repair loop, on a thread of its own in every worker process. `wall` is the worker's
    Unix time; the loop waits its interval on its stop event, which ends it at once."""

    def __init__(
        self,
        broker: redis.Redis,
        store: ResultStore,
        publish: Publish,
        settings: Settings,
        wall: Clock,
    ) -> None:
        self._broker = broker
        self._store = store
        self._publish = publish
        self._settings = settings
        self._wall = wall
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="mirrorq-repair", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        interval = self._settings.repair_interval_s
        while not self._stop.wait(interval):
            try:
                # One worker of the fleet sweeps at a time.
                if not self._store.client.set(
                    keys.REPAIR_LOCK, "1", nx=True, px=int(interval * 900)
                ):
                    continue
                for job_id in repair_lost_jobs(
                    self._broker,
                    self._store,
                    self._publish,
                    self._settings.lost_after_s,
                    self._wall(),
                ):
                    log.warning(
                        "job %s was accepted but its message was lost; published again",
                        job_id,
                        extra={"job_id": job_id},
                    )
            except Exception:  # a Redis hiccup must not end the repairs
                log.warning("lost-job repair failed; will try again", exc_info=True)
