"""Pipeline overhead: jobs/s through submit -> Redis -> worker -> emulator -> results, next to a
bare aiobotocore loop (the ceiling), a sequential boto3 loop and a naive Celery task."""

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CONCURRENCY,
    NAIVE_REDIS_URL,
    ROUNDS,
    SINGLES_REDIS_URL,
    fresh_lab,
    producer,
    requests_for,
    rss_mb,
    run_batch,
    sessions_and_duplicates,
    workers,
)
from config import Settings
from emulator.lab import aio_lab_client, lab_client
from mirrorq.processes import EmulatorProcess
from tasks.records import JobStatus

# 1. Pipeline overhead ------------------------------------------------------------------------


async def _bare(url: str, requests: list[dict[str, Any]]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    async with aio_lab_client(url, concurrency=CONCURRENCY) as client:

        async def one(request: dict[str, Any]) -> None:
            async with gate:
                await client.create_traffic_mirror_session(**request)

        await asyncio.gather(*(one(r) for r in requests))


def bench_pipeline(
    emulator: EmulatorProcess, jobs: int, footprint: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": jobs, "concurrency": CONCURRENCY, "rounds": ROUNDS}
    # The machine is shared and the emulator's speed drifts: the contenders take turns, round
    # after round, and each is reported by its median.
    rates: dict[str, list[float]] = {
        "bare_aiobotocore_loop": [],
        "sequential_boto3_loop": [],
        "mirrorq_pipeline": [],
        "mirrorq_pipeline_one_job_per_message": [],
    }
    out["jobs_per_message"] = Settings().jobs_per_message
    sequential = min(jobs, 500)  # rates, not totals, are compared
    unlimited = {"MIRRORQ_EC2_RATE": "100000", "MIRRORQ_EC2_BURST": "10000"}
    batches, singles = producer(), producer(SINGLES_REDIS_URL, jobs_per_message=1)
    with (
        workers(emulator, 1, **unlimited) as (w,),
        # Its own Redis database, so the two workers never take each other's messages.
        workers(
            emulator,
            1,
            **unlimited,
            MIRRORQ_BROKER_URL=SINGLES_REDIS_URL,
            MIRRORQ_JOBS_PER_MESSAGE="1",
        ),
    ):
        # Steady state is what is compared: each worker's first jobs open its connections.
        for p in (batches, singles):
            lab = fresh_lab(emulator, 200)
            run_batch(requests_for(lab), p=p)
        for _ in range(ROUNDS):
            lab = fresh_lab(emulator, jobs)
            started = time.monotonic()
            asyncio.run(_bare(emulator.url, requests_for(lab)))
            rates["bare_aiobotocore_loop"].append(jobs / (time.monotonic() - started))

            for name, p in (
                ("mirrorq_pipeline", batches),
                ("mirrorq_pipeline_one_job_per_message", singles),
            ):
                lab = fresh_lab(emulator, jobs)
                elapsed, status = run_batch(requests_for(lab), p=p)
                assert status["counts"] == {JobStatus.CREATED: jobs}, status
                assert sessions_and_duplicates(emulator) == (jobs, 0)
                rates[name].append(jobs / elapsed)

            lab = fresh_lab(emulator, sequential)
            ec2 = lab_client(emulator.url)  # plain boto3, retries off
            started = time.monotonic()
            for request in requests_for(lab):
                ec2.create_traffic_mirror_session(**request)
            rates["sequential_boto3_loop"].append(sequential / (time.monotonic() - started))
        footprint["worker_rss_mb_after_jobs"] = rss_mb(w.proc.pid)
    out["per_round"] = rates
    out.update({name: statistics.median(values) for name, values in rates.items()})

    naive_jobs = min(jobs, 100)  # it manages about 2 jobs/s: a sample is enough
    lab = fresh_lab(emulator, naive_jobs)
    env = {
        **os.environ,
        "NAIVE_BROKER_URL": NAIVE_REDIS_URL,
        "NAIVE_EC2_ENDPOINT_URL": emulator.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    log = Path(tempfile.gettempdir()) / "bench-naive.log"
    with log.open("wb") as sink:
        naive = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.naive",
                "worker",
                "--pool",
                "threads",
                "-c",
                str(CONCURRENCY),
                "-Q",
                "naive",
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            if naive.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the naive worker did not start; see {log}")
            time.sleep(0.1)
        from bench.naive import create  # its app is on NAIVE_REDIS_URL

        started = time.monotonic()
        results = [create.apply_async((r,), queue="naive") for r in requests_for(lab)]
        for result in results:
            result.get(timeout=600)
        out["naive_celery_task"] = naive_jobs / (time.monotonic() - started)
    finally:
        naive.terminate()
        naive.wait(timeout=30)

    ceiling = out["bare_aiobotocore_loop"]
    out["ratios_to_bare_loop"] = {
        k: out[k] / ceiling
        for k in (
            "mirrorq_pipeline",
            "mirrorq_pipeline_one_job_per_message",
            "sequential_boto3_loop",
            "naive_celery_task",
        )
    }
    return out
