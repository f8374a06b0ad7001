"""Batches: job files with line numbers, and batches end to end through real workers."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from emulator.lab import lab_client, seed_lab
from mirrorq.jobfiles import read_jobs
from mirrorq.processes import MIRRORQ, EmulatorProcess, WorkerProcess
from tasks.errors import BatchFileError
from tests.forkserver import run_mirrorq

GOOD = {
    "NetworkInterfaceId": "eni-0123456789abcdef0",
    "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
    "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
    "SessionNumber": 1,
}


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def bad_lines(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(BatchFileError) as raised:
        read_jobs(path)
    return [(e.get("line", 0), e["field"]) for e in raised.value.errors]


# Reading files (pure) -------------------------------------------------------------------------


def test_jsonl_and_csv_read_the_same_jobs(tmp_path: Path) -> None:
    tags = [{"ResourceType": "traffic-mirror-session", "Tags": [{"Key": "team", "Value": "sec"}]}]
    full = {**GOOD, "PacketLength": 128, "TagSpecifications": tags, "DryRun": True}
    jsonl = write(tmp_path, "jobs.jsonl", [json.dumps(GOOD), "", json.dumps(full)])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*GOOD, "PacketLength", "TagSpecifications", "DryRun"])
    writer.writeheader()
    writer.writerow(GOOD)
    writer.writerow({**full, "TagSpecifications": json.dumps(tags), "DryRun": "true"})
    csv_path = tmp_path / "jobs.csv"
    csv_path.write_text(out.getvalue())
    assert read_jobs(jsonl) == read_jobs(csv_path)
    assert [j.to_kwargs() for j in read_jobs(jsonl)] == [GOOD, full]


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs.jsonl",
        [
            json.dumps(GOOD),
            "{not json",
            json.dumps({**GOOD, "Colour": "red"}),
            json.dumps({**GOOD, "SessionNumber": 40000}),
            json.dumps(GOOD),
            json.dumps({**GOOD, "PacketLength": 0, "VirtualNetworkId": -1}),
        ],
    )
    assert bad_lines(path) == [
        (2, "(line)"),
        (3, "Colour"),
        (4, "SessionNumber"),
        (6, "PacketLength"),
        (6, "VirtualNetworkId"),
    ]


def test_csv_errors_carry_file_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs.csv",
        [
            ",".join(GOOD),
            ",".join(str(v) for v in GOOD.values()),
            "eni-0123456789abcdef0,tmt-0123456789abcdef0,tmf-0123456789abcdef0,1.5",
            "eni-0123456789abcdef0,tmt-0123456789abcdef0,tmf-0123456789abcdef0,1,extra",
        ],
    )
    assert bad_lines(path) == [(3, "SessionNumber"), (4, "(line)")]


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    assert bad_lines(write(tmp_path, "empty.jsonl", [""])) == [(0, "(file)")]


# End to end -----------------------------------------------------------------------------------


@pytest.fixture
def lab(emulator: EmulatorProcess) -> dict[str, Any]:
    return seed_lab(emulator.url, 2000)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_mirrorq([*MIRRORQ, *args], env=env, check=False, timeout=300)


def test_a_2000_job_batch_runs_and_exports_what_exists(
    emulator: EmulatorProcess,
    lab: dict[str, Any],
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    jobs = [
        {
            **GOOD,
            "NetworkInterfaceId": eni,
            "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
            "TrafficMirrorFilterId": lab["filter_id"],
            "SessionNumber": "auto",
        }
        for eni in lab["eni_ids"]
    ]
    path = write(tmp_path, "jobs.jsonl", [json.dumps(j) for j in jobs])
    submitted = run(env, "batch", "submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    start_worker()
    start_worker()
    watched = run(env, "batch", "status", batch_id, "--watch", "--json")
    assert watched.returncode == 0, watched.stderr
    status = json.loads(watched.stdout)
    assert status["counts"] == {"created": 2000}
    assert status["total"] == status["done"] == 2000
    assert status["finished_at"] >= status["submitted_at"]

    sessions = {
        s["TrafficMirrorSessionId"]: s
        for page in lab_client(emulator.url)
        .get_paginator("describe_traffic_mirror_sessions")
        .paginate()
        for s in page["TrafficMirrorSessions"]
    }
    exported = run(env, "batch", "results", batch_id, "--format", "jsonl")
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["request"]["NetworkInterfaceId"] for r in records] == lab["eni_ids"]
    by_session = {
        r["response"]["TrafficMirrorSession"]["TrafficMirrorSessionId"]: r for r in records
    }
    assert set(by_session) == set(sessions)
    for session_id, record in by_session.items():
        assert record["response"]["TrafficMirrorSession"] == sessions[session_id]
        assert record["batch_id"] == batch_id

    as_csv = list(
        csv.DictReader(
            io.StringIO(run(env, "batch", "results", batch_id, "--format", "csv").stdout)
        )
    )
    assert {row["TrafficMirrorSessionId"] for row in as_csv} == set(sessions)
    assert {(row["NetworkInterfaceId"], row["TrafficMirrorSessionId"]) for row in as_csv} == {
        (s["NetworkInterfaceId"], sid) for sid, s in sessions.items()
    }
    assert {row["SessionNumber"] for row in as_csv} == {"1"}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["{oops"], "line 1"),
        ([json.dumps(GOOD), json.dumps({**GOOD, "Bogus": 1})], "line 2: Bogus"),
        (
            [json.dumps(GOOD), json.dumps(GOOD), json.dumps({**GOOD, "PacketLength": 9000})],
            "line 3: PacketLength",
        ),
        ([""], "holds no jobs"),
    ],
)
def test_bad_files_are_refused_whole_and_nothing_is_queued(
    env: dict[str, str], redis_url: str, tmp_path: Path, lines: list[str], expected: str
) -> None:
    refused = run(env, "batch", "submit", str(write(tmp_path, "jobs.jsonl", lines)))
    assert refused.returncode == 2
    assert expected in refused.stderr
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # no queue, no records, no batch


def test_unknown_batch_is_a_usage_error(env: dict[str, str]) -> None:
    assert run(env, "batch", "status", "no-such-batch").returncode == 2
    assert run(env, "batch", "results", "no-such-batch").returncode == 2
