"""Accepted means replicated, against the tests' own Redis, which has no replica: every
acceptance that must reach one is refused and undone, leaving nothing behind; and the
reading of `sentinel://` URLs (pure)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from config import Settings
from emulator.lab import seed_lab
from mirrorq.processes import EmulatorProcess
from tasks import keys
from tasks.batches import place_of_record
from tasks.connections import sentinels_of, sync_client, transport_options
from tasks.contract import parse_request
from tasks.errors import NotReplicatedError
from tasks.records import JobResult, JobStatus, accepted, utcnow
from tasks.replication import Confirmation, OnPrimary, Replicated, Unchecked
from tests.helpers import job, producer_for


def test_an_acceptance_no_replica_has_is_refused_and_leaves_nothing(
    emulator: EmulatorProcess, redis_url: str
) -> None:
    lab = seed_lab(emulator.url, 3)
    client = redis.Redis.from_url(redis_url)
    before = set(client.keys()) - {keys.REPLICATION_FENCE.encode()}
    producer = producer_for(redis_url, redis_min_replicas=1, redis_replica_timeout_s=0.05)
    with pytest.raises(NotReplicatedError) as refused:
        producer.submit(job(lab, 0), idempotency_key="retry-me")
    assert refused.value.code == "NotReplicated"
    assert refused.value.status_code == 503
    assert "0 of the 1 Redis replica(s)" in str(refused.value)
    with pytest.raises(NotReplicatedError):
        producer.submit_batch([parse_request(job(lab, i)) for i in range(3)])
    # No record, claim, pending entry, batch or message; the counters back where they were.
    after = set(client.keys()) - {keys.REPLICATION_FENCE.encode()}
    assert after - before <= {keys.STATS_STATUS.encode(), keys.STATS_PLACED.encode()}
    assert client.zcard(keys.PENDING) == 0
    assert client.llen("mirrorq") == 0
    assert all(int(v) == 0 for v in client.hvals(keys.STATS_STATUS))
    # The same key, once replicas are not required, makes the job (the refusal named none).
    job_id = producer_for(redis_url).submit(job(lab, 0), idempotency_key="retry-me")
    assert producer.result(job_id) is not None
    assert client.llen("mirrorq") == 1


def test_sentinel_urls_are_read_as_kombu_and_celery_read_them() -> None:
    assert sentinels_of("redis://127.0.0.1:6379/0") is None
    where = sentinels_of("sentinel://:p%40ss@s1:26379/3;sentinel://s2:26380; sentinel://s3")
    assert where is not None
    assert where.hosts == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert where.master_kwargs() == {"db": 3, "password": "p@ss"}
    with pytest.raises(ValueError, match="sentinel://host:port"):
        sentinels_of("sentinel://s1:26379;redis://s2:6379")
    with pytest.raises(ValueError, match="database"):
        sentinels_of("sentinel://s1:26379/x")
    settings = Settings(sentinel_master="prod", sentinel_password=SecretStr("sentinel-secret"))
    options = transport_options("sentinel://s1:26379", settings)
    assert options["master_name"] == "prod"
    assert options["sentinel_kwargs"]["password"] == "sentinel-secret"  # noqa: S105
    assert transport_options("redis://r:6379/0", settings) == {}


def _counted(client: redis.Redis) -> tuple[dict[Any, Any], dict[Any, Any]]:
    return client.hgetall(keys.STATS_STATUS), client.hgetall(keys.STATS_PLACED)


def _batch(jobs: int) -> tuple[str, list[JobResult]]:
    """A new batch's id and its jobs' `queued` records."""
    batch_id = str(uuid.uuid4())
    eni = {"NetworkInterfaceId": "eni-0"}
    return batch_id, [accepted(str(uuid.uuid4()), eni, batch_id=batch_id) for _ in range(jobs)]


def test_a_job_accepted_again_where_it_was_kept_counts_once(redis_url: str) -> None:
    """A redo (tasks/replication.py: an acceptance not confirmed, undone, made again) can
    meet a primary that kept the first write (it replicated before the undo, or the undo
    failed): the same job's record, written twice counts it once."""
    client = redis.Redis.from_url(redis_url)
    store = producer_for(redis_url).store
    one = accepted(str(uuid.uuid4()), {"NetworkInterfaceId": "eni-0"}, submitted_at=utcnow())
    keyed = accepted(str(uuid.uuid4()), {"NetworkInterfaceId": "eni-1"}, submitted_at=utcnow())
    claim = (keys.idempotency("twice"), json.dumps({"job_id": keyed["job_id"], "x": 1}))
    for _ in range(2):
        assert store.accept(one) is None
        assert store.accept(keyed, claim) in (None, claim[1])  # its own claim, the redo's
    placed = f"{place_of_record(one)}/{JobStatus.QUEUED}".encode()
    assert _counted(client) == ({b"queued": b"2"}, {placed: b"2"})
    assert client.zcard(keys.PENDING) == 2


