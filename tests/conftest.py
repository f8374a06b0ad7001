"""Shared fixtures: a clean environment, the emulator process, a clean Redis database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from emulator.lab import LAB_CREDENTIALS, lab_client
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.producer import Producer
from tests.helpers import FAST, producer_for
from tests.redis_server import RedisServer


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The test session's own redis-server on a free port: no other test run, developer or
    CI job on this machine shares its queue, and the machine's Redis is never touched."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), aof=False).start()
    yield server
    server.stop()


def flushed(url: str) -> str:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of the tests' own, emptied before each test."""
    return flushed(redis_server.url(11))


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

    def start(name: str | None = None, *args: str, **overrides: str) -> WorkerProcess:
        worker = WorkerProcess(
            name or f"w{len(started)}-{uuid.uuid4().hex[:6]}", {**env, **overrides}, *args
        )
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def producer(env: dict[str, str]) -> Producer:
    return producer_for(env["MIRRORQ_BROKER_URL"])


@pytest.fixture
def results_url(redis_server: RedisServer) -> str:
    """A second database of the tests' own, for results kept apart from the broker."""
    return flushed(redis_server.url(12))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF on), which the test may stop, crash, restart."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def other(redis_url: str) -> Celery:
    """Another service's Celery client: no mirrorq imported, JSON only."""
    app = Celery("someone-else", broker=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="mirrorq")
    return app
