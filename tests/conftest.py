"""Shared fixtures: a clean environment, the emulator process, a clean Redis database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from emulator.lab import lab_client
from tests.processes import EmulatorProcess


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pass only because of the developer's own AWS or mirrorq settings."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "MIRRORQ_")) and name != "MIRRORQ_TEST_LOGS":
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
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    client.close()
    return TEST_REDIS_URL
