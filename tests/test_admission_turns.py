"""Admission's deferred messages and their turns (worker/admission.py): forged turns, a rate
raised meanwhile, a revoked job, an expired message. Found by review, each failing first.

Real `mirrorq worker` processes, real Redis, the emulator over HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from emulator.lab import seed_lab
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.contract import ADMIT_AT, BATCH_TASK_NAME, DEFAULT_ACCOUNT, parse_request
from tasks.producer import Producer
from tests.helpers import Lab, job, mirrors, wait_all
from worker.ratelimit import CREATE_ACTION, set_bucket_config


@pytest.fixture
def lab(emulator: EmulatorProcess) -> Lab:
    return seed_lab(emulator.url, 20)


@pytest.mark.parametrize("turn", [10**400, -(10**400)], ids=["huge int", "huge negative int"])
def test_a_forged_admit_at_too_large_for_a_float_still_records_its_jobs(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
    turn: int,
) -> None:
    """A batch message from elsewhere whose `admit_at` is an integer no float can hold (JSON
    allows it): its jobs must end recorded (run, or refused naming the field) and the worker
    go on, as for any other hostile message."""
    start_worker()
    job_ids = [str(uuid.uuid4()) for _ in range(2)]
    jobs = [{"job_id": j, "request": job(lab, n)} for n, j in enumerate(job_ids)]
    other.send_task(BATCH_TASK_NAME, kwargs={"jobs": jobs, ADMIT_AT: turn})
    after = producer.submit(job(lab, 5))
    records = wait_all(producer, [*job_ids, after], timeout=30)
    assert {r["status"] for r in records} <= {"created", "failed"}, records


def test_deferred_jobs_run_at_a_rate_raised_by_rate_set(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """`mirrorq rate set` is "in force at once" (README). Jobs deferred at a slow rate keep the
    turn they were given then (`admit_at`) and hop until it comes, whatever the rate is now:
    raising the rate 400-fold does not bring them on."""
    _fleet_rate(redis_url, 0.25)
    start_worker(MIRRORQ_JOBS_PER_MESSAGE="1")
    requests = [parse_request(job(lab, n)) for n in range(12)]  # 48 s at 0.25/s
    batch_id = producer.submit_batch(requests)
    job_ids = [j for chunk in producer.store.batches.job_ids(batch_id) for j in chunk]
    time.sleep(3)  # the first are running, the rest deferred
    _fleet_rate(redis_url, 100, burst=50)
    raised = time.monotonic()
    records = wait_all(producer, job_ids, timeout=60)
    took = time.monotonic() - raised
    assert Counter(r["status"] for r in records) == {"created": 12}
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == Counter(
        dict.fromkeys(lab["eni_ids"][:12], 1)
    )
    assert took < 10, f"the last job ended {took:.0f} s after the rate was raised to 100/s"


class ExpiringProducer(Producer):
    """A client whose messages expire four seconds after they are sent."""

    def _send(self, name: str, kwargs: dict[str, Any], summary: str, **options: Any) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=4)
        super()._send(name, kwargs, summary, expires=expires, **options)


def _fleet_rate(redis_url: str, rate: float, burst: int = 1) -> None:
    """The fleet's create bucket (of the default place) at `rate`, e.g. 0.25/s: one call per
    4 s, a third job's turn 8 s off."""
    client = redis.Redis.from_url(redis_url)
    set_bucket_config(client, DEFAULT_ACCOUNT, "us-east-1", CREATE_ACTION, rate=rate, burst=burst)


def test_a_deferred_job_whose_id_is_revoked_ends_revoked(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """README: a job whose id was revoked (`celery control revoke`) before it ran ends
    `Revoked`. A deferred job travels in a batch-form message under a new task id, so the
    revoke of its id finds nothing and the job runs."""
    _fleet_rate(redis_url, 0.25)
    start_worker()
    job_ids = [producer.submit(job(lab, 0))]
    time.sleep(1)  # it took its slot: the next turns are 4 s and 8 s on
    job_ids += [producer.submit(job(lab, n)) for n in (1, 2)]
    time.sleep(1)
    assert producer.result(job_ids[2])["status"] == "queued"  # type: ignore[index]
    assert other.control.revoke(job_ids[2], reply=True, timeout=5)
    records = wait_all(producer, job_ids, timeout=30)
    assert [r["status"] for r in records[:2]] == ["created", "created"]
    assert (records[2]["status"], (records[2]["error"] or {}).get("code")) == (
        "failed",
        "Revoked",
    ), records[2]


def test_a_deferred_job_whose_message_expired_ends_expired(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """README: Celery's `expires` is honoured, a message that expires before a worker runs
    its job ends `Expired`. A deferral publishes the job again without the sender's expiry:
    a job whose turn comes after it runs anyway."""
    _fleet_rate(redis_url, 0.1)
    start_worker()
    expiring = ExpiringProducer(producer.app, producer.settings)
    job_ids = [expiring.submit(job(lab, n)) for n in range(3)]  # turns 10 s and 20 s on
    records = wait_all(producer, job_ids, timeout=40)
    assert records[0]["status"] == "created"
    for record in records[1:]:  # their turns come after their messages expired (4 s)
        assert (record["status"], (record["error"] or {}).get("code")) == (
            "failed",
            "Expired",
        ), record
