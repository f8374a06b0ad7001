"""Shared fixtures: a clean environment, the emulator process, a clean Redis database."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from emulator.lab import LAB_CREDENTIALS, lab_client
from mirrorq.processes import EmulatorProcess, ServiceProcess, WorkerProcess
from tasks.producer import Producer
from tests import forkserver
from tests.forkserver import ForkServer
from tests.helpers import FAST, producer_for
from tests.redis_server import RedisServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "enis(n): the size of the lab a test file's `lab` seeds")


# Seconds each file's tests took, and the tests that took the longest, in one run of the
# suite (2026-12-06 on main 760f627, `-n 3`, per-test start and end times, the shared 2-core
# VM under load): weights for the order below, not limits. A file not named here weighs
# UNMEASURED.
FILE_SECONDS = {
    "test_sentinel": 300, "test_api": 163, "test_pipeline": 149, "test_redis_faults": 140,
    "test_places": 129, "test_accounts_reconcile": 129, "test_bulk": 127, "test_events": 102,
    "test_dashboard": 97, "test_dark": 80, "test_lb_targets": 75, "test_openapi": 75,
    "test_leases": 60,
    "test_ratelimit": 59, "test_events_accounts": 54, "test_hostile_messages": 53,
    "test_batches": 46, "test_placement": 41, "test_admission_turns": 38, "test_demo": 34,
    "test_reconcile_churn": 33, "test_emulator_accounts": 33, "test_emulator": 32,
    "test_policy_reload": 30, "test_hostile_input": 29, "test_prune": 28, "test_secrets": 28,
    "test_proxy_faults": 27, "test_lifecycle_jobs": 26, "test_admission": 24,
    "test_emulator_events": 21, "test_repair": 21, "test_scopes": 12, "test_logs": 10,
    "test_moto_compat": 6, "test_cli": 6, "test_records": 1, "test_replication": 1,
    "test_contract": 0, "test_batch_messages": 0, "test_policy_accounts": 0, "test_retry": 0,
    "test_emulator_reads": 0, "test_policy": 0, "test_errors": 0, "test_compose": 0,
    "test_intake": 0, "test_ui_parts": 0, "test_coverage": 0, "test_prune_plan": 0,
    "test_shared_targets": 0,
}  # fmt: skip
UNMEASURED = 50
LONGEST = frozenset({  # 20 s and more
    "test_failovers_mid_batch_lose_no_accepted_job_with_a_replica_required",
    "test_a_graceful_failover_loses_nothing_by_default",
    "test_the_listener_follows_a_graceful_failover_unrestarted",
    "test_sessions_on_a_deleted_nlb_or_gwlb_endpoint_are_dark_and_moved_a_live_nlb_kept",
    "test_a_deleted_load_balancer_s_cloudtrail_event_repairs_its_sessions_through_the_listener",
    "test_a_terminated_sensor_s_sessions_go_dark_and_are_moved_in_place",
    "test_a_thousand_jobs_posted_at_once_end_created_one_session_each",
    "test_the_dashboard_shows_coverage_batches_and_the_fleet_live",
    "test_mirror_a_vpc_creates_one_session_per_eligible_eni_and_is_idempotent",
    "test_the_document_lists_every_answer_and_every_constraint",
    "test_credentials_expiring_every_few_seconds_are_refreshed_and_no_job_fails",
    "test_an_idempotency_key_never_points_at_a_job_that_does_not_exist",
    "test_fifty_account_regions_through_one_worker_with_a_client_cache_of_eight",
    "test_events_mirror_every_matching_eni_once_per_rule_and_reconcile_repairs",
    "test_an_organisation_of_1200_enis_is_mirrored_once_and_a_denied_role_fails_only_its_own",
    "test_sigkilled_worker_loses_nothing_and_duplicates_nothing",
    "test_a_restore_sweep_cut_off_by_a_redis_restart_holds_back_abandoned_messages_briefly",
    "test_a_2000_job_batch_runs_and_exports_what_exists",
    "test_one_reconcile_mirrors_every_eni_of_every_account_and_region_once_in_its_own",
    "test_overlapping_runs_never_mirror_an_eni_twice_and_deleted_sessions_come_back",
    "test_events_of_three_accounts_in_two_regions_are_each_mirrored_once_in_their_own",
    "test_passes_over_queued_jobs_submit_each_gap_once_and_empty_passes_store_nothing",
    "test_a_slow_accounts_jobs_wait_for_their_turn_without_holding_the_worker",
    "test_prune_unmirror_and_retarget_touch_only_what_mirrorq_manages_and_means",
    "test_cli_doors_take_a_placement_and_refuse_a_bad_one_naming_the_field",
    "test_events_that_can_never_be_handled_hold_back_no_other_event",
    "test_throttled_describes_spend_no_create_slots",
    "test_a_lower_limit_than_configured_is_found_by_backing_off",
    "test_a_busy_worker_repairs_a_lost_job_before_its_backlog_drains",
})  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, each file's longest tests first, every other test in its
    file's order: xdist hands the test processes the tests in this order, so the long ones
    share out from the start instead of one process running on alone at the end (in file
    order, test_places and test_redis_faults came last). A file's tests stay together, so
    its module-scoped fixtures are still made once per test process.

    `--maxschedchunk=1` (pyproject.toml) makes xdist hand them out one or two at a time as
    processes free up; by default each process took the next quarter of its share at once
    (51 tests), so both of test_sentinel's two-minute tests ran one after the other in one
    process while the others had finished."""

    def weight(item: pytest.Item) -> tuple[int, bool]:
        name = getattr(item, "originalname", item.name)
        return -FILE_SECONDS.get(item.path.stem, UNMEASURED), name not in LONGEST

    items.sort(key=weight)


@pytest.fixture(scope="session", autouse=True)
def _fork_server() -> Iterator[None]:
    """Workers, listeners, APIs and the CLI commands run by `run_mirrorq` forked from a
    process that has imported them already (tests/forkserver.py), unless
    MIRRORQ_TESTS_SPAWN=1: then each is a fresh `python -m mirrorq` as outside the tests."""
    if os.environ.get("MIRRORQ_TESTS_SPAWN") == "1":
        yield
        return
    server = forkserver.current = ForkServer()
    ServiceProcess.launcher = server.launch
    yield
    ServiceProcess.launcher = subprocess.Popen
    forkserver.current = None
    server.close()


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
