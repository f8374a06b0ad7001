"""The emulator's ceiling: CreateTrafficMirrorSession calls per second over real HTTP.

Starts `mirrorq emulator --port 0 --seed-lab N` as a subprocess (faults off) and measures
(a) a sequential boto3 loop, one call at a time, and (b) one aiobotocore client with N
calls in flight. Each create has its own ENI (SessionNumber 1, then 2 and 3 when there are
more calls than ENIs) and its own fixed ClientToken. Before each run the emulator is reset
and the lab seeded again, so every run starts from an account with no sessions.

The figures bound what any benchmark of mirrorq's workers against the emulator can show:
a worker fleet cannot create sessions faster than the emulator accepts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from emulator.lab import LAB_CREDENTIALS, aio_lab_client, seed_lab
from mirrorq.processes import EmulatorProcess

if TYPE_CHECKING:
    from types_aiobotocore_ec2 import EC2Client as AioEC2Client
    from types_boto3_ec2 import EC2Client

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "emulator_ceiling.json"
ACTION = "CreateTrafficMirrorSession"
SESSIONS_PER_ENI = 3  # EC2's per-interface quota, which the emulator enforces
REGION = "us-east-1"  # the lab's Region
# Faults off whatever MIRRORQ_EMULATOR_* says: flags override the environment.
NO_FAULTS = ("--error-rate", "0", "--drop-rate", "0", "--latency-ms", "0", "--throttle-rate", "0")
HTTP_TIMEOUT = 30.0  # a reset or a stats read; far above what either takes


@dataclass
class RunResult:
    """One measured run; times in seconds unless the name says ms."""

    mode: str
    concurrency: int
    calls_planned: int
    calls_sent: int
    created: int
    errors: dict[str, int]
    wall_s: float
    creates_per_s: float
    ms_per_call: float  # wall time / calls sent: the amortised cost of one create
    latency_ms: dict[str, float]  # each call's own round trip, queueing in the client included
    stopped_by_budget: bool
    seed_s: float  # building this run's lab (the first run: emulator start-up included)
    # The emulator's own count of CreateTrafficMirrorSession outcomes during the run,
    # the warm-up DryRun calls (`DryRunOperation`) included.
    server_counts: dict[str, int] = field(default_factory=dict)


# The emulator process ---------------------------------------------------------------------


class Emulator:
    """The emulator with a lab, and the little this benchmark asks of it."""

    def __init__(self, enis: int, startup_timeout: float) -> None:
        started = time.perf_counter()
        self.enis = enis
        self.process = EmulatorProcess(
            "--seed-lab", str(enis), *NO_FAULTS, startup_timeout=startup_timeout
        )
        self.seed_s = time.perf_counter() - started
        self.url = self.process.url
        self.lab: dict[str, Any] = self.process.ready["lab"]

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *_: object) -> None:
        self.process.stop()

    def fresh_lab(self) -> tuple[dict[str, Any], float]:
        """Forget everything, seed the same lab again; return it and the seconds it took."""
        started = time.perf_counter()
        self.process.reset()
        lab = seed_lab(self.url, self.enis, REGION)
        return lab, time.perf_counter() - started

    def counts(self) -> dict[str, int]:
        return dict(self.process.stats().get(ACTION, {}))


# The calls --------------------------------------------------------------------------------


def planned_requests(lab: dict[str, Any], calls: int, label: str) -> list[dict[str, Any]]:
    """`calls` creates, each on a distinct (ENI, SessionNumber) with its own fixed token."""
    enis: list[str] = lab["eni_ids"]
    if not 1 <= calls <= len(enis) * SESSIONS_PER_ENI:
        raise ValueError(f"calls must be 1-{len(enis) * SESSIONS_PER_ENI} for {len(enis)} ENIs")
    return [
        {
            "NetworkInterfaceId": enis[i % len(enis)],
            # The NLB target: an instance's ENI target takes 10 sources at most.
            "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
            "TrafficMirrorFilterId": lab["filter_id"],
            "SessionNumber": 1 + i // len(enis),
            "ClientToken": f"bench-{label}-{i}",
        }
        for i in range(calls)
    ]


def _warmup_request(lab: dict[str, Any]) -> dict[str, Any]:
    """A DryRun create: the whole validation path and a connection, no session made."""
    return {
        "NetworkInterfaceId": lab["eni_ids"][0],
        "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
        "TrafficMirrorFilterId": lab["filter_id"],
        "SessionNumber": 1,
        "DryRun": True,
    }


def _error_code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "ClientError"))
    return type(error).__name__


# Latencies (s) of the calls sent, errors by code, wall time (s), stopped by the time budget.
Measured = tuple[list[float], dict[str, int], float, bool]


def run_sequential(
    url: str, *, lab: dict[str, Any], requests: list[dict[str, Any]], warmup: int, budget_s: float
) -> Measured:
    """One call at a time, as a plain script or a one-off Lambda would send them."""
    ec2: EC2Client = boto3.client(
        "ec2",
        endpoint_url=url,
        region_name=REGION,
        # One attempt per call: a retry would hide the emulator's real answer and its time.
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=1),
        aws_access_key_id=LAB_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=LAB_CREDENTIALS["aws_secret_access_key"],
    )
    for _ in range(warmup):
        with contextlib.suppress(ClientError):  # DryRunOperation is the expected answer
            ec2.create_traffic_mirror_session(**_warmup_request(lab))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + budget_s
    stopped = False
    for request in requests:
        if time.perf_counter() >= deadline:
            stopped = True
            break
        sent = time.perf_counter()
        try:
            ec2.create_traffic_mirror_session(**request)
        except (ClientError, BotoCoreError) as error:
            code = _error_code(error)
            errors[code] = errors.get(code, 0) + 1
        latencies.append(time.perf_counter() - sent)
    wall = time.perf_counter() - started
    ec2.close()
    return latencies, errors, wall, stopped


async def _run_concurrent(
    url: str,
    *,
    lab: dict[str, Any],
    requests: list[dict[str, Any]],
    concurrency: int,
    warmup: int,
    budget_s: float,
) -> Measured:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stopped = False
    client: AioEC2Client
    async with aio_lab_client(url, concurrency=concurrency, region=REGION) as client:
        gate = asyncio.Semaphore(concurrency)

        async def warm() -> None:
            with contextlib.suppress(ClientError):  # DryRunOperation is the expected answer
                await client.create_traffic_mirror_session(**_warmup_request(lab))

        # As many warm-up calls at once as the pool holds, so its connections are open.
        for _ in range(max(1, warmup // concurrency)):
            await asyncio.gather(*(warm() for _ in range(min(warmup, concurrency))))

        started = time.perf_counter()
        deadline = started + budget_s

        async def one(request: dict[str, Any]) -> None:
            nonlocal stopped
            async with gate:
                if time.perf_counter() >= deadline:
                    stopped = True
                    return
                sent = time.perf_counter()
                try:
                    await client.create_traffic_mirror_session(**request)
                except (ClientError, BotoCoreError) as error:
                    code = _error_code(error)
                    errors[code] = errors.get(code, 0) + 1
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(one(r) for r in requests))
        wall = time.perf_counter() - started
    return latencies, errors, wall, stopped


def run_concurrent(
    url: str,
    *,
    lab: dict[str, Any],
    requests: list[dict[str, Any]],
    concurrency: int,
    warmup: int,
    budget_s: float,
) -> Measured:
    return asyncio.run(
        _run_concurrent(
            url,
            lab=lab,
            requests=requests,
            concurrency=concurrency,
            warmup=warmup,
            budget_s=budget_s,
        )
    )


# Reporting --------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarise(
    mode: str,
    *,
    concurrency: int,
    planned: int,
    measured: Measured,
    seed_s: float,
    server_counts: dict[str, int],
) -> RunResult:
    latencies, errors, wall, stopped = measured
    sent = len(latencies)
    created = sent - sum(errors.values())
    ms = sorted(v * 1000 for v in latencies) or [0.0]
    return RunResult(
        mode=mode,
        concurrency=concurrency,
        calls_planned=planned,
        calls_sent=sent,
        created=created,
        errors=errors,
        wall_s=round(wall, 3),
        creates_per_s=round(created / wall, 1) if wall > 0 else 0.0,
        ms_per_call=round(wall * 1000 / sent, 3) if sent else 0.0,
        latency_ms={
            "mean": round(statistics.fmean(ms), 3),
            "p50": round(_percentile(ms, 0.50), 3),
            "p95": round(_percentile(ms, 0.95), 3),
            "p99": round(_percentile(ms, 0.99), 3),
            "max": round(ms[-1], 3),
        },
        stopped_by_budget=stopped,
        seed_s=round(seed_s, 2),
        server_counts=server_counts,
    )


def table(results: list[RunResult]) -> str:
    header = (
        f"{'run':<24} {'conc':>4} {'created':>7} {'errors':>6} {'wall s':>7} "
        f"{'creates/s':>9} {'ms/call':>8} {'p50 ms':>7} {'p95 ms':>7}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r.mode:<24} {r.concurrency:>4} {r.created:>7} {sum(r.errors.values()):>6} "
            f"{r.wall_s:>7.2f} {r.creates_per_s:>9.1f} {r.ms_per_call:>8.2f} "
            f"{r.latency_ms['p50']:>7.2f} {r.latency_ms['p95']:>7.2f}"
        )
    return "\n".join(rows)


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.emulator_ceiling",
        description="CreateTrafficMirrorSession throughput of the mirrorq emulator over real "
        "HTTP: a sequential boto3 loop and one aiobotocore client with many calls in flight.",
    )
    parser.add_argument("--enis", type=int, default=1000, help="ENIs in the lab (default 1000)")
    parser.add_argument(
        "--calls",
        type=int,
        default=None,
        help="creates per run (default: one per ENI; at most 3 per ENI)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="aiobotocore calls in flight and pool size (default 64)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=64,
        help="DryRun calls before each run, not measured (default 64)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds a run may take before it stops sending (default 30)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the emulator and its lab (default 90)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="JSON results file (default bench/results/emulator_ceiling.json)",
    )
    args = parser.parse_args(argv)
    if args.enis < 1 or args.concurrency < 1 or args.warmup < 0 or args.budget <= 0:
        parser.error("--enis and --concurrency must be >= 1, --warmup >= 0, --budget > 0")
    calls = args.enis if args.calls is None else args.calls
    if not 1 <= calls <= args.enis * SESSIONS_PER_ENI:
        parser.error(f"--calls must be 1-{args.enis * SESSIONS_PER_ENI} for {args.enis} ENIs")
    args.calls = calls
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    results: list[RunResult] = []
    print(f"starting the emulator with a lab of {args.enis} ENIs ...", flush=True)
    with Emulator(args.enis, args.startup_timeout) as emulator:
        print(f"  ready at {emulator.url} after {emulator.seed_s:.1f}s", flush=True)
        lab, seed_s = emulator.lab, emulator.seed_s

        before = emulator.counts()
        requests = planned_requests(lab, args.calls, "seq")
        measured = run_sequential(
            emulator.url, lab=lab, requests=requests, warmup=args.warmup, budget_s=args.budget
        )
        results.append(
            summarise(
                "boto3 sequential",
                concurrency=1,
                planned=len(requests),
                measured=measured,
                seed_s=seed_s,
                server_counts=_diff(emulator.counts(), before),
            )
        )
        print(f"  {results[-1].mode}: {results[-1].creates_per_s} creates/s", flush=True)

        lab, seed_s = emulator.fresh_lab()
        before = emulator.counts()
        requests = planned_requests(lab, args.calls, "async")
        measured = run_concurrent(
            emulator.url,
            lab=lab,
            requests=requests,
            concurrency=args.concurrency,
            warmup=args.warmup,
            budget_s=args.budget,
        )
        results.append(
            summarise(
                f"aiobotocore x{args.concurrency}",
                concurrency=args.concurrency,
                planned=len(requests),
                measured=measured,
                seed_s=seed_s,
                server_counts=_diff(emulator.counts(), before),
            )
        )
        print(f"  {results[-1].mode}: {results[-1].creates_per_s} creates/s", flush=True)

    print()
    print(table(results))
    report = {
        "benchmark": "emulator_ceiling",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": shlex.join(
            ["uv", "run", "--frozen", "python", "-m", "bench.emulator_ceiling"]
            + (sys.argv[1:] if argv is None else argv)
        ),
        "settings": {
            "enis": args.enis,
            "calls": args.calls,
            "concurrency": args.concurrency,
            "warmup": args.warmup,
            "budget_s": args.budget,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            **{name: version(name) for name in ("moto", "boto3", "botocore", "aiobotocore")},
        },
        "runs": [asdict(r) for r in results],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    incomplete = any(r.errors or r.stopped_by_budget for r in results)
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
