"""Hostile messages below the task: job ids that cannot be a ClientToken."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis
from celery import Celery

from emulator.lab import seed_lab
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.contract import BATCH_TASK_NAME, TASK_NAME
from tasks.producer import Producer
from tests.helpers import Lab, job, mirrors, wait_all, wait_until


@pytest.fixture
def lab(emulator: EmulatorProcess) -> Lab:
    return seed_lab(emulator.url, 20)


@pytest.fixture
def other(redis_url: str) -> Celery:
    """Another service's Celery client: no mirrorq imported, JSON only."""
    app = Celery("someone-else", broker=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="mirrorq")
    return app


# Job ids: the ClientToken of a job whose request carries none --------------------------------


def test_a_job_id_that_cannot_be_a_client_token_is_refused_before_ec2(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    client = redis.Redis.from_url(redis_url)
    refused = {
        "65 characters": "j" * 65,
        "not ASCII": f"jöb-{uuid.uuid4()}",
    }
    for n, job_id in enumerate(refused.values()):
        other.send_task(TASK_NAME, task_id=job_id, kwargs={"request": job(lab, n)})
    in_batch = f"bätch-{uuid.uuid4()}"
    other.send_task(
        BATCH_TASK_NAME, kwargs={"jobs": [{"job_id": in_batch, "request": job(lab, 2)}]}
    )
    with_token = "t" * 65  # its request carries a ClientToken: the id is only an id
    other.send_task(
        TASK_NAME, task_id=with_token, kwargs={"request": job(lab, 3, ClientToken="token-3")}
    )
    huge = "j" * 100_000  # no record is kept under an id this long: dropped, logged
    other.send_task(TASK_NAME, task_id=huge, kwargs={"request": job(lab, 4)})
    *records, created = wait_all(producer, [*refused.values(), in_batch, with_token], timeout=60)
    for record in records:
        assert (record["status"], record["error"]["code"]) == ("failed", "InvalidJob")
        assert "job_id" in record["error"]["message"]
        assert record["attempts"] == 0
    assert (created["status"], created["client_token"]) == ("created", "token-3")
    wait_until(lambda: client.llen("mirrorq") == 0 and client.hlen("unacked") == 0, timeout=10)
    assert producer.result(huge) is None
    assert list(mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"])) == [
        lab["eni_ids"][3]
    ]
