"""Redis Sentinel: a private primary, replica and three sentinels (tests/redis_server.py
SentinelSet, AOF on), real workers and producers pointed at the sentinels, and, in the
middle of one batch, the primary handed over (`SENTINEL FAILOVER`) and then killed
(`kill -9`). Nothing is restarted but the Redis that was killed (as its supervisor would),
which comes back as the new primary's replica. A graceful failover loses no accepted job,
with MIRRORQ_REDIS_MIN_REPLICAS=1 or without; a kill -9 none with it, and without it the
test states what was (README, "What survives a Redis restart or failover").
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from emulator.lab import seed_lab
from emulator.zoned_lab import expected_mirrors, launch_instance, policy_text, seed_zoned_lab
from mirrorq.processes import (
    MIRRORQ,
    ApiProcess,
    EmulatorProcess,
    ListenerProcess,
    WorkerProcess,
    free_port,
)
from tasks.connections import async_pool, primary_followed
from tasks.contract import parse_request
from tasks.errors import NotReplicatedError
from tasks.producer import Producer
from tests.helpers import Lab, job, producer_for, records, sessions, wait_all, wait_until
from tests.intake_queues import drain, intake_queue, queue_depth, send
from tests.redis_server import RedisServer, SentinelSet
from worker.leases import Leases
from worker.timing import REAL

# The batch, and the create rate that makes it outlast both failovers (two workers; a
# graceful failover takes 15-40 s here). With a replica required: the 2,000 jobs the issue
# asks for; without, what is lost shows with fewer.
RUNS = {"min-replicas-1": (1, 2000, 20), "min-replicas-0": (0, 600, 8)}
TOKEN = "sentinel-test-token-0c5e"  # noqa: S105 - the API's, in this test only
SINGLES = 40  # jobs a producer submits one by one while Redis fails over
# Three sessions an ENI (numbers 1-3, EC2's limit): a lab a third the batch's size seeds fast.
PER_ENI = 3


def batch_job(lab: Lab, n: int) -> dict[str, Any]:
    return job(lab, n // PER_ENI, SessionNumber=n % PER_ENI + 1)


def batch_enis(size: int) -> int:
    return -(-size // PER_ENI)


def slots(endpoint_url: str, lab: Lab) -> Counter[tuple[str, int]]:
    """Sessions per (source ENI, SessionNumber) to the lab's NLB target through its filter."""
    return Counter(
        (s["NetworkInterfaceId"], s["SessionNumber"])
        for s in sessions(endpoint_url)
        if (s["TrafficMirrorTargetId"], s["TrafficMirrorFilterId"])
        == (lab["target_ids"]["nlb"], lab["filter_id"])
    )


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    redis_set = SentinelSet(tmp_path).start()
    yield redis_set
    redis_set.stop()


def sentinel_env(env: dict[str, str], redis_set: SentinelSet, replicas: int) -> dict[str, str]:
    return {
        **env,
        "MIRRORQ_BROKER_URL": redis_set.url(0),
        "MIRRORQ_SENTINEL_MASTER": redis_set.MASTER,
        "MIRRORQ_REDIS_MIN_REPLICAS": str(replicas),
        "MIRRORQ_REPAIR_INTERVAL_S": "1",
        "MIRRORQ_LOST_AFTER_S": "3",
        # Messages whose ack a failover lost come back after the visibility timeout: short
        # here (it must outlast a job's deadline and read timeout).
        "MIRRORQ_JOB_DEADLINE_S": "8",
        "MIRRORQ_VISIBILITY_TIMEOUT_S": "15",
    }


def sentinel_producer(redis_set: SentinelSet, replicas: int) -> Producer:
    return producer_for(
        redis_set.url(0), sentinel_master=redis_set.MASTER, redis_min_replicas=replicas
    )