def test_a_batch_accepted_again_where_it_was_kept_counts_and_lists_each_job_once(
    redis_url: str,
) -> None:
    """The same for a batch's acceptance (`accept_on` and `BatchStore.create`, one pipeline):
    the fleet's counters, the batch's counts and its list of jobs."""
    client = redis.Redis.from_url(redis_url)
    store = producer_for(redis_url).store
    batch_id, records = _batch(3)
    for _ in range(2):
        with client.pipeline(transaction=False) as pipe:
            store.accept_on(pipe, records)
            store.batches.create(
                pipe,
                batch_id,
                [r["job_id"] for r in records],
                utcnow(),
                None,
                None,
                places=[place_of_record(r) for r in records],
            )
            pipe.execute()
    placed = f"{place_of_record(records[0])}/{JobStatus.QUEUED}".encode()
    assert _counted(client) == ({b"queued": b"3"}, {placed: b"3"})
    status = store.batches.status(batch_id)
    assert status is not None
    assert (status["total"], status["counts"]) == (3, {"queued": 3})
    assert list(store.batches.job_ids(batch_id)) == [[r["job_id"] for r in records]]
    assert client.zcard(keys.PENDING) == 3


def test_a_batch_undone_twice_or_where_it_was_not_takes_back_each_count_once(
    redis_url: str,
) -> None:
    """`unaccept_batch` (a batch not confirmed) takes back the counts of the records it
    deletes: sent again, or to a primary that never had the batch, it takes back nothing."""
    client = redis.Redis.from_url(redis_url)
    store = producer_for(redis_url).store
    batch_id, records = _batch(3)
    client.hset(keys.STATS_STATUS, "queued", 5)  # jobs of other batches
    with client.pipeline(transaction=False) as pipe:
        store.accept_on(pipe, records)
        pipe.execute()
    assert client.hget(keys.STATS_STATUS, "queued") == b"8"
    for _ in range(2):
        store.unaccept_batch(batch_id, records)
    assert client.hget(keys.STATS_STATUS, "queued") == b"5"
    placed = f"{place_of_record(records[0])}/{JobStatus.QUEUED}".encode()
    assert client.hget(keys.STATS_PLACED, placed) == b"0"
    assert client.zcard(keys.PENDING) == 0
    assert client.exists(*store.keys_for([r["job_id"] for r in records])) == 0


def test_each_client_and_setting_has_its_one_way_of_confirming() -> None:
    """Plain URLs: unchecked; a replica required: WAIT, whatever the URL; Sentinel and none
    required: on the primary (no connection is made to choose)."""
    plain, sentinel = "redis://127.0.0.1:1/0", "sentinel://127.0.0.1:1"
    none, one = Settings(), Settings(redis_min_replicas=1)
    assert type(Confirmation.of(sync_client(plain, none), none)) is Unchecked
    assert type(Confirmation.of(sync_client(plain, one), one)) is Replicated
    assert type(Confirmation.of(sync_client(sentinel, one), one)) is Replicated
    assert type(Confirmation.of(sync_client(sentinel, none), none)) is OnPrimary


@pytest.mark.parametrize("replicas", [0, 1])
def test_an_acceptance_meeting_a_redis_without_its_scripts_is_sent_again_and_counted_once(
    redis_url: str, replicas: int
) -> None:
    """A primary that has not seen the scripts (new, restarted: SCRIPT FLUSH here) answers
    NOSCRIPT; the acceptance is sent again, the scripts loaded first, and counts once."""
    client = redis.Redis.from_url(redis_url)
    producer = producer_for(redis_url, redis_min_replicas=replicas, redis_replica_timeout_s=0.05)
    requests = [
        parse_request(
            {
                "NetworkInterfaceId": f"eni-{n:017x}",
                "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
                "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
                "SessionNumber": 1,
            }
        )
        for n in range(3)
    ]
    client.script_flush()
    if replicas:  # no replica here: refused, and undone (the undo's script sent again too)
        with pytest.raises(NotReplicatedError):
            producer.submit_batch(requests)
        client.script_flush()
        with pytest.raises(NotReplicatedError):
            producer.submit(requests[0].to_kwargs())
        assert all(int(v) == 0 for v in client.hvals(keys.STATS_STATUS))
        assert client.zcard(keys.PENDING) == 0
        return
    batch_id = producer.submit_batch(requests)
    assert client.hget(keys.STATS_STATUS, "queued") == b"3"
    status = producer.batch_status(batch_id)
    assert status is not None
    assert (status["total"], status["counts"]) == (3, {"queued": 3})
    assert sum(len(chunk) for chunk in producer.store.batches.job_ids(batch_id)) == 3
    client.script_flush()
    producer.submit(requests[0].to_kwargs(), idempotency_key="once")
    assert client.hget(keys.STATS_STATUS, "queued") == b"4"
    assert client.zcard(keys.PENDING) == 4
