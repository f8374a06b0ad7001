"""What many integration tests share: building jobs for a lab, waiting for them, reading EC2."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from datetime import datetime as dt
from datetime import timedelta
from typing import Any

import redis

from config import Settings
from emulator import lab
from tasks.app import create_app
from tasks.contract import TASK_NAME
from tasks.producer import Producer

Lab = dict[str, Any]

# Short enough that a dead worker's jobs move on within the test, long enough for any job.
FAST = {
    "MIRRORQ_JOB_DEADLINE_S": "20",
    "MIRRORQ_READ_TIMEOUT_S": "5",
    "MIRRORQ_VISIBILITY_TIMEOUT_S": "30",
    "MIRRORQ_BACKOFF_BASE_S": "0.05",
    "MIRRORQ_BACKOFF_CAP_S": "1",
    "MIRRORQ_REPAIR_INTERVAL_S": "2",
    "MIRRORQ_LOST_AFTER_S": "10",
    # The shared limiter stays in the path, at rates the emulator never reaches.
    "MIRRORQ_EC2_RATE": "1000",
    "MIRRORQ_EC2_BURST": "200",
    "MIRRORQ_EC2_DESCRIBE_RATE": "1000",
    "MIRRORQ_EC2_DESCRIBE_BURST": "200",
}


def producer_for(broker_url: str, **overrides: Any) -> Producer:
    """A producer with the tests' short timings, on its own Celery app."""
    fast: dict[str, Any] = {k.removeprefix("MIRRORQ_").lower(): v for k, v in FAST.items()}
    settings = Settings(broker_url=broker_url, **{**fast, **overrides})
    return Producer(create_app(settings), settings)


def job(lab: Lab, eni: int, **extra: Any) -> dict[str, Any]:
    """A job for the lab's `eni`-th ENI, to its NLB target through its filter (an instance's
    ENI, as a target, takes sessions from 10 sources at most)."""
    return {
        "NetworkInterfaceId": lab["eni_ids"][eni],
        "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
        "TrafficMirrorFilterId": lab["filter_id"],
        "SessionNumber": 1,
        **extra,
    }


def wait_all(producer: Producer, job_ids: list[str], timeout: float = 120) -> list[Any]:
    """Every job's terminal record, in order; TimeoutError naming what is left otherwise."""
    deadline = time.monotonic() + timeout
    results: dict[str, Any] = {}
    while True:
        # The unfinished jobs' records, a hundred to a round trip, up to the first hundred
        # still running: jobs end roughly in order, and reading (and decoding) every record of
        # a big batch one by one five times a second took CPU from the workers waited for.
        unfinished = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in results]
        for chunk in range(0, len(unfinished), 100):
            wanted = unfinished[chunk : chunk + 100]
            for job_id, record in zip(wanted, producer.store.load_many(wanted), strict=True):
                if record is not None and producer.store.is_terminal(record):
                    results[job_id] = record
            if not all(job_id in results for job_id in wanted):
                break
        else:
            return [results[j] for j in job_ids]
        if time.monotonic() > deadline:
            pending = Counter(
                (producer.result(j) or {"status": "unknown"})["status"]
                for j in job_ids
                if j not in results
            )
            raise TimeoutError(f"{len(job_ids) - len(results)} jobs unfinished: {pending}")
        time.sleep(0.2)


def status_of(producer: Producer, job_id: str) -> str | None:
    record = producer.result(job_id)
    return None if record is None else record["status"]


def sessions(endpoint_url: str) -> list[dict[str, Any]]:
    """Every session that exists in EC2 (the emulator, or any stand-in at that URL)."""
    return lab.sessions(endpoint_url)


def mirrors(endpoint_url: str, target_id: str, filter_id: str) -> Counter[str]:
    """Sessions per source ENI to this target through this filter."""
    return Counter(
        s["NetworkInterfaceId"]
        for s in sessions(endpoint_url)
        if (s["TrafficMirrorTargetId"], s["TrafficMirrorFilterId"]) == (target_id, filter_id)
    )


def wait_until(condition: Any, timeout: float = 60, interval: float = 0.05, what: str = "") -> None:
    """Poll `condition()` until it is true; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(interval)


def raw_message(task_id: str, body: str, task: str = TASK_NAME) -> dict[str, Any]:
    """A Celery protocol 2 message as kombu's Redis transport stores it, built by hand (push
    its JSON onto the queue's list to deliver it)."""
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "go",
            "task": task,
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "mirrorq"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def json_lines(text: str, process: str) -> list[dict[str, Any]]:
    """Every line of a process's output as JSON, each with the four fields every line has;
    an AssertionError naming the first that is not."""
    lines: list[dict[str, Any]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        try:
            line = json.loads(raw)
        except ValueError:
            raise AssertionError(f"{process}, line {n} is not JSON: {raw[:300]!r}") from None
        assert isinstance(line, dict), f"{process}, line {n}: {raw[:300]}"
        assert {"timestamp", "level", "logger", "message"} <= line.keys(), (process, n, line)
        stamp = dt.fromisoformat(line["timestamp"])
        assert stamp.utcoffset() == timedelta(0), (process, n, line["timestamp"])
        assert line["level"] in LOG_LEVELS, (process, n, line)
        lines.append(line)
    assert lines, f"{process} logged nothing"
    return lines


def records(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter("celery-task-meta-*"))
    return [json.loads(v)["result"] for v in client.mget(keys) if v] if keys else []
