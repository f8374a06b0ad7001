"""Accepted means replicated, against the tests' own Redis, which has no replica: every
acceptance that must reach one is refused and undone, leaving nothing behind; and the
reading of `sentinel://` URLs (pure)."""

from __future__ import annotations

import pytest
import redis
from pydantic import SecretStr

from config import Settings
from emulator.lab import seed_lab
from mirrorq.processes import EmulatorProcess
from tasks import keys
from tasks.connections import sentinels_of, transport_options
from tasks.contract import parse_request
from tasks.errors import NotReplicatedError
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
