"""Hostile messages below the task: raw payloads pushed onto the queue by anything that can
write to Redis, messages Celery itself discards, and job ids that cannot be a ClientToken.

Whatever kombu cannot turn into a message is dropped, never redelivered: the worker logs why
(never its content), records the job `failed`/InvalidJob when the message names one, and goes
on. A message that expired in the queue ends `failed`/Expired, each of its jobs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from emulator.lab import lab_client, seed_lab
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks import keys, records
from tasks.contract import BATCH_TASK_NAME, TASK_NAME, parse_request
from tasks.producer import Producer
from tests.helpers import Lab, job, mirrors, raw_message, status_of, wait_all, wait_until
from worker.repair import repair_lost_jobs

# In every hostile body: what a sender put in a message must never reach a log.
SECRET = f"not-for-logs-{uuid.uuid4().hex}"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@pytest.fixture
def lab(emulator: EmulatorProcess) -> Lab:
    return seed_lab(emulator.url, 20)


def body(lab: Lab, eni: int, embed: Any = EMBED) -> str:
    return json.dumps([[], {"request": job(lab, eni, Description=SECRET)}, embed])


def changed(part: str, **values: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A message with these keys of its headers or properties set."""
    return lambda message: {**message, part: {**message[part], **values}}


def without(part: str, key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A message without this key of its headers or properties (or itself, if `part` is "")."""
    if not part:
        return lambda message: {k: v for k, v in message.items() if k != key}
    return lambda message: {**message, part: {k: v for k, v in message[part].items() if k != key}}


def replaced(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda message: {**message, key: value}


# What kombu or Celery choked on: the worker died ("Unrecoverable error"), reconnected as if
# Redis had gone, or left the message unacked to come back forever. Each names its job id in
# its headers, or (headers unreadable) in its properties' correlation_id.
NAMED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "body not base64": replaced("body", "%%%not base64%%%"),
    "body_encoding unknown": changed("properties", body_encoding="rot13"),
    "properties null": replaced("properties", None),
    "properties missing": without("", "properties"),
    "delivery_tag null": changed("properties", delivery_tag=None),
    "delivery_tag missing": without("properties", "delivery_tag"),
    "delivery_info null": changed("properties", delivery_info=None),
    "headers null": replaced("headers", None),
    "task header a list": changed("headers", task=["x"]),
}
UNNAMED = {
    "not JSON": "this is not json " + SECRET,
    "a JSON list": json.dumps([SECRET]),
    "a JSON number": "7",
    "nested past the recursion limit": "[" * 100_000 + "]" * 100_000,
}


def log_of(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")


def assert_went_on(
    worker: WorkerProcess, producer: Producer, lab: Lab, redis_url: str, eni: int
) -> None:
    """The worker is up, still runs a valid job, and nothing is left queued or unacked."""
    good = producer.submit(job(lab, eni))
    assert wait_all(producer, [good], timeout=60)[0]["status"] == "created"
    client = redis.Redis.from_url(redis_url)
    wait_until(
        lambda: client.llen("mirrorq") == 0 and client.hlen("unacked") == 0,
        timeout=10,
        what="an empty queue and no unacked message",
    )
    assert worker.proc.poll() is None, log_of(worker)[-3000:]
    log = log_of(worker)
    assert "Unrecoverable error" not in log
    assert "Connection to broker lost" not in log  # no reconnection for a bad message
    assert SECRET not in log


def test_an_envelope_kombu_cannot_read_is_dropped_and_the_worker_goes_on(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    client = redis.Redis.from_url(redis_url)
    for payload in UNNAMED.values():
        client.lpush("mirrorq", payload)
    assert_went_on(worker, producer, lab, redis_url, eni=0)
    assert log_of(worker).count("message dropped") == len(UNNAMED)


def test_a_message_kombu_cannot_read_is_dropped_and_its_job_recorded(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    client = redis.Redis.from_url(redis_url)
    job_ids = {name: str(uuid.uuid4()) for name in NAMED}
    for n, (name, mangle) in enumerate(NAMED.items()):
        client.lpush("mirrorq", json.dumps(mangle(raw_message(job_ids[name], body(lab, n)))))
    assert_went_on(worker, producer, lab, redis_url, eni=len(NAMED))
    for name, job_id in job_ids.items():
        (record,) = wait_all(producer, [job_id], timeout=10)
        assert (record["status"], record["error"]["code"]) == ("failed", "InvalidJob"), name
        assert record["attempts"] == 0, name
    assert sum(mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]).values()) == 1
    assert log_of(worker).count("message dropped") == len(NAMED)


def test_a_message_whose_embed_is_not_an_object_is_refused_not_redelivered_forever(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    job_id = str(uuid.uuid4())
    redis.Redis.from_url(redis_url).lpush(
        "mirrorq", json.dumps(raw_message(job_id, body(lab, 0, embed=5)))
    )
    (record,) = wait_all(producer, [job_id], timeout=30)
    assert (record["status"], record["error"]["code"]) == ("failed", "InvalidJob")
    assert_went_on(worker, producer, lab, redis_url, eni=1)
    assert sum(mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]).values()) == 1


# Messages Celery discards: `expires` passed while the message waited -------------------------


class ExpiringProducer(Producer):
    """mirrorq's producer as a client that sets Celery's `expires` on every message."""

    def _send(self, name: str, kwargs: dict[str, Any], summary: str, **options: Any) -> None:
        expired = datetime.now(UTC) - timedelta(seconds=1)
        super()._send(name, kwargs, summary, expires=expired, **options)


def test_a_message_that_expired_in_the_queue_ends_failed_expired(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = other.send_task(TASK_NAME, kwargs={"request": job(lab, 0)}, expires=past).id
    control = other.send_task(TASK_NAME, kwargs={"request": job(lab, 1)}).id
    start_worker()
    record, created = wait_all(producer, [expired, control], timeout=60)
    assert created["status"] == "created"
    assert (record["status"], record["error"]["code"]) == ("failed", "Expired")
    assert "expire" in record["error"]["message"]
    assert record["error"]["retryable"] is False
    assert record["attempts"] == 0
    assert list(mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"])) == [
        lab["eni_ids"][1]
    ]


def test_every_job_of_an_expired_batch_message_fails_and_the_batch_finishes(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    expiring = ExpiringProducer(producer.app, producer.settings)
    batch_id = expiring.submit_batch([parse_request(job(lab, n)) for n in range(10)])
    start_worker()
    status = producer.wait_batch(batch_id, timeout=60)
    assert status is not None
    assert (status["done"], status["counts"]) == (10, {"failed": 10})
    assert status["finished_at"]
    for record in producer.batch_results(batch_id):
        assert record["error"] is not None
        assert (record["status"], record["error"]["code"]) == ("failed", "Expired")
        assert record["batch_id"] == batch_id
        assert record["client_token"] == record["job_id"]  # the accepted record, kept
    assert not mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"])


def test_a_job_whose_id_was_revoked_ends_failed_revoked(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    job_id = str(uuid.uuid4())
    assert other.control.revoke(job_id, reply=True, timeout=5)  # the worker took it in
    other.send_task(TASK_NAME, task_id=job_id, kwargs={"request": job(lab, 0)})
    (record,) = wait_all(producer, [job_id], timeout=30)
    assert (record["status"], record["error"]["code"]) == ("failed", "Revoked")
    assert not mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"])


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


class SoonExpiringProducer(Producer):
    """A client whose messages expire three seconds after they are sent."""

    def _send(self, name: str, kwargs: dict[str, Any], summary: str, **options: Any) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=3)
        super()._send(name, kwargs, summary, expires=expires, **options)


SHORT = {
    "MIRRORQ_JOB_DEADLINE_S": "2",
    "MIRRORQ_CONNECT_TIMEOUT_S": "1",
    "MIRRORQ_READ_TIMEOUT_S": "5",
    "MIRRORQ_VISIBILITY_TIMEOUT_S": "9",
    "MIRRORQ_LEASE_S": "3",
    "MIRRORQ_LOST_AFTER_S": "2",
    "MIRRORQ_REPAIR_INTERVAL_S": "1",
}


def left_by_a_dead_worker(
    producer: Producer, lab: Lab, *, accepted_here: bool, retried: bool = False
) -> dict[str, Any]:
    """A job's record as a worker that sent its create (which did not land) and died left it:
    started, one attempt (then `retrying` if `retried`), no lease; in the pending index if
    mirrorq's producer accepted it, not if another service sent it. Returns its request."""
    job_id = str(uuid.uuid4())
    request = parse_request({**job(lab, 0), "ClientToken": job_id}).to_kwargs()
    record = records.accepted(job_id, request)
    if accepted_here:
        assert producer.store.accept(record) is None
    record = records.attempted(records.started(record, request))
    if retried:
        record = records.retrying(record, "InternalError", "5xx")
    producer.store.step("save", record)
    producer.store.client.delete(keys.job_lease(job_id))
    return request


def send_expired(other: Celery, lab: Lab, job_id: str) -> None:
    """Another service's message for this job, its `expires` already past."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    other.send_task(TASK_NAME, task_id=job_id, kwargs={"request": job(lab, 0)}, expires=past)


def test_a_job_whose_worker_died_mid_create_is_settled_though_its_message_expired(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found in review: a worker SIGKILLed while its first create was on its way (slow EC2)
    left the job `running` with no attempt recorded; its message, back from the dead worker,
    had expired, and the job was recorded failed/Expired while its session existed. A job an
    earlier delivery started is settled with its token (the repair publishes it again)."""
    emulator.set_faults(latency_ms=2500)
    doomed = start_worker("doomed", **SHORT)
    job_id = SoonExpiringProducer(producer.app, producer.settings).submit(job(lab, 0))
    wait_until(lambda: status_of(producer, job_id) == "running", timeout=10, what="it running")
    time.sleep(1.0)  # its create is on its way: the emulator waits 2.5 s, then creates
    doomed.kill()
    start_worker("rescuer", **SHORT)
    (final,) = wait_all(producer, [job_id], timeout=90)
    assert final["status"] == "created", final["error"]
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == {
        lab["eni_ids"][0]: 1
    }


def test_an_operators_revoke_holds_though_the_message_also_expired(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found in review: Celery reports a revoked id whose message also expired as expired;
    the job was left to the repair, the revoke forgotten, and the job ran."""
    start_worker(MIRRORQ_LOST_AFTER_S="2", MIRRORQ_REPAIR_INTERVAL_S="1")
    job_id = left_by_a_dead_worker(producer, lab, accepted_here=True)["ClientToken"]
    assert other.control.revoke(job_id, reply=True, timeout=5)
    send_expired(other, lab, job_id)
    (final,) = wait_all(producer, [job_id], timeout=60)
    assert (final["status"], (final["error"] or {}).get("code")) == ("failed", "Revoked")
    # Two sweeps of the repair (a job is lost when it looks lost twice): nothing to publish.
    for _ in range(2):
        swept = repair_lost_jobs(producer.redis, producer.store, producer.publish, 0, time.time())
        assert swept == []
    assert not mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"])


def test_another_services_started_job_whose_message_expired_is_settled(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found in review: a job sent with `send_task` is never accepted by mirrorq's producer,
    so it was in no pending index; left to the repair when its message expired, it stayed
    `retrying` forever."""
    start_worker(MIRRORQ_LOST_AFTER_S="2", MIRRORQ_REPAIR_INTERVAL_S="1")
    request = left_by_a_dead_worker(producer, lab, accepted_here=False, retried=True)
    job_id = request["ClientToken"]
    landed = lab_client(emulator.url).create_traffic_mirror_session(**request)
    send_expired(other, lab, job_id)
    (final,) = wait_all(producer, [job_id], timeout=60)
    assert final["status"] == "created", final["error"]
    session = (final["response"] or {})["TrafficMirrorSession"]
    landed_id = landed["TrafficMirrorSession"]["TrafficMirrorSessionId"]
    assert session["TrafficMirrorSessionId"] == landed_id
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == {
        lab["eni_ids"][0]: 1
    }


def test_a_revoked_job_that_had_made_attempts_says_its_create_may_have_landed(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A revoked id is the operator's word, so the job ends failed/Revoked; but a job that had
    sent a create must not claim it sent nothing to EC2 (its session may exist)."""
    start_worker()
    job_id = left_by_a_dead_worker(producer, lab, accepted_here=False)["ClientToken"]
    assert other.control.revoke(job_id, reply=True, timeout=5)
    other.send_task(TASK_NAME, task_id=job_id, kwargs={"request": job(lab, 0)})
    (final,) = wait_all(producer, [job_id], timeout=30)
    assert final["error"] is not None
    assert (final["status"], final["error"]["code"]) == ("failed", "Revoked")
    assert "may have made a session" in final["error"]["message"]
    assert final["attempts"] == 1
