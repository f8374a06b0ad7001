"""Shared fixtures: a clean environment, the emulator process, a clean Redis database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from config import Settings
from emulator.lab import LAB_CREDENTIALS, lab_client
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.app import create_app
from tasks.producer import Producer


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pass only because of the developer's own AWS or mirrorq settings."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "MIRRORQ_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[EmulatorProcess]:
    emulator = EmulatorProcess("--seed", "7")
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> EmulatorProcess:
    """The session's emulator, emptied and with every fault off."""
    emulator_process.reset()
    return emulator_process


@pytest.fixture
def ec2(emulator: EmulatorProcess) -> Any:
    return lab_client(emulator.url)


TEST_REDIS_URL = "redis://127.0.0.1:6379/11"


@pytest.fixture
def redis_url() -> str:
    """A Redis database of the tests' own, emptied before each test."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    client.close()
    return TEST_REDIS_URL


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


@pytest.fixture
def env(emulator: EmulatorProcess, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        **FAST,
        "MIRRORQ_BROKER_URL": redis_url,
        "MIRRORQ_EC2_ENDPOINT_URL": emulator.url,
        "MIRRORQ_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": LAB_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LAB_CREDENTIALS["aws_secret_access_key"],
    }


@pytest.fixture
def start_worker(env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str | None = None, **overrides: str) -> WorkerProcess:
        worker = WorkerProcess(
            name or f"w{len(started)}-{uuid.uuid4().hex[:6]}", {**env, **overrides}
        )
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def producer(env: dict[str, str]) -> Producer:
    fast: dict[str, Any] = {k.removeprefix("MIRRORQ_").lower(): v for k, v in FAST.items()}
    settings = Settings(broker_url=env["MIRRORQ_BROKER_URL"], **fast)
    return Producer(create_app(settings), settings)
