"""The lost-message repair while the queue is busy: a job whose message is gone is published
again even when other jobs wait in the queue, and a job waiting there never is.

Real Redis and real messages (single jobs and batch messages, as the producer sends them);
the last test with a real worker working through a backlog.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from emulator.lab import seed_lab
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks import keys
from tasks.contract import parse_request
from tasks.producer import Producer
from tests.helpers import job, mirrors, wait_all, wait_until
from worker import repair as repair_module
from worker.repair import repair_lost_jobs


def sweep(producer: Producer) -> list[str]:
    """One sweep of the repair, every pending job old enough to be looked at."""
    return repair_lost_jobs(producer.redis, producer.store, producer.publish, 0, time.time())


def test_a_lost_job_is_repaired_while_other_jobs_wait_in_the_queue(
    emulator: EmulatorProcess, producer: Producer, redis_url: str
) -> None:
    """Found in review: the repair did nothing while any message waited in the queue, so
    under steady load a lost job was never published again."""
    lab = seed_lab(emulator.url, 20)
    client = redis.Redis.from_url(redis_url)
    lost = producer.submit(job(lab, 0))
    assert client.rpop("mirrorq") is not None  # its message is lost
    # Unrelated jobs wait in the queue, nobody consuming: three alone, sixteen as a batch.
    for i in range(1, 4):
        producer.submit(job(lab, i))
    producer.submit_batch([parse_request(job(lab, i)) for i in range(4, 20)])
    waiting = client.llen("mirrorq")
    assert waiting == 5

    assert sweep(producer) == []  # a job is lost only when it looks lost twice in a row
    assert sweep(producer) == [lost]
    assert sweep(producer) == []  # its message is in the queue again
    assert client.llen("mirrorq") == waiting + 1
    newest = json.loads(client.lindex("mirrorq", 0) or b"{}")
    assert newest["headers"]["id"] == lost


def test_a_queue_too_long_to_read_defers_the_repair(
    emulator: EmulatorProcess,
    producer: Producer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue is read up to QUEUE_SCAN_MAX messages (here 4, two at a time): past that,
    nothing looks lost until it is shorter again."""
    monkeypatch.setattr(repair_module, "QUEUE_SCAN_MAX", 4)
    monkeypatch.setattr(repair_module, "QUEUE_CHUNK", 2)
    lab = seed_lab(emulator.url, 6)
    client = redis.Redis.from_url(redis_url)
    lost = producer.submit(job(lab, 0))
    assert client.rpop("mirrorq") is not None  # its message is lost
    for i in range(1, 6):
        producer.submit(job(lab, i))

    assert [sweep(producer) for _ in range(3)] == [[], [], []]  # 5 messages: too many to read
    with producer.app.connection_for_read() as connection:
        # A worker takes one, as workers do: off the queue, into kombu's unacked hash.
        channel: Any = connection.default_channel
        assert channel.basic_get("mirrorq", no_ack=False) is not None
        assert [sweep(producer) for _ in range(2)] == [[], [lost]]  # 4 left: read whole


def test_a_busy_worker_repairs_a_lost_job_before_its_backlog_drains(
    emulator: EmulatorProcess,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 31)
    client = redis.Redis.from_url(redis_url)
    lost = producer.submit(job(lab, 0))
    assert client.rpop("mirrorq") is not None  # its message is lost
    backlog = [producer.submit(job(lab, i)) for i in range(1, 31)]  # 15 s of creates at 2/s
    # Sweeps a second apart: a job must look lost on two in a row. With 0.5 s, a backlog job
    # was once published again too (harmless: it ran once), on a machine at a load of about 8,
    # most likely a message the worker had popped (kombu records it as unacked only once the
    # worker reads Redis's answer) and read more than half a second late.
    worker = start_worker(
        MIRRORQ_EC2_RATE="2",
        MIRRORQ_EC2_BURST="1",
        MIRRORQ_REPAIR_INTERVAL_S="1",
        MIRRORQ_LOST_AFTER_S="1",
    )
    wait_until(
        lambda: "published again" in worker.log_path.read_text(),
        timeout=8,
        what="the lost job to be published again",
    )
    # The backlog is still waiting (for its turns at 2/s, held by the worker or queued).
    assert sum(not producer.store.is_terminal(producer.result(j)) for j in backlog) > 0
    results = wait_all(producer, [lost, *backlog])
    assert {r["status"] for r in results} == {"created"}
    assert [r["attempts"] for r in results] == [1] * 31
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == dict.fromkeys(
        lab["eni_ids"], 1
    )
    # Only the lost job was published again: no job waiting in the queue was taken for lost.
    log = worker.log_path.read_text().splitlines()
    assert [line.split("job ")[-1].split()[0] for line in log if "published again" in line] == [
        lost
    ]


def test_a_lost_job_is_published_again_only_once_pending_lost_after_s(
    emulator: EmulatorProcess, producer: Producer, redis_url: str
) -> None:
    """The repair's timing, each sweep given its time (the worker's clock) instead of waiting
    for it: a job whose message is gone is looked at once it has been pending `lost_after_s`,
    and published again when it looked lost on two sweeps in a row."""
    lab = seed_lab(emulator.url, 1)
    client = redis.Redis.from_url(redis_url)
    lost = producer.submit(job(lab, 0))
    assert client.rpop("mirrorq") is not None  # its message is lost
    accepted_at = client.zscore(keys.PENDING, lost)
    assert accepted_at is not None

    def sweep_at(pending_for_s: float) -> list[str]:
        now = accepted_at + pending_for_s
        return repair_lost_jobs(producer.redis, producer.store, producer.publish, 60, now)

    assert [sweep_at(1), sweep_at(59)] == [[], []]  # pending under a minute: not looked at
    assert client.scard(keys.REPAIR_SUSPECTS) == 0
    assert sweep_at(60) == []  # it looks lost
    assert client.smembers(keys.REPAIR_SUSPECTS) == {lost.encode()}
    assert client.llen("mirrorq") == 0
    assert sweep_at(61) == [lost]  # twice in a row: published again
    newest = json.loads(client.lindex("mirrorq", 0) or b"{}")
    assert newest["headers"]["id"] == lost
