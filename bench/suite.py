"""mirrorq's benchmarks, measured side by side in one run against the local emulator.

1. Pipeline overhead: jobs/s through submit -> Redis -> worker -> emulator -> results, next to
   a bare aiobotocore loop at the same concurrency (the ceiling), a sequential boto3 loop and
   a naive Celery task that opens a client with asyncio.run() per job.
2. Riding the limit: the emulator throttles like EC2 (bucket 50, refill 20/s); 4 workers with
   the shared limiter, next to 4 processes relying on botocore's standard retries; and the
   adaptive case, EC2's limit below mirrorq's configured rate.
3. Submission: seconds to submit a 10,000-job batch, and Redis memory per job; the same
   batch (and single jobs) on a primary with a replica, with and without
   MIRRORQ_REDIS_MIN_REPLICAS=1 (bench/replication.py).
4. Footprint: resident memory of one worker process with its EC2 client.
6. A session's life: 2,000 sessions created, then modified, then deleted, each kind riding
   its action's bucket (20/s burst 50), against the theoretical rate (bench/lifecycle.py).
5. Many accounts: 4 workers riding 3 accounts x 2 Regions' buckets (20/s burst 50 each) at
   once, jobs placed by role_arn and region; then one account throttled to a quarter; next
   to the same harness with one account-Region (bench/accounts.py).

Run: `make bench` (or `uv run python -m bench`). Prints a table, writes bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.accounts import bench_accounts
from bench.api import bench_api
from bench.common import RESULTS, flush
from bench.events import bench_events
from bench.events_accounts import bench_events_accounts
from bench.lifecycle import bench_lifecycle
from bench.limits import ride
from bench.pipeline import bench_pipeline
from bench.replication import bench_replication
from bench.submission import bench_submission
from mirrorq.processes import EmulatorProcess

console = Console()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per pipeline run")
    parser.add_argument("--ride-jobs", type=int, default=2000, help="jobs per riding-the-limit run")
    parser.add_argument(
        "--account-jobs", type=int, default=300, help="jobs per account-Region, many accounts"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--only",
        choices=[
            "pipeline",
            "events",
            "api",
            "accounts",
            "events-accounts",
            "lifecycle",
            "replication",
            "dashboard",
        ],
        help="run only this benchmark (printed; accounts, replication and dashboard also write "
        "their bench/results/*.json)",
    )
    args = parser.parse_args(argv)
    alone: dict[str, Callable[[], None]] = {
        "accounts": lambda: only_accounts(args.account_jobs),
        "dashboard": only_dashboard,
        "events-accounts": only_events_accounts,
        "lifecycle": lambda: only_lifecycle(args.ride_jobs),
        "replication": lambda: only_replication(args.output.parent),
        "events": lambda: console.print_json(json.dumps(bench_events())),
        "api": lambda: console.print_json(json.dumps(bench_api())),
    }
    if args.only in alone:
        alone[args.only]()
        return

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "footprint": {},
    }
    with EmulatorProcess() as emulator:
        console.print("1/6 pipeline overhead ...")
        results["pipeline"] = bench_pipeline(emulator, args.jobs, results["footprint"])
        if args.only == "pipeline":
            console.print_json(json.dumps(results["pipeline"]))
            return
        console.print("2/6 riding the limit (three runs of about a minute or two) ...")
        results["ride"] = {
            "shared_limiter": ride(emulator, args.ride_jobs, (20, 50), (20, 45)),
            "botocore_standard_retries_only": ride(emulator, args.ride_jobs, (20, 50), None),
            "adaptive_ec2_limit_below_configured": ride(
                emulator, args.ride_jobs // 2, (10, 50), (20, 45)
            ),
        }
        console.print("3/6 many accounts (three runs of under a minute or two) ...")
        results["accounts"] = bench_accounts(emulator, args.account_jobs)
        console.print("3b/6 a session's life: creates, modifies, deletes riding their buckets ...")
        results["lifecycle"] = bench_lifecycle(emulator, args.ride_jobs)
    console.print("4/6 submission ...")
    results["submission"] = bench_submission(10_000)
    results["replication"] = bench_replication(10_000)
    console.print("5/6 event to session ...")
    results["events"] = bench_events()
    console.print("6/6 the HTTP API ...")
    results["api"] = bench_api()
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
    for row in accounts_rows(results["accounts"]):
        table.add_row(*row)
    for row in lifecycle_rows(results["lifecycle"]):
        table.add_row(*row)
    s = results["submission"]
    table.add_row(
        f"submit {s['jobs']:,} jobs (in process / CLI incl. start-up)",
        f"{s['submit_batch_seconds']:.2f} s / {s['cli_seconds_with_startup']:.2f} s",
        "(<= 2 s)",
    )
    table.add_row("Redis memory per queued job", f"{s['redis_bytes_per_queued_job']:.0f} bytes", "")
    for row in replication_rows(results["replication"]):
        table.add_row(*row)
    table.add_row(
        "worker RSS with its EC2 client, after the run",
        f"{results['footprint']['worker_rss_mb_after_jobs']:.0f} MiB",
        "",
    )
    a = results["api"]
    table.add_row(
        f"POST /v1/jobs, one job a request, {a['clients']} clients",
        f"{a['post_jobs_per_s']:.0f} jobs/s",
        f"producer alone: {a['python_producer_jobs_per_s']:.0f} jobs/s",
    )
    table.add_row(
        f"POST /v1/batches ({a['batch']:,} jobs each)",
        f"{a['post_batches_jobs_per_s']:.0f} jobs/s",
        f"producer alone: {a['python_producer_batch_jobs_per_s']:.0f} jobs/s",
    )
    table.add_row(
        "one POST /v1/jobs at a time",
        f"p50 {a['single_post_ms']['p50']:.1f} ms, p99 {a['single_post_ms']['p99']:.1f} ms",
        "",
    )
    e = results["events"]
    for way, label in (("event", "EventBridge event in SQS"), ("submit", "mirrorq submit")):
        for when, target in (("idle", " (p50 < 200 ms)" if way == "event" else ""), ("burst", "")):
            r = e[way][when]
            size = "one at a time, idle" if when == "idle" else f"a burst of {e['burst']}"
            table.add_row(
                f"{label} -> session exists, {size}",
                f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
                target,
            )
    return table


def only_accounts(per_scope: int) -> None:
    """The many-accounts benchmark alone: printed, and written to bench/results/accounts.json."""
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
    }
    with EmulatorProcess() as emulator:
        results["accounts"] = bench_accounts(emulator, per_scope)
    flush()
    output = RESULTS.with_name("accounts.json")
    output.write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title=f"mirrorq many accounts, {results['date']}, {results['machine']}")
    for column in ("benchmark", "measured", "ratio / target"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for row in accounts_rows(results["accounts"]):
        table.add_row(*row)
    console.print(table)
    console.print(f"written to {output}")


def only_events_accounts() -> None:
    """Events from 3 accounts x 2 Regions alone: printed, and written to
    bench/results/events_accounts.json."""
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "events_accounts": bench_events_accounts(),
    }
    output = RESULTS.with_name("events_accounts.json")
    output.write_text(json.dumps(results, indent=2) + "\n")
    e = results["events_accounts"]
    table = Table(
        title=f"mirrorq events from many accounts, {results['date']}, {results['machine']}"
    )
    for column in ("benchmark", "measured", "bound"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    table.add_row(
        f"a burst of {e['events']} events over {e['places']} account-Regions -> session exists",
        f"p50 {e['latency']['p50_ms']:.0f} ms, p99 {e['latency']['p99_ms']:.0f} ms, "
        f"last {e['span_s']:.1f} s after the first (sent over {e['put_s']:.1f} s)",
        f"bound {e['theoretical_last_s']:.1f} s ({_ratio(e['ratio_to_theoretical'])} of it)",
    )
    table.add_row(
        "  Describe calls per event",
        ", ".join(f"{a} {n:.2f}" for a, n in e["describe_calls_per_event"].items()),
        f"{e['describe_calls_per_event_total']:.2f} in all",
    )
    table.add_row(
        "  of them the listener's",
        ", ".join(f"{a} {n:.2f}" for a, n in e["listener_describe_calls_per_event"].items()),
        "",
    )
    console.print(table)
    console.print(f"written to {output}")


def only_lifecycle(jobs: int) -> None:
    """Creates, modifies and deletes riding their buckets alone: printed, and written to
    bench/results/lifecycle.json."""
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
    }
    with EmulatorProcess() as emulator:
        results["lifecycle"] = bench_lifecycle(emulator, jobs)
    flush()
    output = RESULTS.with_name("lifecycle.json")
    output.write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title=f"mirrorq a session's life, {results['date']}, {results['machine']}")
    for column in ("benchmark", "measured", "ratio / target"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for row in lifecycle_rows(results["lifecycle"]):
        table.add_row(*row)
    console.print(table)
    console.print(f"written to {output}")


def lifecycle_rows(life: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One row per kind: the same sessions created, modified, deleted, each riding its bucket."""
    rows = []
    for kind, run in life["runs"].items():
        failed = run["outcome"].get("failed", 0)
        rows.append(
            (
                f"ride {kind} x{life['jobs']:,}, its bucket {life['ec2_rate']:.0f}/s "
                f"burst {life['ec2_burst']}, 4 workers",
                f"{run['achieved_rate']:.2f}/s in {run['seconds']:.1f} s, "
                f"{run['throttled_fraction']:.1%} throttled, {failed} failed",
                f"{_ratio(run['ratio_to_theoretical'])} of theoretical "
                f"({life['theoretical_seconds']:.1f} s)",
            )
        )
    rows.append(
        (
            "  sessions modified as asked / left after the deletes",
            f"{life['sessions_modified']:,} / {life['sessions_left']:,}",
            f"({life['jobs']:,} / 0)",
        )
    )
    return rows


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}"


