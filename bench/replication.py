"""Accepted means replicated: what `WAIT` costs a submission. A private primary and replica
(AOF on, as shipped), a 10,000-job batch and single jobs submitted with and without
MIRRORQ_REDIS_MIN_REPLICAS=1, alternating, side by side in one run."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from config import Settings
from mirrorq.processes import free_port
from tasks.app import create_app
from tasks.contract import parse_request
from tasks.producer import Producer

ROUNDS = 3
SINGLES = 300


@contextmanager
def primary_and_replica() -> Iterator[int]:
    """A primary (its port yielded) with one replica in sync, both gone afterwards."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    home = Path(tempfile.mkdtemp(prefix="bench-replication-"))
    ports = free_port(), free_port()
    procs = []
    try:
        for n, port in enumerate(ports):
            directory = home / str(n)
            directory.mkdir()
            replica = ["--replicaof", "127.0.0.1", str(ports[0])] if n else []
            options = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
            options += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
            procs.append(subprocess.Popen([binary, *options, *replica], stdout=subprocess.DEVNULL))
        replica_client = redis.Redis(port=ports[1])
        deadline = time.monotonic() + 30
        while True:
            try:
                if replica_client.info("replication").get("master_link_status") == "up":
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.1)
        yield ports[0]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def _producer(url: str, replicas: int) -> Producer:
    settings = Settings(broker_url=url, redis_min_replicas=replicas)
    return Producer(create_app(settings), settings)


def bench_replication(jobs: int) -> dict[str, Any]:
    requests = [
        parse_request(
            {
                "NetworkInterfaceId": f"eni-{i:017x}",
                "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
                "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
                "SessionNumber": "auto",
            }
        )
        for i in range(jobs)
    ]
    one = requests[0].to_kwargs()
    batch: dict[int, list[float]] = {0: [], 1: []}
    single: dict[int, list[float]] = {0: [], 1: []}
    with primary_and_replica() as port:
        url = f"redis://127.0.0.1:{port}/0"
        flush = redis.Redis(port=port)
        producers = {n: _producer(url, n) for n in (0, 1)}
        for _ in range(ROUNDS):
            for replicas, producer in producers.items():  # alternating: noise hits both
                flush.flushdb()
                started = time.monotonic()
                producer.submit_batch(requests)
                batch[replicas].append(time.monotonic() - started)
                flush.flushdb()
                for _ in range(SINGLES):
                    started = time.monotonic()
                    producer.submit(one)
                    single[replicas].append(time.monotonic() - started)
        flush.flushdb()
    return {
        "jobs": jobs,
        "rounds": ROUNDS,
        "batch_seconds": {f"min_replicas_{n}": batch[n] for n in (0, 1)},
        "batch_seconds_median": {f"min_replicas_{n}": statistics.median(batch[n]) for n in (0, 1)},
        "single_submit_ms": {
            f"min_replicas_{n}": {
                "p50": statistics.median(single[n]) * 1000,
                "p99": statistics.quantiles(single[n], n=100)[98] * 1000,
            }
            for n in (0, 1)
        },
    }
