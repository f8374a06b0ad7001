"""One process of a fleet that relies on botocore's standard retries alone (no shared limit).

`python -m bench.botocore_fleet ENDPOINT JOBS_FILE SHARD SHARDS CONCURRENCY` creates its
shard of the jobs with one aiobotocore client, each job's own ClientToken fixed, and prints
a JSON line: jobs created, failed (botocore gave up) and the failures' codes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import Any

from botocore.exceptions import ClientError

from emulator.lab import aio_lab_client

MAX_ATTEMPTS = 10  # what a careful user sets; botocore's own default is 3


async def run(endpoint: str, jobs: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    failures: Counter[str] = Counter()
    created = 0
    gate = asyncio.Semaphore(concurrency)
    async with aio_lab_client(
        endpoint,
        concurrency=concurrency,
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
    ) as client:

        async def one(job: dict[str, Any]) -> None:
            nonlocal created
            async with gate:
                try:
                    await client.create_traffic_mirror_session(**job)
                    created += 1
                except ClientError as error:
                    failures[error.response["Error"]["Code"]] += 1

        await asyncio.gather(*(one(j) for j in jobs))
    return {"created": created, "failed": sum(failures.values()), "failures": dict(failures)}


def main() -> None:
    endpoint, path, shard, shards, concurrency = sys.argv[1:6]
    with open(path) as f:
        jobs = [json.loads(line) for line in f][int(shard) :: int(shards)]
    print(json.dumps(asyncio.run(run(endpoint, jobs, int(concurrency)))))


if __name__ == "__main__":
    main()