def accounts_rows(a: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The many-accounts rows: each case's fleet, then the slow case's buckets one by one."""
    rows = []
    for name, label, target in (
        ("single_bucket", "1 account-Region (through a role)", " (>= 0.95)"),
        ("six_buckets", "3 accounts x 2 Regions", " (>= 0.95, <= 2%)"),
        ("one_account_quarter_rate", "same, one account at 5/s", ""),
    ):
        r = a[name]
        rows.append(
            (
                f"ride {label}, {r['per_scope']} jobs each, 4 workers",
                f"{r['achieved_rate']:.1f}/s of {r['theoretical_rate']:.0f}/s, "
                f"{r['throttled_fraction']:.1%} throttled, {r['duplicates']} dup, "
                f"{r['outcome'].get('failed', 0)} failed",
                f"{_ratio(r['ratio_to_theoretical'])} of theoretical{target}",
            )
        )
    for scope, b in a["one_account_quarter_rate"]["buckets"].items():
        rows.append(
            (
                f"  bucket {scope} at {b['ec2_rate']:.0f}/s",
                f"{b['throttled_fraction']:.1%} throttled",
                f"{_ratio(b['ratio_to_theoretical'])} of its theoretical (>= 0.95)",
            )
        )
    return rows


def replication_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Submission on a primary with a replica, without and with MIN_REPLICAS=1."""
    b, s = r["batch_seconds_median"], r["single_submit_ms"]
    return [
        (
            f"submit {r['jobs']:,} jobs, primary + replica: MIN_REPLICAS 0 / 1 "
            f"(median of {r['rounds']})",
            f"{b['min_replicas_0']:.2f} s / {b['min_replicas_1']:.2f} s",
            f"x{b['min_replicas_1'] / b['min_replicas_0']:.2f}",
        ),
        (
            "one job submitted: MIN_REPLICAS 0 / 1",
            f"p50 {s['min_replicas_0']['p50']:.2f} / {s['min_replicas_1']['p50']:.2f} ms, "
            f"p99 {s['min_replicas_0']['p99']:.2f} / {s['min_replicas_1']['p99']:.2f} ms",
            "",
        ),
    ]


def only_replication(folder: Path) -> None:
    """A 10,000-job batch with and without a replica required, printed and written."""
    replication = bench_replication(10_000)
    replication["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    console.print_json(json.dumps(replication))
    written = folder / "replication.json"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(json.dumps(replication, indent=2) + "\n")
    table = Table(title="accepted means replicated")
    table.add_column("benchmark")
    table.add_column("measured", justify="right")
    table.add_column("", justify="right")
    for row in replication_rows(replication):
        table.add_row(*row)
    console.print(table)


def only_dashboard() -> None:
    """The dashboard's first paint and update times (bench/dashboard.py, with Chromium)."""
    from bench.dashboard import main as dashboard

    dashboard()
