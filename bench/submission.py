"""Submission: seconds to submit a 10,000-job batch, and Redis memory per job."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import REDIS_URL, flush, producer
from tasks.contract import parse_request

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
