"""What the benchmarks share: Redis databases of their own, fresh labs, workers, producers."""

import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from config import Settings
from emulator.lab import LAB_CREDENTIALS, lab_client
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.app import create_app
from tasks.contract import parse_request
from tasks.producer import Producer

# The Redis the benchmarks use (databases 13-15 of it): the machine's, unless
# MIRRORQ_BENCH_REDIS names another server (a private one, beside other users of 6379).
BENCH_REDIS = os.environ.get("MIRRORQ_BENCH_REDIS", "redis://127.0.0.1:6379").rstrip("/")
REDIS_URL = f"{BENCH_REDIS}/13"
NAIVE_REDIS_URL = f"{BENCH_REDIS}/14"
SINGLES_REDIS_URL = f"{BENCH_REDIS}/15"  # the pipeline with one job per message
RESULTS = Path(__file__).parent / "results" / "latest.json"
CONCURRENCY = 64
ROUNDS = 3
console = Console()


# Helpers ------------------------------------------------------------------------------------


def flush() -> None:
    for url in (REDIS_URL, NAIVE_REDIS_URL, SINGLES_REDIS_URL):
        redis.Redis.from_url(url).flushdb()


def fresh_lab(emulator: EmulatorProcess, enis: int) -> dict[str, Any]:
    from emulator.lab import seed_lab

    emulator.reset()
    flush()
    return seed_lab(emulator.url, enis)


def requests_for(lab: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "NetworkInterfaceId": eni,
            "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
            "TrafficMirrorFilterId": lab["filter_id"],
            "SessionNumber": 1,
            "ClientToken": f"bench-{i}",
        }
        for i, eni in enumerate(lab["eni_ids"])
    ]


def sessions_and_duplicates(emulator: EmulatorProcess) -> tuple[int, int]:
    pages = lab_client(emulator.url).get_paginator("describe_traffic_mirror_sessions").paginate()
    per_eni = Counter(s["NetworkInterfaceId"] for p in pages for s in p["TrafficMirrorSessions"])
    return sum(per_eni.values()), sum(n - 1 for n in per_eni.values())


def worker_env(emulator: EmulatorProcess, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MIRRORQ_BROKER_URL": REDIS_URL,
        "MIRRORQ_EC2_ENDPOINT_URL": emulator.url,
        "MIRRORQ_REGION": "us-east-1",
        "MIRRORQ_CONCURRENCY": str(CONCURRENCY),
        "AWS_ACCESS_KEY_ID": LAB_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LAB_CREDENTIALS["aws_secret_access_key"],
        "MIRRORQ_EC2_RATE": "0",
        "MIRRORQ_EC2_DESCRIBE_RATE": "0",
        **extra,
    }


@contextmanager
def workers(emulator: EmulatorProcess, count: int, **extra: str) -> Iterator[list[WorkerProcess]]:
    with ExitStack() as stack:
        started = [
            stack.enter_context(WorkerProcess(f"bench-{i}", worker_env(emulator, **extra)))
            for i in range(count)
        ]
        for w in started:
            w.wait_ready(60)
        yield started


def producer(url: str = REDIS_URL, jobs_per_message: int | None = None) -> Producer:
    settings = Settings(broker_url=url)
    if jobs_per_message is not None:
        settings = settings.model_copy(update={"jobs_per_message": jobs_per_message})
    return Producer(create_app(settings), settings)


def run_batch(
    requests: list[dict[str, Any]], timeout: float = 900, p: Producer | None = None
) -> tuple[float, dict[str, Any]]:
    """Submit as one batch; seconds until its last job finished, and its final status."""
    p = p or producer()
    jobs = [parse_request(r) for r in requests]
    started = time.monotonic()
    batch_id = p.submit_batch(jobs)
    while not (status := p.batch_status(batch_id) or {}).get("finished_at"):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"batch unfinished after {timeout}s: {status}")
        time.sleep(0.05)
    return time.monotonic() - started, status


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
