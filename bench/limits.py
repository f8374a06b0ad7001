"""Riding the limit: a fleet against an emulator that throttles like EC2, with the shared
limiter and with botocore's retries alone."""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CONCURRENCY,
    fresh_lab,
    requests_for,
    run_batch,
    sessions_and_duplicates,
    workers,
)
from mirrorq.processes import EmulatorProcess
from tasks.records import JobStatus

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
