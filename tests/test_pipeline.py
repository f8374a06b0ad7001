"""The whole pipeline: real Redis, real `mirrorq worker` processes, the emulator over HTTP."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from config import Settings
from emulator.lab import lab_client, seed_lab
from mirrorq.processes import MIRRORQ, EmulatorProcess, WorkerProcess
from tasks.app import create_app
from tasks.contract import BATCH_TASK_NAME, TASK_NAME, parse_request
from tasks.producer import Producer
from tests.helpers import Lab, job, wait_all
from tests.helpers import sessions as sessions_at


@pytest.fixture
def lab(emulator: EmulatorProcess, request: pytest.FixtureRequest) -> Lab:
    """20 ENIs, or as many as the test's `enis` mark asks: seeding takes seconds a hundred,
    and most tests here use a few."""
    mark = request.node.get_closest_marker("enis")
    return seed_lab(emulator.url, mark.args[0] if mark else 20)


def sessions(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    return sessions_at(emulator.url)


def assert_exactly_one_session_per_job(emulator: EmulatorProcess, results: list[Any]) -> None:
    existing = sessions(emulator)
    assert len(existing) == len(results)
    per_eni = Counter(s["NetworkInterfaceId"] for s in existing)
    assert max(per_eni.values()) == 1, "duplicate sessions"
    assert all(r["status"] == "created" for r in results), Counter(r["status"] for r in results)
    ids = {
        r["response"]["TrafficMirrorSession"]["TrafficMirrorSessionId"]
        for r in results
        if r["response"]
    }
    assert ids == {s["TrafficMirrorSessionId"] for s in existing}


# 1 and 2: exactly one session per job, with and without faults -------------------------


@pytest.mark.enis(300)
def test_300_jobs_make_exactly_300_sessions(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    job_ids = [producer.submit(job(lab, i)) for i in range(300)]
    results = wait_all(producer, job_ids)
    assert_exactly_one_session_per_job(emulator, results)
    first = results[0]
    assert first["attempts"] == 1
    assert first["client_token"] == first["request"]["ClientToken"]
    assert first["client_token"] == first["response"]["ClientToken"]
    assert None not in (first["started_at"], first["finished_at"], first["submitted_at"])


@pytest.mark.enis(300)
def test_300_jobs_under_faults_still_make_exactly_300_sessions(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    emulator.set_faults(error_rate=0.3, drop_rate=0.2)
    start_worker()
    job_ids = [producer.submit(job(lab, i)) for i in range(300)]
    results = wait_all(producer, job_ids)
    assert_exactly_one_session_per_job(emulator, results)
    assert sum(r["attempts"] > 1 for r in results) > 50
    calls = emulator.stats()["CreateTrafficMirrorSession"]
    assert calls["dropped"] > 0
    assert calls["InternalError"] + calls["Unavailable"] > 0
    # Every dropped create was retried with its token and answered from EC2's record.
    assert calls["replayed"] >= 1


# 3: permanent errors fail at once --------------------------------------------------------


def test_permanent_errors_fail_after_one_attempt_with_ec2s_code(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    ec2 = lab_client(emulator.url)
    for number in (1, 2, 3):
        ec2.create_traffic_mirror_session(**job(lab, 1, SessionNumber=number))
    ec2.create_traffic_mirror_session(**job(lab, 2, ClientToken="used-before"))
    start_worker()
    cases = {
        "InvalidNetworkInterfaceID.NotFound": job(
            lab, 0, NetworkInterfaceId="eni-0123456789abcdef0"
        ),
        "TrafficMirrorSessionsPerInterfaceLimitExceeded": job(lab, 1, SessionNumber=4),
        "IdempotentParameterMismatch": job(lab, 2, ClientToken="used-before", PacketLength=64),
    }
    job_ids = {code: producer.submit(request) for code, request in cases.items()}
    for code, job_id in job_ids.items():
        (result,) = wait_all(producer, [job_id])
        assert result["status"] == "failed"
        assert result["error"] == {
            "code": code,
            "message": result["error"]["message"],
            "retryable": False,
        }
        assert result["attempts"] == 1
    assert emulator.stats()["CreateTrafficMirrorSession"].get("InternalError", 0) == 0


# 4: a worker killed mid-run -------------------------------------------------------------


@pytest.mark.enis(300)
@pytest.mark.parametrize("sent", ["one job per message", "as a batch"])
def test_sigkilled_worker_loses_nothing_and_duplicates_nothing(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
    sent: str,
) -> None:
    emulator.set_faults(latency_ms=150, drop_rate=0.1)
    doomed = start_worker("doomed", MIRRORQ_VISIBILITY_TIMEOUT_S="12", MIRRORQ_JOB_DEADLINE_S="5")
    requests = [job(lab, i) for i in range(300)]
    if sent == "as a batch":  # several jobs to a message: the whole message is redelivered
        batch_id = producer.submit_batch([parse_request(r) for r in requests])
        job_ids = [j for chunk in producer.store.batches.job_ids(batch_id) for j in chunk]
    else:
        job_ids = [producer.submit(r) for r in requests]
    deadline = time.monotonic() + 60
    while sum(producer.store.is_terminal(producer.result(j)) for j in job_ids[:100]) < 30:
        assert time.monotonic() < deadline, "the first worker made no progress"
        time.sleep(0.1)
    doomed.kill()
    in_flight = Counter((producer.result(j) or {"status": "?"})["status"] for j in job_ids)
    assert in_flight["running"] + in_flight["retrying"] > 0, in_flight  # killed mid-job
    start_worker("rescuer", MIRRORQ_VISIBILITY_TIMEOUT_S="12", MIRRORQ_JOB_DEADLINE_S="5")
    results = wait_all(producer, job_ids, timeout=180)
    assert_exactly_one_session_per_job(emulator, results)


# 5: bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (
            '{"NetworkInterfaceId": "eni-12345678", "TrafficMirrorTargetId": "tmt-12345678",'
            ' "TrafficMirrorFilterId": "tmf-12345678", "SessionNumber": 40000}',
            "SessionNumber",
        ),
        (
            '{"NetworkInterfaceId": "nic-1", "TrafficMirrorTargetId": "tmt-12345678",'
            ' "TrafficMirrorFilterId": "tmf-12345678", "SessionNumber": 1}',
            "NetworkInterfaceId",
        ),
        (
            '{"TrafficMirrorTargetId": "tmt-12345678", "TrafficMirrorFilterId": "tmf-12345678",'
            ' "SessionNumber": 1}',
            "NetworkInterfaceId",
        ),
        (
            '{"NetworkInterfaceId": "eni-12345678", "TrafficMirrorTargetId": "tmt-12345678",'
            ' "TrafficMirrorFilterId": "tmf-12345678", "SessionNumber": 1, "Colour": "red"}',
            "Colour",
        ),
        ("{not json", "(job)"),
    ],
)
def test_cli_refuses_invalid_jobs_naming_the_field(
    env: dict[str, str], redis_url: str, payload: str, field: str
) -> None:
    done = subprocess.run(
        [*MIRRORQ, "submit", payload], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert field in done.stderr
    import redis

    assert redis.Redis.from_url(redis_url).llen("mirrorq") == 0  # nothing reached the queue


def test_malformed_messages_end_invalid_job_and_the_worker_goes_on(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    bad: dict[str, dict[str, Any]] = {
        "wrong types": {"kwargs": {"request": {**job(lab, 0), "SessionNumber": "one"}}},
        "missing fields": {"kwargs": {"request": {"SessionNumber": 1}}},
        "not JSON": {"kwargs": {"request": "{this is not json"}},
        "positional": {"args": ["eni-1", "tmt-1"]},
        "no request": {"kwargs": {"job": {}}},
    }
    job_ids = {}
    for name, message in bad.items():
        job_ids[name] = job_id = str(uuid.uuid4())
        producer.app.send_task(TASK_NAME, task_id=job_id, queue="mirrorq", **message)
    good = producer.submit(job(lab, 5))
    for name, job_id in job_ids.items():
        (result,) = wait_all(producer, [job_id])
        assert result["status"] == "failed", name
        assert result["error"]["code"] == "InvalidJob", name
        assert result["attempts"] == 0
    assert wait_all(producer, [good])[0]["status"] == "created"
    assert len(sessions(emulator)) == 1


def test_malformed_batch_messages_record_what_they_can_and_the_worker_goes_on(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    jobs: list[Any] = [
        {"job_id": good, "request": job(lab, 0)},
        {"job_id": bad, "request": {**job(lab, 1), "SessionNumber": 0}},
        {"request": job(lab, 2)},  # no id: nothing to record it under
        "not an object",
    ]
    producer.app.send_task(BATCH_TASK_NAME, kwargs={"jobs": jobs}, queue="mirrorq")
    producer.app.send_task(BATCH_TASK_NAME, args=[jobs], queue="mirrorq")  # wrong shape
    after = producer.submit(job(lab, 3))
    created, refused, later = wait_all(producer, [good, bad, after])
    assert created["status"] == later["status"] == "created"
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "InvalidJob"
    assert "SessionNumber" in refused["error"]["message"]
    assert {s["NetworkInterfaceId"] for s in sessions(emulator)} == {
        lab["eni_ids"][0],
        lab["eni_ids"][3],
    }


@pytest.mark.enis(250)
def test_a_message_of_any_size_runs_within_the_workers_concurrency(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A batch message from elsewhere may hold far more jobs than the worker's concurrency:
    they wait for a slot (and a Redis connection) instead of failing."""
    emulator.set_faults(latency_ms=50)
    worker = start_worker(MIRRORQ_CONCURRENCY="8")
    job_ids = [str(uuid.uuid4()) for _ in range(250)]
    jobs = [{"job_id": j, "request": job(lab, i)} for i, j in enumerate(job_ids)]
    producer.app.send_task(BATCH_TASK_NAME, kwargs={"jobs": jobs}, queue="mirrorq")
    results = wait_all(producer, job_ids)
    assert_exactly_one_session_per_job(emulator, results)
    assert "Error" not in worker.log_path.read_text()


