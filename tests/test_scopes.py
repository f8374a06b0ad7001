"""Fleets on one Redis: each job runs only in the account and Region it was accepted for.

A fleet's scope is (MIRRORQ_AWS_ACCOUNT_ID, MIRRORQ_REGION); each scope has its queue. Two
fleets share one Redis database here, each with its own account and its own emulator process
standing in for that account's EC2: real workers, real Redis, real HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import click.testing
import pytest
import redis

from emulator.lab import seed_lab, sessions
from mirrorq.cli import main
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.contract import TASK_NAME, fleet_queue, parse_request, queue_for
from tasks.producer import Producer
from tests.helpers import job, mirrors, producer_for, wait_all, wait_until
from worker.repair import repair_lost_jobs

ACCOUNT_A, ACCOUNT_B = "111111111111", "222222222222"
REGION = "us-east-1"
JOBS = 20


@pytest.fixture(scope="module")
def emulator_b_process() -> Iterator[EmulatorProcess]:
    """A second emulator process: account B's EC2 (the session's is account A's)."""
    emulator = EmulatorProcess("--seed", "8")
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator_b(emulator_b_process: EmulatorProcess) -> EmulatorProcess:
    emulator_b_process.reset()
    return emulator_b_process


def fleet_producer(redis_url: str, account: str | None, region: str = REGION) -> Producer:
    scope = {"aws_account_id": account} if account else {}
    producer = producer_for(redis_url, MIRRORQ_REGION=region, **scope)  # the field's alias
    assert producer.scope.region == region
    return producer


def test_queue_names() -> None:
    # Unset, the single-fleet deployment keeps the queue other services already send to.
    assert queue_for(None, "eu-west-1") == "mirrorq"
    assert queue_for(ACCOUNT_A, "eu-west-1") == f"mirrorq.{ACCOUNT_A}.eu-west-1"
    assert fleet_queue(fleet_producer("redis://x", None).settings) == "mirrorq"
    assert fleet_queue(fleet_producer("redis://x", ACCOUNT_B).settings) == (
        f"mirrorq.{ACCOUNT_B}.{REGION}"
    )


@pytest.mark.parametrize("option", ["-Q", "--queues=mirrorq.222222222222.us-east-1", "-X"])
def test_a_worker_takes_no_queue_but_its_scope_s(option: str) -> None:
    """A worker of one scope reading another's queue would pass its jobs back and forth."""
    result = click.testing.CliRunner().invoke(main, ["worker", option, "mirrorq"])
    assert result.exit_code == 2
    assert "MIRRORQ_AWS_ACCOUNT_ID" in result.output


