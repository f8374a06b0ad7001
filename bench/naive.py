"""The baseline users write today: a Celery task that opens a new client per job.

Run by bench.suite as `celery -A bench.naive worker --pool threads -c 64`; each task runs
`asyncio.run()` around a freshly created aiobotocore client, exactly what mirrorq avoids.
Deliberately naive: it reads its endpoint from the environment itself.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from celery import Celery

app = Celery(
    "naive",
    broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/14"),
    backend=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/14"),
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_default_queue="naive",
    worker_prefetch_multiplier=1,
)


async def _create(request: dict[str, Any]) -> str:
    async with get_session().create_client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=os.environ["NAIVE_EC2_ENDPOINT_URL"],
        config=AioConfig(retries={"total_max_attempts": 1}),
    ) as client:
        answer = await client.create_traffic_mirror_session(**request)
        return answer["TrafficMirrorSession"]["TrafficMirrorSessionId"]


@app.task(name="naive.create")
def create(request: dict[str, Any]) -> str:
    return asyncio.run(_create(request))
