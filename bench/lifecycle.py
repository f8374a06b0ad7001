"""A session's life riding one bucket: creates, then modifies, then deletes of the same sessions,
each kind a batch riding its action's bucket (EC2 keeps one per API action, per account and
Region: bench/limits.py's shape, bucket 50, refill 20/s), against the theoretical rate, the
three in one run on one fleet."""

from __future__ import annotations

import time
from typing import Any

from bench.common import fresh_lab, producer, requests_for, workers
from mirrorq.processes import EmulatorProcess
from tasks.contract import JobKind, JobRequest, parse_request
from tasks.producer import Producer

MODIFIED = {"Description": "bench-modified", "PacketLength": 128}


def bench_lifecycle(
    emulator: EmulatorProcess,
    jobs: int,
    ec2: tuple[float, int] = (20, 50),
    mirrorq: tuple[float, int] = (20, 45),
) -> dict[str, Any]:
    """`jobs` sessions created, modified and deleted by 4 workers with the shared limiter at
    `mirrorq` (rate, burst) against an emulator throttling each action at `ec2`."""
    rate, burst = ec2
    lab = fresh_lab(emulator, jobs)
    theoretical_s = max(jobs - burst, 0) / rate
    runs: dict[str, Any] = {}
    with workers(
        emulator,
        4,
        MIRRORQ_EC2_RATE=str(mirrorq[0]),
        MIRRORQ_EC2_BURST=str(mirrorq[1]),
        MIRRORQ_JOB_DEADLINE_S="600",
        MIRRORQ_VISIBILITY_TIMEOUT_S="900",
    ):
        p = producer()
        creates = [parse_request(r) for r in requests_for(lab)]
        runs["create"], records = _ride(emulator, p, JobKind.CREATE, creates, None, ec2)
        made = [
            (r["response"]["TrafficMirrorSession"]["TrafficMirrorSessionId"], str(eni))
            for r in records
            if r["response"] and (eni := (r["request"] or {}).get("NetworkInterfaceId"))
        ]
        enis: list[str | None] = [eni for _, eni in made]
        modifies: list[JobRequest] = [
            parse_request({"TrafficMirrorSessionId": s, **MODIFIED}, JobKind.MODIFY)
            for s, _ in made
        ]
        runs["modify"], _ = _ride(emulator, p, JobKind.MODIFY, modifies, enis, ec2)
        modified = sum(
            1
            for s in _sessions(emulator)
            if (s.get("Description"), s.get("PacketLength")) == tuple(MODIFIED.values())
        )
        deletes: list[JobRequest] = [
            parse_request({"TrafficMirrorSessionId": s}, JobKind.DELETE) for s, _ in made
        ]
        runs["delete"], _ = _ride(emulator, p, JobKind.DELETE, deletes, enis, ec2)
    for run in runs.values():
        run["ratio_to_theoretical"] = (
            theoretical_s / run["seconds"] if run["succeeded"] == jobs else None
        )
    return {
        "jobs": jobs,
        "ec2_rate": rate,
        "ec2_burst": burst,
        "mirrorq_limit": list(mirrorq),
        "theoretical_seconds": theoretical_s,
        "theoretical_rate": jobs / theoretical_s if theoretical_s else None,
        "runs": runs,
        "sessions_modified": modified,
        "sessions_left": len(_sessions(emulator)),
    }


def _ride(
    emulator: EmulatorProcess,
    p: Producer,
    kind: JobKind,
    requests: list[Any],
    enis: list[str | None] | None,
    ec2: tuple[float, int],
) -> tuple[dict[str, Any], list[Any]]:
    """One kind's batch from full buckets (the emulator's refilled, mirrorq's limiter of the
    action untouched before): seconds, rate, throttles, outcome, and its records."""
    emulator.set_faults(throttle_rate=ec2[0], throttle_burst=ec2[1])  # refills every bucket
    before = emulator.stats().get(kind.action, {})
    started = time.monotonic()
    batch_id = p.submit_batch(requests, network_interface_ids=enis)
    while not (status := p.batch_status(batch_id) or {}).get("finished_at"):
        if time.monotonic() - started > 900:
            raise TimeoutError(f"{kind} batch unfinished after 900 s: {status}")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    after = emulator.stats().get(kind.action, {})
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(calls.values())
    succeeded = sum(n for s, n in status["counts"].items() if s != "failed")
    return {
        "seconds": elapsed,
        "achieved_rate": succeeded / elapsed,
        "succeeded": succeeded,
        "outcome": status["counts"],
        "calls": calls,
        "throttled_fraction": calls.get("RequestLimitExceeded", 0) / total if total else 0.0,
    }, list(p.batch_results(batch_id))


def _sessions(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    from emulator.lab import sessions

    return sessions(emulator.url)
