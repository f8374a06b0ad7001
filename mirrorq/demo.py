"""`mirrorq demo`: the emulator, a real worker and a few hundred jobs, end to end."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from emulator import lab as emulator_lab
from emulator.lab import LAB_CREDENTIALS
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.records import JobStatus


def worker_env(endpoint_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "MIRRORQ_EC2_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": LAB_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LAB_CREDENTIALS["aws_secret_access_key"],
        # The emulator runs unthrottled here: a shared limit far above what it can serve.
        "MIRRORQ_EC2_RATE": "1000",
        "MIRRORQ_EC2_BURST": "200",
        "MIRRORQ_EC2_DESCRIBE_RATE": "1000",
        "MIRRORQ_EC2_DESCRIBE_BURST": "200",
    }


def run_demo(jobs: int, drop_rate: float, error_rate: float) -> int:
    from mirrorq.display import watch
    from tasks.contract import parse_request
    from tasks.producer import Producer

    console = Console()
    console.print(
        f"[bold]mirrorq demo[/]: {jobs} jobs through Redis, a worker and the EC2 "
        f"emulator ({drop_rate:.0%} of responses dropped after the create, "
        f"{error_rate:.0%} answered 500/503)"
    )
    with EmulatorProcess(
        "--seed-lab", str(jobs), "--drop-rate", str(drop_rate), "--error-rate", str(error_rate)
    ) as emulator:
        lab = emulator.ready["lab"]
        console.print(
            f"emulator at {emulator.url}: a lab of {len(lab['eni_ids'])} ENIs, "
            f"target {lab['target_ids']['nlb']}, filter {lab['filter_id']}"
        )
        with WorkerProcess("demo", worker_env(emulator.url)) as worker:
            worker.wait_ready()
            console.print(f"worker ready (log: {worker.log_path})")
            producer = Producer()
            started = time.monotonic()
            batch_id = producer.submit_batch(
                [
                    parse_request(
                        {
                            "NetworkInterfaceId": eni,
                            # An instance's ENI target takes 10 sources at most.
                            "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
                            "TrafficMirrorFilterId": lab["filter_id"],
                            "SessionNumber": "auto",
                            "Description": "mirrorq demo",
                        }
                    )
                    for eni in lab["eni_ids"][:jobs]
                ],
                source="mirrorq demo",
            )
            console.print(f"submitted batch {batch_id}")
            watch(producer, batch_id, console)
            elapsed = time.monotonic() - started
            results = list(producer.batch_results(batch_id))
        sessions = emulator_lab.sessions(emulator.url)
        stats = emulator.stats().get("CreateTrafficMirrorSession", {})
    return _report(console, results, sessions, stats, elapsed)


def _report(
    console: Console,
    results: list[Any],
    sessions: list[dict[str, Any]],
    stats: dict[str, int],
    elapsed: float,
) -> int:
    by_status = Counter(r["status"] for r in results)
    per_eni = Counter(s["NetworkInterfaceId"] for s in sessions)
    duplicates = sum(n - 1 for n in per_eni.values())
    table = Table(title="results")
    table.add_column("what")
    table.add_column("value", justify="right")
    for status, n in sorted(by_status.items()):
        table.add_row(f"jobs {status}", str(n))
    table.add_row("jobs retried (attempts > 1)", str(sum(r["attempts"] > 1 for r in results)))
    table.add_row("emulator: responses dropped after the create", str(stats.get("dropped", 0)))
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
    console.print("one result (`mirrorq status JOB_ID` prints the same):")
    console.print_json(json.dumps(sample))
    ok = by_status.get(JobStatus.CREATED, 0) == len(results) == len(sessions) and duplicates == 0
    console.print(
        "[green]every job created exactly one session[/]"
        if ok
        else "[red]jobs and sessions do not match[/]"
    )
    return 0 if ok else 1