@dataclass
class Submitter:
    """A producer submitting single jobs (one ENI each, an idempotency key each) while Redis
    fails over: each submission is retried with its key until it is accepted."""

    producer: Producer
    lab: Lab
    enis: range  # one job each, SessionNumber 1 (or `auto`: the ENI's first free number, 1)
    session_number: int | str = 1
    accepted: dict[str, tuple[float, float]] = field(default_factory=dict)  # id: (began, done)
    refused: list[str] = field(default_factory=list)  # each error's code or class
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        for eni in self.enis:
            while True:
                began = time.monotonic()
                try:
                    request = job(self.lab, eni, SessionNumber=self.session_number)
                    job_id = self.producer.submit(request, idempotency_key=f"k{eni}")
                except (NotReplicatedError, redis.RedisError, OSError) as error:
                    self.refused.append(getattr(error, "code", type(error).__name__))
                    time.sleep(0.2)
                    continue
                except Exception as error:  # kombu's OperationalError
                    self.refused.append(type(error).__name__)
                    time.sleep(0.2)
                    continue
                self.accepted[job_id] = (began, time.monotonic())
                break
            if self.stop.wait(0.15):
                return

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread


def _done(producer: Producer, batch_id: str) -> int:
    try:
        return int((producer.batch_status(batch_id) or {"done": 0})["done"])
    except redis.RedisError:
        return 0


