"""Redis faults: results kept apart from the broker, outages mid-job, restarts mid-batch,
and submissions that fail half way. Real workers, real redis-server processes of the tests'
own (AOF on) that are stopped, crashed and started again; never the machine's Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from emulator.lab import seed_lab
from mirrorq.processes import MIRRORQ, EmulatorProcess, WorkerProcess, free_port
from tasks.app import app
from tests.forkserver import run_mirrorq
from tests.helpers import job, mirrors, producer_for, status_of, wait_all, wait_until
from tests.redis_server import RedisServer
from tests.timing import VirtualTime
from worker.runner import until_redis

ROOT = Path(__file__).resolve().parent.parent


def test_repair_reads_the_broker_when_results_live_elsewhere(
    emulator: EmulatorProcess,
    redis_url: str,
    results_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Jobs waiting in the queue behind a slow rate are not lost, so nothing is published
    again: the repair must look at the broker's queue, not the results' database."""
    lab = seed_lab(emulator.url, 20)
    producer = producer_for(redis_url, result_backend=results_url)
    worker = start_worker(
        MIRRORQ_RESULT_BACKEND=results_url,
        MIRRORQ_EC2_RATE="2",
        MIRRORQ_EC2_BURST="1",
        MIRRORQ_REPAIR_INTERVAL_S="0.5",
        MIRRORQ_LOST_AFTER_S="1",
    )
    job_ids = [producer.submit(job(lab, i)) for i in range(20)]  # 8 run, 12 wait queued
    results = wait_all(producer, job_ids)
    assert {r["status"] for r in results} == {"created"}
    assert [r["attempts"] for r in results] == [1] * 20
    assert emulator.stats()["CreateTrafficMirrorSession"] == {"ok": 20}
    assert "published again" not in worker.log_path.read_text()
    assert redis.Redis.from_url(results_url).exists("mirrorq") == 0  # no queue on the results


def private_env(env: dict[str, str], server: RedisServer, **extra: str) -> dict[str, str]:
    return {**env, "MIRRORQ_BROKER_URL": server.url(0), **extra}


