"""mirrorq's benchmarks, measured side by side in one run against the local emulator.

1. Pipeline overhead: jobs/s through submit -> Redis -> worker -> emulator -> results, next to
   a bare aiobotocore loop at the same concurrency (the ceiling), a sequential boto3 loop and
   a naive Celery task that opens a client with asyncio.run() per job.
2. Riding the limit: the emulator throttles like EC2 (bucket 50, refill 20/s); 4 workers with
   the shared limiter, next to 4 processes relying on botocore's standard retries; and the
   adaptive case, EC2's limit below mirrorq's configured rate.
3. Submission: seconds to submit a 10,000-job batch, and Redis memory per job.
4. Footprint: resident memory of one worker process with its EC2 client.

Run: `make bench` (or `uv run python -m bench`). Prints a table, writes bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from config import Settings
from emulator.lab import LAB_CREDENTIALS, aio_lab_client, lab_client
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.app import create_app
from tasks.contract import parse_request
from tasks.producer import Producer
from tasks.records import JobStatus

REDIS_URL = "redis://127.0.0.1:6379/13"
NAIVE_REDIS_URL = "redis://127.0.0.1:6379/14"
SINGLES_REDIS_URL = "redis://127.0.0.1:6379/15"  # the pipeline with one job per message
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


# 2. Riding the limit -------------------------------------------------------------------------


def _throttled_fraction(calls: dict[str, int]) -> float:
    total = sum(calls.values())
    return calls.get("RequestLimitExceeded", 0) / total if total else 0.0


def ride(
    emulator: EmulatorProcess, jobs: int, ec2: tuple[float, int], mirrorq: tuple[float, int] | None
) -> dict[str, Any]:
    """4 processes creating `jobs` sessions against an emulator throttling at `ec2`."""
    rate, burst = ec2
    lab = fresh_lab(emulator, jobs)
    requests = requests_for(lab)
    emulator.set_faults(throttle_rate=rate, throttle_burst=burst)
    theoretical_s = max(jobs - burst, 0) / rate
    if mirrorq is not None:
        with workers(
            emulator,
            4,
            MIRRORQ_EC2_RATE=str(mirrorq[0]),
            MIRRORQ_EC2_BURST=str(mirrorq[1]),
            MIRRORQ_JOB_DEADLINE_S="600",
            MIRRORQ_VISIBILITY_TIMEOUT_S="900",
        ):
            elapsed, status = run_batch(requests)
        outcome = status["counts"]
    else:
        path = Path(tempfile.gettempdir()) / "bench-fleet-jobs.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in requests))
        started = time.monotonic()
        fleet = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.botocore_fleet",
                    emulator.url,
                    str(path),
                    str(i),
                    "4",
                    str(CONCURRENCY),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        reports = [json.loads(p.communicate(timeout=900)[0]) for p in fleet]
        elapsed = time.monotonic() - started
        outcome = {
            "created": sum(r["created"] for r in reports),
            "failed": sum(r["failed"] for r in reports),
        }
    calls = emulator.stats().get("CreateTrafficMirrorSession", {})
    sessions, duplicates = sessions_and_duplicates(emulator)
    created = outcome.get(JobStatus.CREATED, 0)
    return {
        "jobs": jobs,
        "ec2_rate": rate,
        "ec2_burst": burst,
        "mirrorq_limit": list(mirrorq) if mirrorq else None,
        "seconds": elapsed,
        "achieved_rate": created / elapsed,
        "ratio_to_theoretical": theoretical_s / elapsed if created == jobs else None,
        "throttled_fraction": _throttled_fraction(calls),
        "calls": calls,
        "outcome": outcome,
        "sessions": sessions,
        "duplicates": duplicates,
    }


# 3. Submission and 4. footprint -------------------------------------------------------------


def bench_submission(jobs: int) -> dict[str, Any]:
    flush()
    client = redis.Redis.from_url(REDIS_URL)
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
    before = int(client.info("memory")["used_memory"])
    started = time.monotonic()
    producer().submit_batch(requests)
    seconds = time.monotonic() - started
    per_job = (int(client.info("memory")["used_memory"]) - before) / jobs
    path = Path(tempfile.gettempdir()) / "bench-submit.jsonl"
    path.write_text("\n".join(r.model_dump_json(exclude_none=True) for r in requests))
    flush()
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "mirrorq", "batch", "submit", str(path)],
        check=True,
        env={**os.environ, "MIRRORQ_BROKER_URL": REDIS_URL},
        capture_output=True,
    )
    cli_seconds = time.monotonic() - started
    flush()
    return {
        "jobs": jobs,
        "submit_batch_seconds": seconds,
        "cli_seconds_with_startup": cli_seconds,
        "redis_bytes_per_queued_job": per_job,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per pipeline run")
    parser.add_argument("--ride-jobs", type=int, default=2000, help="jobs per riding-the-limit run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--only", choices=["pipeline"], help="run only the pipeline benchmark")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "footprint": {},
    }
    with EmulatorProcess() as emulator:
        console.print("1/4 pipeline overhead ...")
        results["pipeline"] = bench_pipeline(emulator, args.jobs, results["footprint"])
        if args.only == "pipeline":
            console.print_json(json.dumps(results["pipeline"]))
            return
        console.print("2/4 riding the limit (three runs of about a minute or two) ...")
        results["ride"] = {
            "shared_limiter": ride(emulator, args.ride_jobs, (20, 50), (20, 45)),
            "botocore_standard_retries_only": ride(emulator, args.ride_jobs, (20, 50), None),
            "adaptive_ec2_limit_below_configured": ride(
                emulator, args.ride_jobs // 2, (10, 50), (20, 45)
            ),
        }
    console.print("3/4 submission ...")
    results["submission"] = bench_submission(10_000)
    flush()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    console.print(report(results))
    console.print(f"written to {args.output}")


def report(results: dict[str, Any]) -> Table:
    table = Table(title=f"mirrorq benchmarks, {results['date']}, {results['machine']}")
    table.add_column("benchmark")
    table.add_column("measured", justify="right")
    table.add_column("ratio / target", justify="right")
    p = results["pipeline"]
    table.add_row(
        f"bare aiobotocore loop x{p['concurrency']} (ceiling)",
        f"{p['bare_aiobotocore_loop']:.0f} jobs/s",
        "1.00",
    )
    for key, label, target in (
        (
            "mirrorq_pipeline",
            f"mirrorq pipeline, 1 worker x{p['concurrency']}, "
            f"{p['jobs_per_message']} jobs per message",
            " (>= 0.80)",
        ),
        ("mirrorq_pipeline_one_job_per_message", "same, one job per message", ""),
        ("naive_celery_task", "naive Celery task, client per job", ""),
        ("sequential_boto3_loop", "sequential boto3 loop", ""),
    ):
        table.add_row(label, f"{p[key]:.0f} jobs/s", f"{p['ratios_to_bare_loop'][key]:.2f}{target}")
    for name, r in results["ride"].items():
        ratio = "-" if r["ratio_to_theoretical"] is None else f"{r['ratio_to_theoretical']:.3f}"
        table.add_row(
            f"ride {name.replace('_', ' ')} (EC2 {r['ec2_rate']:.0f}/s)",
            f"{r['achieved_rate']:.2f}/s, {r['throttled_fraction']:.1%} throttled, "
            f"{r['duplicates']} dup, {r['outcome'].get('failed', 0)} failed",
            f"{ratio} of theoretical" + (" (>= 0.95, <= 2%)" if name == "shared_limiter" else ""),
        )
    s = results["submission"]
    table.add_row(
        f"submit {s['jobs']:,} jobs (in process / CLI incl. start-up)",
        f"{s['submit_batch_seconds']:.2f} s / {s['cli_seconds_with_startup']:.2f} s",
        "(<= 2 s)",
    )
    table.add_row("Redis memory per queued job", f"{s['redis_bytes_per_queued_job']:.0f} bytes", "")
    table.add_row(
        "worker RSS with its EC2 client, after the run",
        f"{results['footprint']['worker_rss_mb_after_jobs']:.0f} MiB",
        "",
    )
    return table
