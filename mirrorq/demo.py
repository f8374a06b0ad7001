"""`mirrorq demo`: the emulator, a real worker and a few hundred jobs, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emulator.lab import LAB_CREDENTIALS, lab_client

MIRRORQ = [sys.executable, "-m", "mirrorq"]


def _start_emulator(
    jobs: int, drop_rate: float, error_rate: float
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [
            *MIRRORQ,
            "emulator",
            "--port",
            "0",
            "--seed-lab",
            str(jobs),
            "--drop-rate",
            str(drop_rate),
            "--error-rate",
            str(error_rate),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the emulator did not start")
    return proc, json.loads(line)


def _start_worker(endpoint_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MIRRORQ_EC2_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": LAB_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LAB_CREDENTIALS["aws_secret_access_key"],
        # The emulator runs unthrottled here: a limit far above what it can serve.
        "MIRRORQ_EC2_RATE": "1000",
        "MIRRORQ_EC2_BURST": "200",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*MIRRORQ, "worker", "--hostname", "demo@%h"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 60
    while b"ready." not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start; see {log_path}")
        time.sleep(0.2)
    return proc


def run_demo(jobs: int, drop_rate: float, error_rate: float) -> int:
    from tasks.producer import Producer

    console = Console()
    console.print(
        f"[bold]mirrorq demo[/]: {jobs} jobs through Redis, a worker and the EC2 "
        f"emulator (drop rate {drop_rate}, 5xx rate {error_rate})"
    )
    emulator, ready = _start_emulator(jobs, drop_rate, error_rate)
    lab = ready["lab"]
    log_path = Path(tempfile.gettempdir()) / "mirrorq-demo-worker.log"
    worker = None
    try:
        console.print(
            f"emulator at {ready['endpoint_url']}: lab of {len(lab['eni_ids'])} ENIs, "
            f"target {lab['target_ids']['eni']}, filter {lab['filter_id']}"
        )
        worker = _start_worker(ready["endpoint_url"], log_path)
        console.print(f"worker ready (log: {log_path})")
        producer = Producer()
        started = time.monotonic()
        job_ids = [
            producer.submit(
                {
                    "NetworkInterfaceId": eni,
                    "TrafficMirrorTargetId": lab["target_ids"]["eni"],
                    "TrafficMirrorFilterId": lab["filter_id"],
                    "SessionNumber": 1,
                    "Description": "mirrorq demo",
                }
            )
            for eni in lab["eni_ids"][:jobs]
        ]
        results = _follow(console, producer, job_ids)
        elapsed = time.monotonic() - started
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
    try:
        sessions = _count_sessions(ready["endpoint_url"])
        with urllib.request.urlopen(f"{ready['endpoint_url']}/_mirrorq/stats") as answer:
            stats = json.load(answer)["calls"].get("CreateTrafficMirrorSession", {})
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    return _report(console, results, sessions, stats, elapsed)


def _follow(console: Console, producer: Any, job_ids: list[str]) -> list[dict[str, Any]]:
    pending = set(job_ids)
    done: dict[str, dict[str, Any]] = {}
    columns = (TextColumn("jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("jobs", total=len(job_ids))
        while pending:
            for job_id in list(pending):
                record = producer.result(job_id)
                if producer.store.is_terminal(record):
                    done[job_id] = record
                    pending.discard(job_id)
            progress.update(bar, completed=len(done))
            time.sleep(0.2)
    return [done[j] for j in job_ids]


def _count_sessions(endpoint_url: str) -> list[dict[str, Any]]:
    ec2 = lab_client(endpoint_url)
    pages = ec2.get_paginator("describe_traffic_mirror_sessions").paginate()
    return [s for page in pages for s in page["TrafficMirrorSessions"]]


def _report(
    console: Console,
    results: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    stats: dict[str, int],
    elapsed: float,
) -> int:
    by_status = Counter(r["status"] for r in results)
    attempts = Counter(r["attempts"] for r in results)
    per_eni = Counter(s["NetworkInterfaceId"] for s in sessions)
    duplicates = sum(n - 1 for n in per_eni.values())
    table = Table(title="results")
    table.add_column("what")
    table.add_column("value", justify="right")
    for status, n in sorted(by_status.items()):
        table.add_row(f"jobs {status}", str(n))
    table.add_row("jobs retried (attempts > 1)", str(sum(n for a, n in attempts.items() if a > 1)))
    table.add_row("emulator: responses dropped after create", str(stats.get("dropped", 0)))
    table.add_row(
        "emulator: 500/503 injected",
        str(stats.get("InternalError", 0) + stats.get("Unavailable", 0)),
    )
    table.add_row(
        "emulator: retries answered from the ClientToken record", str(stats.get("replayed", 0))
    )
    table.add_row("sessions that exist in the emulator", str(len(sessions)))
    table.add_row("duplicate sessions", str(duplicates))
    table.add_row("jobs/second end to end", f"{len(results) / elapsed:.0f}")
    console.print(table)
    sample = next((r for r in results if r["attempts"] > 1), results[0])
    console.print("one result (mirrorq status JOB_ID prints the same):")
    console.print_json(json.dumps(sample))
    ok = by_status.get("created", 0) == len(results) == len(sessions) and duplicates == 0
    console.print(
        "[green]every job created exactly one session[/]"
        if ok
        else "[red]mismatch between jobs and sessions[/]"
    )
    return 0 if ok else 1