def test_two_fleets_on_one_redis_each_run_only_their_own_jobs(
    emulator: EmulatorProcess,
    emulator_b: EmulatorProcess,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found by review: both fleets consumed one queue, so fleet A's worker ran fleet B's jobs
    against account A (InvalidNetworkInterfaceID.NotFound)."""
    lab_a, lab_b = seed_lab(emulator.url, JOBS), seed_lab(emulator_b.url, JOBS)
    assert not set(lab_a["eni_ids"]) & set(lab_b["eni_ids"])  # each ENI exists in one account
    start_worker("fleet-a", MIRRORQ_AWS_ACCOUNT_ID=ACCOUNT_A)
    start_worker(
        "fleet-b", MIRRORQ_AWS_ACCOUNT_ID=ACCOUNT_B, MIRRORQ_EC2_ENDPOINT_URL=emulator_b.url
    )
    producer_a = fleet_producer(redis_url, ACCOUNT_A)
    producer_b = fleet_producer(redis_url, ACCOUNT_B)

    # Fleet A's jobs one by one, fleet B's as a batch (8 to a message).
    ids_a = [producer_a.submit(job(lab_a, i)) for i in range(JOBS)]
    batch = producer_b.submit_batch([parse_request(job(lab_b, i)) for i in range(JOBS)])
    ids_b = [r["job_id"] for r in producer_b.batch_results(batch)]

    results = wait_all(producer_a, ids_a + ids_b)
    failures = [r["error"]["code"] for r in results if r["error"]]
    assert failures == []
    assert {r["status"] for r in results} == {"created"}
    assert [(r["account_id"], r["region"]) for r in results] == (
        [(ACCOUNT_A, REGION)] * JOBS + [(ACCOUNT_B, REGION)] * JOBS
    )
    for emu, lab in ((emulator, lab_a), (emulator_b, lab_b)):
        assert mirrors(emu.url, lab["target_ids"]["nlb"], lab["filter_id"]) == dict.fromkeys(
            lab["eni_ids"], 1
        )

    # A job another service sends to a fleet's queue, with no record, runs in that fleet's scope.
    sent = "sent-by-another-service"
    producer_b.app.send_task(
        TASK_NAME,
        task_id=sent,
        kwargs={"request": job(lab_b, 0, SessionNumber=2)},
        queue=f"mirrorq.{ACCOUNT_B}.{REGION}",
    )
    record = wait_all(producer_b, [sent])[0]
    assert (record["status"], record["account_id"], record["region"]) == (
        "created",
        ACCOUNT_B,
        REGION,
    )


def test_a_job_delivered_to_another_fleet_is_passed_on_not_run(
    emulator: EmulatorProcess,
    emulator_b: EmulatorProcess,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A message of fleet B's job that reaches fleet A's queue (a misdirected send, a
    misconfigured producer): fleet A's worker publishes it to B's queue, runs nothing."""
    lab_b = seed_lab(emulator_b.url, 2)
    client = redis.Redis.from_url(redis_url)
    queue_a, queue_b = queue_for(ACCOUNT_A, REGION), queue_for(ACCOUNT_B, REGION)
    producer_b = fleet_producer(redis_url, ACCOUNT_B)
    job_id = producer_b.submit(job(lab_b, 0))
    assert client.lmove(queue_b, queue_a) is not None  # delivered to the wrong fleet
    worker_a = start_worker("fleet-a", MIRRORQ_AWS_ACCOUNT_ID=ACCOUNT_A)
    wait_until(lambda: client.llen(queue_b) == 1, timeout=20, what="the job passed on to B")
    wait_until(lambda: client.hlen("unacked") == 0, timeout=10, what="the message acked")
    assert client.llen(queue_a) == 0
    assert producer_b.result(job_id)["status"] == "queued"  # type: ignore[index]
    assert emulator.stats().get("CreateTrafficMirrorSession", 0) == 0
    assert "passed on" in worker_a.log_path.read_text()

    start_worker(
        "fleet-b", MIRRORQ_AWS_ACCOUNT_ID=ACCOUNT_B, MIRRORQ_EC2_ENDPOINT_URL=emulator_b.url
    )
    assert wait_all(producer_b, [job_id])[0]["status"] == "created"
    assert mirrors(emulator_b.url, lab_b["target_ids"]["nlb"], lab_b["filter_id"]) == {
        lab_b["eni_ids"][0]: 1
    }


def test_a_job_of_another_region_on_the_shared_default_queue_runs_in_its_region(
    emulator: EmulatorProcess, redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    """With MIRRORQ_AWS_ACCOUNT_ID unset every process on the Redis is one fleet, on the queue
    `mirrorq`, and one account: a job accepted for another Region runs there, with the
    worker's own credentials (they serve every Region), never in the worker's Region."""
    lab = seed_lab(emulator.url, 1, "eu-west-1")
    producer = fleet_producer(redis_url, None, region="eu-west-1")
    job_id = producer.submit(job(lab, 0))
    start_worker()  # the default scope in us-east-1
    record = wait_all(producer, [job_id])[0]
    assert record["status"] == "created", record["error"]
    assert (record["account_id"], record["region"]) == (None, "eu-west-1")
    made = sessions(emulator.url, "eu-west-1")
    assert [s["NetworkInterfaceId"] for s in made] == [lab["eni_ids"][0]]
    assert sessions(emulator.url) == []  # nothing in the worker's own Region


def test_the_repair_publishes_a_lost_job_to_its_own_fleet_s_queue(
    emulator: EmulatorProcess, redis_url: str
) -> None:
    """One worker of all the fleets on a Redis sweeps (the lock is the database's): a lost job
    of fleet B goes back to B's queue, and B's jobs waiting there are never taken for lost."""
    lab = seed_lab(emulator.url, 3)
    client = redis.Redis.from_url(redis_url)
    queue_a, queue_b = queue_for(ACCOUNT_A, REGION), queue_for(ACCOUNT_B, REGION)
    producer_a = fleet_producer(redis_url, ACCOUNT_A)
    producer_b = fleet_producer(redis_url, ACCOUNT_B)
    lost = producer_b.submit(job(lab, 0))
    assert client.rpop(queue_b) is not None  # its message is lost
    producer_b.submit(job(lab, 1))
    producer_b.submit(job(lab, 2))  # two of B's jobs wait in B's queue

    def sweep() -> list[str]:  # fleet A's worker sweeps
        return repair_lost_jobs(
            producer_a.redis, producer_a.store, producer_a.publish, 0, time.time()
        )

    assert [sweep(), sweep(), sweep()] == [[], [lost], []]
    assert (client.llen(queue_a), client.llen(queue_b)) == (0, 3)
    newest = json.loads(client.lindex(queue_b, 0) or b"{}")
    assert newest["headers"]["id"] == lost