def test_send_task_without_mirrorq_uses_the_documented_contract(
    emulator: EmulatorProcess,
    lab: Lab,
    env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Another service needs only Celery, the task name, the queue and the JSON payload."""
    from celery import Celery

    start_worker()
    other = Celery(broker=env["MIRRORQ_BROKER_URL"], backend=env["MIRRORQ_BROKER_URL"])
    other.conf.update(
        task_serializer="json", accept_content=["json"], result_accept_content=["json"]
    )
    sent = other.send_task(
        "mirrorq.create_traffic_mirror_session", kwargs={"request": job(lab, 7)}, queue="mirrorq"
    )
    result = sent.get(timeout=60)  # terminal jobs are SUCCESS to Celery, the record its value
    assert result["status"] == "created"
    assert result["client_token"] == sent.id  # no token sent: derived from the job id, fixed


# 6: DryRun ------------------------------------------------------------------------------


def test_dry_run_jobs_end_dry_run_ok_and_create_nothing(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    results = wait_all(producer, [producer.submit(job(lab, i, DryRun=True)) for i in range(5)])
    assert {r["status"] for r in results} == {"dry_run_ok"}
    assert all(r["error"] is None and r["attempts"] == 1 for r in results)
    assert sessions(emulator) == []


# The CLI and the producer API -----------------------------------------------------------


def test_cli_submit_wait_and_status(
    env: dict[str, str], lab: Lab, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker()
    done = subprocess.run(
        [*MIRRORQ, "submit", "--wait", json.dumps(job(lab, 3))],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "created"
    status = subprocess.run(
        [*MIRRORQ, "status", result["job_id"]], env=env, capture_output=True, text=True, check=False
    )
    assert json.loads(status.stdout) == result
    failing = subprocess.run(
        [*MIRRORQ, "submit", "--wait", "-"],
        input=json.dumps(job(lab, 3)),
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert failing.returncode == 1  # SessionNumber 1 is taken on that ENI now
    assert json.loads(failing.stdout)["error"]["code"] == "InvalidParameterValue"
    unknown = subprocess.run(
        [*MIRRORQ, "status", "no-such-job"], env=env, capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2


def test_idempotency_key_yields_the_same_job(producer: Producer, lab: Lab) -> None:
    first = producer.submit(job(lab, 9), idempotency_key="event-123")
    assert producer.submit(job(lab, 9), idempotency_key="event-123") == first
    record = producer.result(first)
    assert record is not None
    assert record["status"] == "queued"
    from tasks.errors import IdempotencyConflictError

    with pytest.raises(IdempotencyConflictError):
        producer.submit(job(lab, 10), idempotency_key="event-123")


def test_a_job_whose_message_was_lost_is_published_again(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
    redis_url: str,
) -> None:
    """kombu pops a message before recording it as unacked: a worker killed in between
    loses it. Here the message is taken off the queue by hand, as such a worker would."""
    import redis

    job_id = producer.submit(job(lab, 11))
    assert redis.Redis.from_url(redis_url).rpop("mirrorq") is not None  # the message is gone
    start_worker(MIRRORQ_REPAIR_INTERVAL_S="1", MIRRORQ_LOST_AFTER_S="2")
    (result,) = wait_all(producer, [job_id], timeout=60)
    assert result["status"] == "created"
    assert result["client_token"] == job_id  # the token fixed at acceptance, unchanged
    assert len(sessions(emulator)) == 1


def test_jobs_held_in_a_batch_message_are_not_taken_for_lost(
    lab: Lab, producer: Producer, redis_url: str
) -> None:
    """Repair must see the jobs inside a message a worker holds, and only those."""
    import redis

    from worker.repair import repair_lost_jobs

    def repair(lost_after_s: float) -> list[str]:
        return repair_lost_jobs(
            producer.redis, producer.store, producer.publish, lost_after_s, time.time()
        )

    client = redis.Redis.from_url(redis_url)
    batch_id = producer.submit_batch([parse_request(job(lab, i)) for i in range(8)])
    job_ids = next(producer.store.batches.job_ids(batch_id))
    assert client.llen("mirrorq") == 1  # eight jobs, one message
    with producer.app.connection_for_read() as connection:
        # Taken as a worker takes it: off the queue and into kombu's unacked hash.
        channel: Any = connection.default_channel
        message = channel.basic_get("mirrorq", no_ack=False)
        assert message is not None
        for _ in range(2):  # a job is lost only when it looks lost twice in a row
            assert repair(lost_after_s=0) == []
        client.delete("unacked")  # what a worker killed between pop and record leaves
        assert repair(lost_after_s=0) == []
        assert sorted(repair(lost_after_s=0)) == sorted(job_ids)
    assert client.llen("mirrorq") == 8  # published again, one message each


@pytest.mark.parametrize(("per_message", "messages"), [(1, 20), (8, 3), (19, 2), (64, 1)])
def test_a_batch_travels_jobs_per_message_to_a_message(
    lab: Lab, env: dict[str, str], redis_url: str, per_message: int, messages: int
) -> None:
    import redis

    settings = Settings(broker_url=redis_url, jobs_per_message=per_message)
    batcher = Producer(create_app(settings), settings)
    batcher.submit_batch([parse_request(job(lab, i)) for i in range(20)])
    queued = [json.loads(m) for m in redis.Redis.from_url(redis_url).lrange("mirrorq", 0, -1)]
    assert len(queued) == messages
    # A remainder of one travels in the documented single-job form.
    tasks = Counter(m["headers"]["task"] for m in queued)
    assert sum(tasks.values()) == messages
    assert set(tasks) <= {TASK_NAME, BATCH_TASK_NAME}
    assert (TASK_NAME in tasks) == (per_message == 1 or 20 % per_message == 1)
