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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "enis(n): the size of the lab a test file's `lab` seeds")


# Seconds each file's tests took, and the tests that took the longest, in one run of the
# suite (2026-12-06, `--durations=0`, on the shared 2-core VM under load): weights for the
# order below, not limits (test_pipeline's without the 448 s its 300-ENI labs took to seed,
# since sized to each test). A file not named here weighs UNMEASURED.
FILE_SECONDS = {
    "test_pipeline": 285, "test_places": 585, "test_api": 572, "test_accounts_reconcile": 366,
    "test_batches": 335, "test_events": 290, "test_bulk": 286, "test_redis_faults": 271,
    "test_placement": 226, "test_ratelimit": 193, "test_events_accounts": 189,
    "test_openapi": 178, "test_hostile_messages": 140, "test_hostile_input": 116,
    "test_leases": 113, "test_policy_reload": 101, "test_emulator_accounts": 101,
    "test_emulator": 90, "test_scopes": 87, "test_admission_turns": 76,
    "test_reconcile_churn": 75, "test_proxy_faults": 63, "test_demo": 53,
    "test_emulator_events": 49, "test_repair": 35, "test_admission": 33,
    "test_moto_compat": 22, "test_secrets": 21, "test_policy_accounts": 14, "test_cli": 12,
    "test_contract": 2, "test_shared_targets": 1, "test_batch_messages": 1, "test_records": 1,
    "test_policy": 0, "test_retry": 0, "test_errors": 0, "test_compose": 0, "test_intake": 0,
    "test_emulator_reads": 1,
}  # fmt: skip
UNMEASURED = 50
LONGEST = frozenset({
    "test_a_thousand_jobs_posted_at_once_end_created_one_session_each",
    "test_credentials_expiring_every_few_seconds_are_refreshed_and_no_job_fails",
    "test_fifty_account_regions_through_one_worker_with_a_client_cache_of_eight",
    "test_an_organisation_of_1200_enis_is_mirrored_once_and_a_denied_role_fails_only_its_own",
    "test_a_2000_job_batch_runs_and_exports_what_exists",
    "test_events_mirror_every_matching_eni_once_per_rule_and_reconcile_repairs",
    "test_mirror_a_vpc_creates_one_session_per_eligible_eni_and_is_idempotent",
    "test_cli_doors_take_a_placement_and_refuse_a_bad_one_naming_the_field",
    "test_overlapping_runs_never_mirror_an_eni_twice_and_deleted_sessions_come_back",
    "test_the_document_lists_every_answer_and_every_constraint",
    "test_events_of_three_accounts_in_two_regions_are_each_mirrored_once_in_their_own",
    "test_a_redis_restart_mid_batch_loses_and_duplicates_nothing",
    "test_passes_over_queued_jobs_submit_each_gap_once_and_empty_passes_store_nothing",
})  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, each file's longest tests first, every other test in its
    file's order: xdist hands the test processes the tests in this order, so the long ones
    share out from the start instead of one process running on alone at the end (in file
    order, test_places and test_redis_faults came last). A file's tests stay together, so
    its module-scoped fixtures are still made once per test process."""

    def weight(item: pytest.Item) -> tuple[int, bool]:
        name = getattr(item, "originalname", item.name)
        return -FILE_SECONDS.get(item.path.stem, UNMEASURED), name not in LONGEST

    items.sort(key=weight)


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
        # The test is over: SIGKILL, not a warm shutdown (a second or two of closing clients
        # and pools per worker; Redis is flushed and the emulator emptied before the next test).
        worker.kill()
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