def test_a_redis_outage_during_jobs_fails_none_of_them(
    emulator: EmulatorProcess,
    env: dict[str, str],
    private_redis: RedisServer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Redis goes away while jobs are between attempts: they must not end `failed` for it,
    but finish once Redis is back, with their tokens unchanged."""
    lab = seed_lab(emulator.url, 10)
    emulator.set_faults(latency_ms=800, error_rate=1.0)  # every create answers 5xx, slowly
    start_worker(**private_env(env, private_redis))
    producer = producer_for(private_redis.url(0))
    job_ids = [producer.submit(job(lab, i)) for i in range(8)]  # a worker runs 8 single jobs
    wait_until(
        lambda: all(status_of(producer, j) in {"running", "retrying"} for j in job_ids),
        what="every job to have started",
    )
    private_redis.shutdown()  # the creates in flight now fail, and `retrying` can't be saved

    def failed_creates() -> int:
        calls = emulator.stats().get("CreateTrafficMirrorSession", {})
        return int(calls.get("InternalError", 0) + calls.get("Unavailable", 0))

    wait_until(lambda: failed_creates() >= 8, what="the creates in flight to fail")
    emulator.set_faults(error_rate=0.0)
    private_redis.start()
    results = wait_all(producer, job_ids, timeout=120)
    assert {r["status"] for r in results} == {"created"}, [r["error"] for r in results]
    assert all(r["client_token"] == j for r, j in zip(results, job_ids, strict=True))
    assert all(r["attempts"] >= 2 for r in results)
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == dict.fromkeys(
        lab["eni_ids"][:8], 1
    )


@pytest.mark.parametrize("how", ["graceful", "crash"])
def test_a_redis_restart_mid_batch_loses_and_duplicates_nothing(
    emulator: EmulatorProcess,
    env: dict[str, str],
    private_redis: RedisServer,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    how: str,
) -> None:
    """Redis restarts (gracefully, or killed with -9) in the middle of a 200-job batch; no
    process is restarted by hand: the workers, the producer and `batch status --watch` ride
    it out, and the batch finishes with one session per job."""
    lab = seed_lab(emulator.url, 201)  # the 201st for a job submitted after the restart
    emulator.set_faults(latency_ms=30)
    renv = private_env(env, private_redis, MIRRORQ_REPAIR_INTERVAL_S="1", MIRRORQ_LOST_AFTER_S="3")
    workers = [start_worker(**renv), start_worker(**renv)]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(job(lab, i)) + "\n" for i in range(200)))
    producer = producer_for(private_redis.url(0))  # a long-lived producer, made before
    submitted = run_mirrorq(
        [*MIRRORQ, "batch", "submit", str(jobs)],
        env=renv,
        check=True,
    )
    batch_id = submitted.stdout.strip()
    watch = subprocess.Popen(
        [*MIRRORQ, "batch", "status", batch_id, "--watch", "--json"],
        env=renv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: (producer.batch_status(batch_id) or {"done": 0})["done"] >= 40,
        what="the batch to be under way",
    )
    private_redis.restart(down_for_s=2.0, crash=how == "crash")

    try:
        out, err = watch.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        watch.kill()
        logs = "\n".join(w.log_path.read_text()[-4000:] for w in workers)
        pytest.fail(f"the batch did not end: {producer.batch_status(batch_id)}\n{logs}")
    assert watch.returncode == 0, err[-3000:]
    status = json.loads(out)
    assert status["counts"] == {"created": 200}
    assert status["total"] == status["done"] == 200
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == dict.fromkeys(
        lab["eni_ids"][:200], 1
    )
    assert all(w.proc.poll() is None for w in workers), "a worker died"
    after = producer.submit(job(lab, 200))
    assert wait_all(producer, [after])[0]["status"] == "created"


def test_a_restore_sweep_cut_off_by_a_redis_restart_holds_back_abandoned_messages_briefly(
    emulator: EmulatorProcess,
    env: dict[str, str],
    private_redis: RedisServer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """kombu restores a dead worker's unacked messages under a Redis lock. A sweep cut off by
    a Redis restart can't release it, and a graceful restart keeps it (with its expiry) in
    the AOF: until it expires, no worker restores anything, and the repair leaves held
    messages to kombu. Here a sweep was cut off just before a worker died holding a message:
    the message must still move on within its visibility timeout and a few seconds, not
    kombu's default 5 minutes."""
    lab = seed_lab(emulator.url, 1)
    emulator.set_faults(latency_ms=1500)  # the worker dies with its create unanswered
    renv = private_env(
        env,
        private_redis,
        MIRRORQ_VISIBILITY_TIMEOUT_S="8",
        MIRRORQ_JOB_DEADLINE_S="5",
        MIRRORQ_READ_TIMEOUT_S="2",
    )
    doomed = start_worker(**renv)
    producer = producer_for(private_redis.url(0))
    job_id = producer.submit(job(lab, 0))
    wait_until(
        lambda: status_of(producer, job_id) in {"running", "retrying"}, what="the job to start"
    )
    client = redis.Redis.from_url(private_redis.url(0))
    assert client.hlen("unacked") == 1
    # The lock as that worker's own sweep takes it (kombu's channel, configured by our app).
    with app.connection_for_read(private_redis.url(0)) as connection:
        channel: Any = connection.default_channel  # kombu's Redis channel
        expire_s = channel.unacked_mutex_expire
    assert client.set("unacked_mutex", "cut-off-sweep", nx=True, ex=int(expire_s))
    doomed.kill()
    emulator.set_faults(latency_ms=0)
    start_worker(**renv)
    result = wait_all(producer, [job_id], timeout=60)[0]
    assert result["status"] == "created", result
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == {
        lab["eni_ids"][0]: 1
    }


def test_the_redis_mirrorq_starts_or_ships_keeps_an_append_only_file() -> None:
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "--appendonly yes" in bootstrap
    assert "--appendfsync everysec" in bootstrap
    compose = (ROOT / "docker-compose.yml").read_text()
    assert '"--appendonly", "yes"' in compose
    assert '"--appendfsync", "everysec"' in compose


def test_an_idempotency_key_never_points_at_a_job_that_does_not_exist(
    emulator: EmulatorProcess, redis_url: str, private_redis: RedisServer
) -> None:
    """The key is claimed, the record written and the message queued together, or not at all."""
    lab = seed_lab(emulator.url, 2)
    # Results on a Redis that is down: the record can't be written. The producers give a
    # Redis that is away 1 s, not 20: what is asserted is what is left once they give up.
    private_redis.shutdown()
    producer = producer_for(redis_url, result_backend=private_redis.url(0), redis_retry_s=1)
    with pytest.raises(redis.RedisError):
        producer.submit(job(lab, 0), idempotency_key="event-1")
    private_redis.start()
    job_id = producer.submit(job(lab, 0), idempotency_key="event-1")
    record = producer.result(job_id)
    assert record is not None, "the key names a job that was never recorded"
    assert record["status"] == "queued"
    assert redis.Redis.from_url(redis_url).llen("mirrorq") == 1

    # A broker that is down: the record is written, then the message can't be queued.
    results = redis.Redis.from_url(private_redis.url(0))

    def stored() -> tuple[set[Any], list[Any]]:
        return set(results.keys()), list(results.zrange("mirrorq:pending", 0, -1))

    before = stored()
    unreachable = producer_for(
        f"redis://127.0.0.1:{free_port()}/0", result_backend=private_redis.url(0), redis_retry_s=1
    )
    with pytest.raises(Exception):  # noqa: B017, PT011 - kombu's OperationalError, or Redis's
        unreachable.submit(job(lab, 1), idempotency_key="event-2")
    assert stored() == before  # no claim, no record, nothing pending
    job_id = producer.submit(job(lab, 1), idempotency_key="event-2")
    assert producer.result(job_id) is not None


def test_a_job_waits_for_redis_backing_off_to_5_s_and_carries_on_once_it_answers(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is away a job waits (worker/runner.py `until_redis`): 0.2 s, then twice as
    long each time up to 5 s, saying so about once a minute, and carries on as soon as Redis
    answers. Two minutes of waiting, on a clock the test drives, take no real time."""
    clock = VirtualTime()

    async def run() -> None:
        client = aioredis.Redis.from_url(private_redis.url(0))
        private_redis.shutdown()
        waiting = asyncio.create_task(until_redis(client.ping, clock.timing.sleep))
        await clock.until(lambda: clock.monotonic() > 125, "two minutes of waiting")
        assert not waiting.done()
        private_redis.start()
        await waiting
        await client.aclose()

    caplog.set_level(logging.WARNING, logger="worker.runner")
    asyncio.run(run())
    assert clock.slept[:7] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert max(clock.slept) == 5.0
    said = [r.getMessage() for r in caplog.records if "still waiting for Redis" in r.getMessage()]
    assert said[:2] == ["still waiting for Redis (61 s)", "still waiting for Redis (121 s)"]