def _post_until_accepted(api_url: str, request: dict[str, Any]) -> str:
    """POST /v1/jobs, retried with its Idempotency-Key while the API answers 503."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "over-http"}
    deadline = time.monotonic() + 120
    while True:
        answer = httpx.post(f"{api_url}/v1/jobs", json=request, headers=headers, timeout=30)
        if answer.status_code == 202:
            return str(answer.json()["job_id"])
        assert answer.status_code == 503, answer.text
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.5)


def _lost(producer: Producer, submitter: Submitter) -> set[str]:
    return {j for j in submitter.accepted if producer.result(j) is None}


def _between(submitter: Submitter, start: float, end: float) -> set[str]:
    """The jobs whose accepting submission began and ended between `start` and `end`."""
    return {j for j, (began, done) in submitter.accepted.items() if start < began < done < end}


@pytest.mark.timeout(480)  # two failovers on a shared 2-core machine; about 2-4 minutes
@pytest.mark.parametrize(("replicas", "batch", "rate"), list(RUNS.values()), ids=list(RUNS))
def test_failovers_mid_batch_lose_no_accepted_job_with_a_replica_required(
    emulator: EmulatorProcess,
    env: dict[str, str],
    sentinel_set: SentinelSet,
    start_worker: Callable[..., WorkerProcess],
    replicas: int,
    batch: int,
    rate: int,
) -> None:
    """A 2,000-job batch through 2 workers (600 without a replica required), creates at a rate
    that makes it run a minute or more. Early in it, a graceful failover (`SENTINEL
    FAILOVER`) while a producer submits single jobs: none accepted is lost (without a replica
    required, test_a_graceful_failover_loses_nothing_by_default shows it too). Later, the
    replica falls behind (stopped and cut off for 2 s) while a producer submits, and the
    primary is killed with -9. Every process follows the sentinels, unrestarted; the batch
    ends with one session per job, none failed. With a replica required, producers are
    refused (NotReplicated) while no replica can have their job, retry with their keys, and
    every id they were given ends with its session; without, the jobs accepted where no
    replica would have them are gone, record and message (ids that lead nowhere), but for
    those a worker was already running, and nothing else is."""
    first_single = batch_enis(batch)
    lab = seed_lab(emulator.url, first_single + 2 * SINGLES + 1)  # and one over HTTP
    emulator.set_faults(latency_ms=20)
    renv = {**sentinel_env(env, sentinel_set, replicas), "MIRRORQ_EC2_RATE": str(rate)}
    renv["MIRRORQ_EC2_BURST"] = str(rate)
    workers = [start_worker(**renv), start_worker(**renv)]
    port = free_port()
    api = ApiProcess("api-sentinel", {**renv, "MIRRORQ_API_TOKENS": TOKEN}, "--port", str(port))
    api.wait_ready()
    api_url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{api_url}/readyz").status_code == 200
    producer = sentinel_producer(sentinel_set, replicas)
    batch_id = producer.submit_batch([parse_request(batch_job(lab, i)) for i in range(batch)])
    batch_ids = [j for chunk in producer.store.batches.job_ids(batch_id) for j in chunk]
    watch = subprocess.Popen(  # the CLI follows too
        [*MIRRORQ, "batch", "status", batch_id, "--watch", "--json"],
        env=renv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: _done(producer, batch_id) >= batch // 10, what="the batch to be under way")

    # 1. A graceful failover.
    graceful = Submitter(
        sentinel_producer(sentinel_set, replicas), lab, range(first_single, first_single + SINGLES)
    )
    thread = graceful.start()
    time.sleep(0.5)
    sentinel_set.failover()  # returns once the old primary is the new one's replica
    graceful.stop.set()  # once its job in hand is accepted
    thread.join(timeout=180)
    assert not thread.is_alive(), "the submitter never got its jobs accepted"
    at_graceful = _done(producer, batch_id)
    assert at_graceful < batch - 100, f"the batch ended too soon: {at_graceful} done"

    # 2. The replica falls behind, and the primary is killed with -9.
    singles_at = range(first_single + SINGLES, first_single + 2 * SINGLES)
    crash = Submitter(sentinel_producer(sentinel_set, replicas), lab, singles_at)
    thread = crash.start()
    time.sleep(0.5)
    old, replica = sentinel_set.primary, sentinel_set.replica
    assert replica.proc is not None
    # Stopped, and cut off from the primary, which keeps nothing for it (a stopped process
    # would still find what its socket had received).
    os.kill(replica.proc.pid, signal.SIGSTOP)
    redis.Redis(port=old.port).client_kill_filter(_type="replica")
    lag_began = time.monotonic()
    time.sleep(2.0)
    old.crash()  # kill -9: what it did not send its replica is gone
    killed, killed_wall = time.monotonic(), time.time()
    os.kill(replica.proc.pid, signal.SIGCONT)
    wait_until(
        lambda: sentinel_set.master_port() == replica.port,
        timeout=60,
        what="the sentinels to promote the replica",
    )
    # Its supervisor starts the dead Redis again, as the new primary's replica.
    sentinel_set.primary = replica
    sentinel_set.replica = RedisServer(
        old.directory, old.port, extra=("--replicaof", "127.0.0.1", str(replica.port))
    ).start()
    thread.join(timeout=180)
    assert not thread.is_alive(), "the submitter never got its jobs accepted"

    # The API followed too, unrestarted: ready, and accepting (a 503 is retried with the key).
    wait_until(lambda: httpx.get(f"{api_url}/readyz").status_code == 200, what="/readyz")
    over_http = _post_until_accepted(api_url, job(lab, first_single + 2 * SINGLES))
    results = wait_all(producer, [*batch_ids, over_http], timeout=300)
    api.stop()
    out, err = watch.communicate(timeout=120)
    assert watch.returncode == 0, err[-3000:]
    assert json.loads(out)["counts"] == {"created": batch}
    assert {r["status"] for r in results} == {"created"}, [
        r["error"] for r in results if r["status"] != "created"
    ]
    assert all(w.proc.poll() is None for w in workers), "a worker died"

    lost_graceful, lost_crash = _lost(producer, graceful), _lost(producer, crash)
    in_lag = _between(crash, lag_began, killed)
    assert not lost_graceful, f"{len(lost_graceful)} accepted jobs lost"
    if replicas:
        # Refused while no replica could have them, then accepted once one could.
        assert "NotReplicated" in crash.refused
        assert not lost_crash, f"{len(lost_crash)} accepted jobs lost"
    else:
        # What README says is lost: the jobs accepted where no replica would have them (the
        # primary whose replica lagged, before it died), and only those.
        assert in_lag, "no job was accepted while the replica lagged"
        for survivor in in_lag - lost_crash:
            # A worker was running it when the primary died: its outcome, written on the new
            # primary, brought its record back.
            record = producer.result(survivor)
            assert record is not None
            assert record["started_at"] is not None
            assert datetime.fromisoformat(record["started_at"]).timestamp() < killed_wall
        assert all(
            lag_began < crash.accepted[j][1] and crash.accepted[j][0] < killed for j in lost_crash
        )
    lost = lost_graceful | lost_crash
    singles = {**graceful.accepted, **crash.accepted}
    finished = wait_all(producer, [j for j in singles if j not in lost])
    assert {r["status"] for r in finished} == {"created"}
    found = slots(emulator.url, lab)
    assert max(found.values()) == 1, "a duplicate session"
    # Every accepted job's session, one each (a lost job may have made its own before).
    expected = {(lab["eni_ids"][n // PER_ENI], n % PER_ENI + 1) for n in range(batch)}
    enis = [*graceful.enis[: len(graceful.accepted)], *crash.enis]
    expected |= {
        (lab["eni_ids"][n], 1) for n, j in zip(enis, singles, strict=True) if j not in lost
    }
    expected.add((lab["eni_ids"][first_single + 2 * SINGLES], 1))
    assert expected <= set(found)
    print(
        f"min replicas {replicas}: graceful: {len(graceful.accepted)} single jobs accepted, "
        f"{len(lost_graceful)} lost, refusals {dict(Counter(graceful.refused))}; "
        f"kill -9: {len(crash.accepted)} accepted, {len(in_lag)} while the replica lagged, "
        f"{len(lost_crash)} lost, refusals {dict(Counter(crash.refused))}; "
        f"{len(set(found) - expected)} sessions made by lost jobs before they were lost"
    )

    # A lease's fence counts only once a replica has the lease.
    if replicas:
        _fences_wait_for_the_replica(sentinel_set, producer)


def _fences_wait_for_the_replica(sentinel_set: SentinelSet, producer: Producer) -> None:
    settings = producer.settings

    async def fence() -> bool:
        client = async_pool(sentinel_set.url(0), settings, max_connections=2)
        leases = Leases(client, 5.0, REAL, settings)
        try:
            lease = await leases.acquire("mirrorq:eni-lease:test")
            return await leases.fence(lease, 1.0)
        finally:
            await leases.close()
            await client.delete("mirrorq:eni-lease:test")
            await client.aclose()

    wait_until(
        lambda: sentinel_set.role(sentinel_set.replica.port) == ("slave", "up"),
        what="the replica to be back",
    )
    assert asyncio.run(fence()) is True
    assert sentinel_set.replica.proc is not None
    os.kill(sentinel_set.replica.proc.pid, signal.SIGSTOP)
    redis.Redis(port=sentinel_set.primary.port).client_kill_filter(_type="replica")
    try:
        with pytest.raises(NotReplicatedError):
            asyncio.run(fence())
    finally:
        os.kill(sentinel_set.replica.proc.pid, signal.SIGCONT)


@pytest.mark.timeout(120)
def test_a_workers_connections_leave_the_old_primary_once_the_sentinels_name_the_new(
    sentinel_set: SentinelSet,
) -> None:
    """Found in a graceful failover: a worker's Redis pool (redis-py's Sentinel pool) asks
    the sentinels only when a connection connects, so its connections went on writing to the
    old primary, writable for seconds after the sentinels named the new one (what it took
    then thrown away): an ENI lease taken on one primary was found lost on the other, again
    and again. Followed (tasks/connections.py `primary_followed`, as every worker's pools
    are), every connection leaves the old primary within a second of the sentinels naming
    the new one: an idle one at once, one in use once released; every write then lands on
    the primary that survives."""
    settings = sentinel_producer(sentinel_set, 0).settings
    old = sentinel_set.primary.port
    every_s = 0.2

    async def run() -> None:
        client = async_pool(sentinel_set.url(0), settings, max_connections=4)
        pool: Any = client.connection_pool
        async with primary_followed(client, every_s=every_s):
            held = await pool.get_connection()  # in use all along (a job's, say)
            await asyncio.gather(*(client.ping() for _ in range(3)))  # idle ones, connected
            assert {c.port for c in [*pool._get_free_connections(), held]} == {old}
            ask = sentinel_set.sentinel().execute_command
            await asyncio.to_thread(ask, "SENTINEL", "FAILOVER", sentinel_set.MASTER)
            while await asyncio.to_thread(sentinel_set.master_port) == old:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.7)  # more than every_s
            assert sentinel_set.role(old)[0] == "master", "the old primary was demoted already"
            connected = [c.port for c in pool._get_free_connections() if c.is_connected]
            assert old not in connected, "an idle connection to the old primary kept"
            assert held.should_reconnect(), "a connection in use to the old primary kept"
            await pool.release(held)
            assert not held.is_connected
            for n in range(8):  # jobs' writes, some on a connection of their own
                await asyncio.gather(*(client.set(f"after-{n}-{m}", m) for m in range(3)))
        await client.aclose()
        new = redis.Redis(port=sentinel_set.replica.port)
        assert new.exists(*(f"after-{n}-{m}" for n in range(8) for m in range(3))) == 24

    asyncio.run(run())


# The default (no replica required), a graceful failover only: a batch that outlasts it (the
# sentinels reconfigure the old primary about 10 s after the hand-over) through 2 workers.
GRACEFUL_BATCH, GRACEFUL_RATE = 240, 12
# ... with `auto` jobs among its jobs, one every AUTO_EVERY, each on an ENI of its own: they
# hold their ENI's lease from their read until their create (waiting for a slot meanwhile).
AUTO_EVERY = 4


@pytest.mark.timeout(240)
def test_a_graceful_failover_loses_nothing_by_default(
    emulator: EmulatorProcess,
    env: dict[str, str],
    sentinel_set: SentinelSet,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """MIRRORQ_REDIS_MIN_REPLICAS=0 (the default): a `SENTINEL FAILOVER` in the middle of a
    batch (SessionNumber `auto` jobs among its jobs) while two producers submit single jobs
    (one producer's `auto`), each retried with its idempotency key on an error. The old
    primary stays writable for seconds after the replica is promoted, and what it takes
    meanwhile is thrown away when it becomes the new primary's replica: an acceptance counts
    only once it is known to be on the primary that survives (tasks/replication.py), so
    every id a producer was given ends with one session, every batch job too, none twice,
    none failed. Found so: `auto` jobs whose outcome the old
    primary took re-ran and found their own session (AlreadyMirrored); one whose ENI lease
    was found lost on one primary while the other still held it waited for itself, left
    `retrying` (LeaseLost), its mirror never made."""
    first_single = batch_enis(GRACEFUL_BATCH)
    first_auto = first_single + 2 * SINGLES
    autos = GRACEFUL_BATCH // AUTO_EVERY
    lab = seed_lab(emulator.url, first_auto + autos)
    emulator.set_faults(latency_ms=20)
    renv = {**sentinel_env(env, sentinel_set, 0), "MIRRORQ_EC2_RATE": str(GRACEFUL_RATE)}
    renv["MIRRORQ_EC2_BURST"] = str(GRACEFUL_RATE)
    del renv["MIRRORQ_REDIS_MIN_REPLICAS"]  # the default
    workers = [start_worker(**renv), start_worker(**renv)]
    producer = producer_for(sentinel_set.url(0), sentinel_master=sentinel_set.MASTER)
    requests = [parse_request(batch_job(lab, i)) for i in range(GRACEFUL_BATCH)]
    for n in reversed(range(autos)):  # one `auto` job every AUTO_EVERY
        auto = job(lab, first_auto + n, SessionNumber="auto")
        requests.insert(n * AUTO_EVERY, parse_request(auto))
    batch_id = producer.submit_batch(requests)
    batch_ids = [j for chunk in producer.store.batches.job_ids(batch_id) for j in chunk]
    wait_until(lambda: _done(producer, batch_id) >= 12, what="the batch to be under way")
    submitters = [
        Submitter(
            producer_for(sentinel_set.url(0), sentinel_master=sentinel_set.MASTER),
            lab,
            range(first_single + n * SINGLES, first_single + (n + 1) * SINGLES),
            session_number="auto" if n else 1,
        )
        for n in range(2)
    ]
    threads = [submitter.start() for submitter in submitters]
    time.sleep(0.5)
    sentinel_set.failover()  # returns once the old primary is the new one's replica
    for submitter in submitters:
        submitter.stop.set()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a submitter never got its job accepted"
    assert _done(producer, batch_id) < len(requests), "the batch ended before the failover"

    lost = {j for submitter in submitters for j in _lost(producer, submitter)}
    singles = {j: eni for s in submitters for j, eni in zip(s.accepted, s.enis, strict=False)}
    assert len(singles) >= 20, "too few jobs submitted during the failover"
    assert not lost, f"{len(lost)} of the {len(singles)} accepted single jobs lost"
    results = wait_all(producer, [*batch_ids, *singles], timeout=120)
    assert {r["status"] for r in results} == {"created"}, [
        r["error"] for r in results if r["status"] != "created"
    ]
    assert all(w.proc.poll() is None for w in workers), "a worker died"
    found = slots(emulator.url, lab)
    assert max(found.values()) == 1, "a duplicate session"
    expected = {(lab["eni_ids"][n // PER_ENI], n % PER_ENI + 1) for n in range(GRACEFUL_BATCH)}
    expected |= {(lab["eni_ids"][eni], 1) for eni in singles.values()}
    expected |= {(lab["eni_ids"][first_auto + n], 1) for n in range(autos)}
    assert set(found) == expected
    refusals = Counter(r for s in submitters for r in s.refused)
    print(f"graceful, default: {len(singles)} single jobs accepted, 0 lost; refusals {refusals}")


@pytest.mark.timeout(180)
def test_the_listener_follows_a_graceful_failover_unrestarted(
    env: dict[str, str], sentinel_set: SentinelSet, tmp_path: Path
) -> None:
    """`mirrorq listen` pointed at the sentinels (default settings), EC2's events arriving
    before, during and after a `SENTINEL FAILOVER`: the listener, never restarted, handles
    and deletes every message, and every mirror the policy asks for has its job accepted
    where jobs are kept now (no worker runs them: the listener's acceptances alone are
    looked at; one accepted by the old primary after the hand-over would be thrown away)."""
    emulator = EmulatorProcess("--seed", "11", "--events-queue", "events")
    listener = None
    try:
        url = emulator.url
        events = emulator.ready["events_queue_url"]
        lab = seed_zoned_lab(url)
        policy = tmp_path / "policy.toml"
        policy.write_text(policy_text(lab))
        queue = intake_queue(url)
        lenv = {**sentinel_env(env, sentinel_set, 0), "MIRRORQ_EC2_ENDPOINT_URL": url}
        del lenv["MIRRORQ_REDIS_MIN_REPLICAS"]  # the default
        listener = ListenerProcess(
            "listener", lenv, "--sqs-queue-url", queue, "--policy", str(policy)
        )
        listener.wait_ready()
        enis: dict[str, Any] = {}

        def arrive(first: int, count: int, pause_s: float = 0.0) -> None:
            for i in range(first, first + count):
                enis.update(launch_instance(url, lab, i))
                send(url, queue, drain(url, events))
                time.sleep(pause_s)

        arrive(0, 4)
        during = threading.Thread(target=arrive, args=(4, 12, 0.5), daemon=True)
        during.start()
        sentinel_set.failover()  # returns once the old primary is the new one's replica
        during.join(timeout=60)
        arrive(16, 4)
        wait_until(
            lambda: queue_depth(url, queue) == 0,
            timeout=60,
            interval=0.5,
            what="the listener to delete what it handled",
        )
        assert listener.proc.poll() is None, "the listener stopped"
        accepted = {
            (r["request"]["NetworkInterfaceId"], target)
            for r in records(sentinel_set.primary.url(0))
            for target in [r["request"]["TrafficMirrorTargetId"], *r.get("alternatives", [])]
        }
        wanted = {(eni, target) for eni, target, _ in expected_mirrors(lab, enis)}
        assert wanted <= accepted, f"{len(wanted - accepted)} of {len(wanted)} mirrors' jobs lost"
    finally:
        if listener is not None:
            listener.stop()
        emulator.stop()
