"""The HTTP API: jobs/s accepted by POST /v1/jobs (one job a request, 64 clients) and by
POST /v1/batches, and a single POST's p99 latency, beside the Python producer in the same run.

Only acceptance is measured (validated, recorded, queued): no worker runs, so the queue fills.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import httpx

from bench.common import REDIS_URL, flush, producer
from mirrorq.processes import ApiProcess, free_port
from tasks.contract import parse_request

CLIENTS = 64
JOBS = 3000
BATCH = 1000
TOKEN = "bench-token-0f3a9c2e"  # noqa: S105 - a local benchmark's own


def _job(i: int) -> dict[str, Any]:
    return {
        "NetworkInterfaceId": f"eni-{i:017x}",
        "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
        "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
        "SessionNumber": "auto",
    }


async def _post_jobs(url: str, jobs: int) -> tuple[float, list[float]]:
    """Seconds to post `jobs` jobs from CLIENTS clients at once, and each POST's latency."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:

        async def client() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                started = time.monotonic()
                answer = await http.post("/v1/jobs", json=_job(i))
                latencies.append(time.monotonic() - started)
                assert answer.status_code == 202, answer.text

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return time.monotonic() - started, latencies


def _single_latencies(url: str, samples: int) -> list[float]:
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
    latencies = []
    for i in range(samples):
        started = time.monotonic()
        assert http.post("/v1/jobs", json=_job(10**6 + i)).status_code == 202
        latencies.append(time.monotonic() - started)
    return sorted(latencies)


def bench_api() -> dict[str, Any]:
    flush()
    port = free_port()
    env = {"MIRRORQ_BROKER_URL": REDIS_URL, "MIRRORQ_API_TOKENS": TOKEN}
    out: dict[str, Any] = {"clients": CLIENTS, "jobs": JOBS, "batch": BATCH}
    with ApiProcess("bench-api", {**os.environ, **env}, "--port", str(port)) as api:
        api.wait_ready(60)
        url = f"http://127.0.0.1:{port}"
        asyncio.run(_post_jobs(url, 200))  # warm up: connections, the scripts loaded
        seconds, _ = asyncio.run(_post_jobs(url, JOBS))
        out["post_jobs_per_s"] = JOBS / seconds
        single = _single_latencies(url, 300)
        out["single_post_ms"] = {
            "p50": statistics.median(single) * 1000,
            "p99": statistics.quantiles(single, n=100, method="inclusive")[98] * 1000,
        }
        body = "".join(parse_request(_job(i)).model_dump_json() + "\n" for i in range(BATCH))
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        started = time.monotonic()
        for _ in range(5):
            assert http.post("/v1/batches", content=body).status_code == 202
        out["post_batches_jobs_per_s"] = 5 * BATCH / (time.monotonic() - started)
    flush()
    p = producer()
    started = time.monotonic()
    for i in range(JOBS):
        p.submit(_job(i))
    out["python_producer_jobs_per_s"] = JOBS / (time.monotonic() - started)
    requests = [parse_request(_job(i)) for i in range(BATCH)]
    started = time.monotonic()
    for _ in range(5):
        p.submit_batch(requests)
    out["python_producer_batch_jobs_per_s"] = 5 * BATCH / (time.monotonic() - started)
    flush()
    return out
