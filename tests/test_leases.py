"""One mirror per ENI, target and filter: the per-ENI lease and the per-job run lease, raced.

Real workers, real Redis, the emulator over HTTP, at scaled-down lease times and rates so
that jobs wait far longer for their EC2 slot than a lease lives; then, in-process on a clock
the test drives, the leases' and the creates' timing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from botocore.exceptions import ClientError

from config import Settings
from emulator.lab import lab_client, seed_lab
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks import keys, records
from tasks.contract import TASK_NAME, parse_request
from tasks.producer import Producer
from tasks.records import JobResult
from tests.fault_proxy import Answer, FaultProxy
from tests.helpers import mirrors, sessions, status_of, wait_all, wait_until
from tests.timing import VirtualTime, age, ec2_on
from worker.execute import Creates, execute_job
from worker.leases import Leases
from worker.repair import repair_lost_jobs

# Creates trickle out at 2/s, so the last of 24 jobs waits ~12 s for its slot, while a lease
# lives 1 s unless renewed (and, where leases last deadline + read timeout, 4 s).
SLOW_RACE = {
    "MIRRORQ_EC2_RATE": "2",
    "MIRRORQ_EC2_BURST": "1",
    "MIRRORQ_LEASE_S": "1",
    "MIRRORQ_JOB_DEADLINE_S": "3",
    "MIRRORQ_READ_TIMEOUT_S": "1",
}


def auto_job(eni_id: str, target_id: str, filter_id: str) -> dict[str, Any]:
    return {
        "NetworkInterfaceId": eni_id,
        "TrafficMirrorTargetId": target_id,
        "TrafficMirrorFilterId": filter_id,
        "SessionNumber": "auto",
    }


def one_eni_lab(emulator: EmulatorProcess) -> tuple[str, str, str, str]:
    """A lab of one ENI: the ENI, a rule's two targets (the NLB, the ENI target), the filter."""
    lab = seed_lab(emulator.url, 1)
    return lab["eni_ids"][0], lab["target_ids"]["nlb"], lab["target_ids"]["eni"], lab["filter_id"]


def test_jobs_racing_for_one_eni_never_both_create_however_long_they_wait(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 8)
    enis, nlb, other, flt = (
        lab["eni_ids"],
        lab["target_ids"]["nlb"],
        lab["target_ids"]["eni"],
        lab["filter_id"],
    )
    ec2 = lab_client(emulator.url)
    # An unrelated session on every ENI: a job that read before it was deleted picks number
    # 2, one that read after picks 1, so two readers no longer collide on the number.
    unrelated = [
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=e,
            TrafficMirrorTargetId=other,
            TrafficMirrorFilterId=flt,
            SessionNumber=1,
        )["TrafficMirrorSession"]["TrafficMirrorSessionId"]
        for e in enis
    ]
    start_worker(**SLOW_RACE)
    start_worker(**SLOW_RACE)
    job_ids = [producer.submit(auto_job(e, nlb, flt)) for _ in range(3) for e in enis]
    wait_until(
        lambda: emulator.stats().get("DescribeTrafficMirrorSessions", {}).get("ok", 0) >= 4,
        what="the first jobs to read their ENI's sessions",
    )
    for session_id in unrelated:
        ec2.delete_traffic_mirror_session(TrafficMirrorSessionId=session_id)

    results = wait_all(producer, job_ids, timeout=120)
    assert mirrors(emulator.url, nlb, flt) == dict.fromkeys(enis, 1)
    outcomes = Counter((r["status"], (r["error"] or {}).get("code")) for r in results)
    assert outcomes == {("created", None): 8, ("failed", "AlreadyMirrored"): 16}


def test_a_copy_of_a_running_job_never_runs_beside_it(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A second message for a job (a redelivery while it still runs, a repair's copy, a
    producer sending twice) waits for the running copy and then sees its outcome."""
    lab = seed_lab(emulator.url, 10)
    emulator.set_faults(latency_ms=1500)  # each create takes 1.5 s: the copies overlap
    start_worker()
    start_worker()
    requests = [auto_job(e, lab["target_ids"]["nlb"], lab["filter_id"]) for e in lab["eni_ids"]]
    job_ids = [producer.submit(r) for r in requests]
    for job_id in job_ids:
        record = producer.result(job_id)
        assert record is not None
        producer.app.send_task(
            TASK_NAME, task_id=job_id, kwargs={"request": record["request"]}, queue="mirrorq"
        )

    results = wait_all(producer, job_ids, timeout=120)
    assert {r["status"] for r in results} == {"created"}
    assert [r["attempts"] for r in results] == [1] * 10
    assert len(sessions(emulator.url)) == 10
    # One create per job reached EC2: no copy ran, not even one answered from the token.
    assert emulator.stats()["CreateTrafficMirrorSession"] == {"ok": 10}


def test_a_lease_held_across_retries_outlives_its_ttl(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A job that keeps retrying holds its ENI far longer than one lease lifetime: the lease
    is renewed while held, so a second job for the ENI waits and then finds the mirror."""
    lab = seed_lab(emulator.url, 4)
    nlb, flt = lab["target_ids"]["nlb"], lab["filter_id"]
    emulator.set_faults(error_rate=1.0)  # every create fails with a 5xx for now
    start_worker(MIRRORQ_LEASE_S="0.5", MIRRORQ_BACKOFF_CAP_S="0.3")
    first = [producer.submit(auto_job(e, nlb, flt)) for e in lab["eni_ids"]]
    wait_until(
        lambda: all(status_of(producer, j) == "retrying" for j in first),
        what="the first jobs to be retrying",
    )
    second = [producer.submit(auto_job(e, nlb, flt)) for e in lab["eni_ids"]]
    time.sleep(2.0)  # four lease lifetimes, and the second jobs are waiting for the ENIs
    emulator.set_faults(error_rate=0.0)
    firsts, seconds = wait_all(producer, first), wait_all(producer, second)
    assert {r["status"] for r in firsts} == {"created"}
    assert {(r["status"], r["error"]["code"]) for r in seconds} == {("failed", "AlreadyMirrored")}
    assert mirrors(emulator.url, nlb, flt) == dict.fromkeys(lab["eni_ids"], 1)


def test_a_repaired_copy_of_a_started_auto_job_is_still_auto_with_its_alternatives(
    emulator: EmulatorProcess, producer: Producer, redis_url: str
) -> None:
    """Found in review: the repair republished a started `auto` job with the number it had
    planned (so the copy ran as an explicit job: no lease, no check) and without its rule's
    other targets. The message it publishes again is the job as accepted."""
    eni, nlb, other, flt = one_eni_lab(emulator)
    job_id = producer.submit(auto_job(eni, nlb, flt), alternatives=[other])
    client = redis.Redis.from_url(redis_url)
    assert client.rpop("mirrorq") is not None  # its message is lost
    # As a worker that started it and planned number 2 would have left its record:
    record = producer.result(job_id)
    assert record is not None
    planned = {**(record["request"] or {}), "SessionNumber": 2}
    producer.store.step("save", records.planned(records.started(record, planned), planned))
    client.delete(f"mirrorq:job-lease:{job_id}")
    for _ in range(2):  # lost only when it looks lost twice
        repair_lost_jobs(producer.redis, producer.store, producer.publish, 0, time.time())
    popped = client.lpop("mirrorq")
    assert isinstance(popped, bytes)
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(popped)["body"]))
    assert kwargs["request"]["SessionNumber"] == "auto"
    assert kwargs["alternatives"] == [other]


def test_a_lost_auto_job_that_had_planned_still_mirrors_its_eni_once_per_rule(
    emulator: EmulatorProcess,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """The same, end to end: a worker plans a rule's job (number 1), keeps retrying, and is
    killed with its message lost; meanwhile the ENI is mirrored to the rule's other target.
    The repaired copy must read under the ENI's lease, see that mirror, and create nothing."""
    eni, nlb, other, flt = one_eni_lab(emulator)
    emulator.set_faults(error_rate=1.0)  # every create fails with a 5xx for now
    first = start_worker(MIRRORQ_LEASE_S="1")
    job_id = producer.submit(auto_job(eni, nlb, flt), alternatives=[other])
    wait_until(lambda: status_of(producer, job_id) == "retrying", what="the job to be retrying")
    first.kill()
    redis.Redis.from_url(redis_url).delete("unacked", "unacked_index")  # its message is lost
    emulator.set_faults(error_rate=0.0)
    lab_client(emulator.url).create_traffic_mirror_session(
        NetworkInterfaceId=eni,
        TrafficMirrorTargetId=other,
        TrafficMirrorFilterId=flt,
        SessionNumber=2,
    )
    start_worker(MIRRORQ_LEASE_S="1", MIRRORQ_REPAIR_INTERVAL_S="0.5", MIRRORQ_LOST_AFTER_S="1")

    (result,) = wait_all(producer, [job_id], timeout=60)
    assert (result["status"], (result["error"] or {}).get("code")) == ("failed", "AlreadyMirrored")
    rule_mirrors = [
        s
        for s in sessions(emulator.url)
        if s["NetworkInterfaceId"] == eni and s["TrafficMirrorTargetId"] in (nlb, other)
    ]
    assert len(rule_mirrors) == 1


def test_an_auto_job_whose_outcome_was_lost_finds_its_own_session_and_ends_created(
    emulator: EmulatorProcess,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found in a graceful Sentinel failover (and as after a Redis restart that lost the last
    second of AOF): an `auto` job's record (its planned number, then `created`) was written on
    the primary that was thrown away, its message came back, and the job ran again from its
    record as the producer wrote it: it found its own session on the ENI and ended `failed`
    AlreadyMirrored. Resending its create with its token and that session's number tells:
    EC2 answers from the token (the job's own: `created`, one session), while another job's
    token is refused the number (AlreadyMirrored, as before)."""
    eni, nlb, other, flt = one_eni_lab(emulator)
    job_id = producer.submit(auto_job(eni, nlb, flt), alternatives=[other])
    client = redis.Redis.from_url(redis_url)
    # What the producer wrote (the record, its indexes, the message), before any worker ran it.
    accepted = {key: client.dump(key) for key in client.keys("*")}
    worker = start_worker()
    (first,) = wait_all(producer, [job_id], timeout=60)
    assert first["status"] == "created", first
    session_id = first["response"]["TrafficMirrorSession"]["TrafficMirrorSessionId"]

    # As after a failover: everything the worker wrote is gone, the message is back.
    for key, value in accepted.items():
        assert value is not None
        client.restore(key, 0, value, replace=True)
    wait_until(
        lambda: (
            client.llen("mirrorq") == 0 and status_of(producer, job_id) in ("created", "failed")
        ),
        timeout=60,
        what="the job run again to its end",
    )
    (again,) = wait_all(producer, [job_id], timeout=60)
    assert (again["status"], again["error"]) == ("created", None), again
    assert again["response"]["TrafficMirrorSession"]["TrafficMirrorSessionId"] == session_id
    assert again["request"]["SessionNumber"] == first["request"]["SessionNumber"]

    # Another job to the same mirror is still refused, and nothing was made twice.
    other_job = producer.submit(auto_job(eni, nlb, flt), alternatives=[other])
    (refused,) = wait_all(producer, [other_job], timeout=60)
    assert (refused["status"], (refused["error"] or {}).get("code")) == (
        "failed",
        "AlreadyMirrored",
    )
    on_eni = [s for s in sessions(emulator.url) if s["NetworkInterfaceId"] == eni]
    assert [s["TrafficMirrorSessionId"] for s in on_eni] == [session_id]
    assert "Traceback" not in worker.log_path.read_text()


def test_an_auto_job_finding_its_mirror_on_a_full_eni_ends_already_mirrored(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """An `auto` job that finds a session to its target through its filter resends with its
    token and that session's number (it may be its own); on an ENI with EC2's 3 sessions,
    another's, EC2 refuses it for the limit before the number: still AlreadyMirrored."""
    eni, nlb, other, flt = one_eni_lab(emulator)
    ec2 = lab_client(emulator.url)
    for number, target in ((1, other), (2, other), (3, nlb)):
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=eni,
            TrafficMirrorTargetId=target,
            TrafficMirrorFilterId=flt,
            SessionNumber=number,
        )
    start_worker()
    (result,) = wait_all(producer, [producer.submit(auto_job(eni, nlb, flt))], timeout=60)
    assert (result["status"], (result["error"] or {}).get("code")) == ("failed", "AlreadyMirrored")
    assert len([s for s in sessions(emulator.url) if s["NetworkInterfaceId"] == eni]) == 3


def test_a_job_that_gave_up_holds_its_eni_until_its_last_create_can_no_longer_land(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found in review: an `auto` job whose creates went unanswered gave up and released its
    ENI while a create was still on its way; the next job for the ENI read before it landed and
    created too (another number, since a session was deleted in between). A job that gave up
    on unanswered creates keeps the ENI until the last one's bound (connect + read timeout +
    1 s) has passed."""
    eni, nlb, other, flt = one_eni_lab(emulator)
    ec2 = lab_client(emulator.url)
    unrelated = ec2.create_traffic_mirror_session(
        NetworkInterfaceId=eni,
        TrafficMirrorTargetId=other,
        TrafficMirrorFilterId=flt,
        SessionNumber=1,
    )["TrafficMirrorSession"]["TrafficMirrorSessionId"]
    hold_s = 3.5  # past the 1 s read timeout, within the 3 + 1 + 1 s bound

    def creates_answered() -> int:
        return sum(emulator.stats()["CreateTrafficMirrorSession"].values())

    answered_before = creates_answered()

    def rule(action: str, params: dict[str, str], _: int) -> Answer | None:
        if action == "CreateTrafficMirrorSession" and params.get("ClientToken") == "held":
            time.sleep(hold_s)  # then forwarded: the create lands after the job gave up
        return None

    with FaultProxy(emulator.url, rule) as proxy:
        start_worker(
            MIRRORQ_EC2_ENDPOINT_URL=proxy.url,
            MIRRORQ_CONNECT_TIMEOUT_S="3",
            MIRRORQ_READ_TIMEOUT_S="1",
            MIRRORQ_JOB_DEADLINE_S="2",
        )
        first = producer.submit({**auto_job(eni, nlb, flt), "ClientToken": "held"})
        wait_until(
            lambda: status_of(producer, first) == "retrying", what="the first create to time out"
        )
        ec2.delete_traffic_mirror_session(TrafficMirrorSessionId=unrelated)  # number 1 is free
        second = producer.submit(auto_job(eni, nlb, flt))  # waits for the ENI
        gave_up, second_result = wait_all(producer, [first, second])
        wait_until(
            lambda: (
                creates_answered() - answered_before == proxy.calls["CreateTrafficMirrorSession"]
            ),
            what="every create held by the proxy to reach EC2",
        )
    assert mirrors(emulator.url, nlb, flt) == {eni: 1}
    assert (gave_up["status"], gave_up["error"]["retryable"]) == ("failed", True)
    assert (second_result["status"], (second_result["error"] or {}).get("code")) == (
        "failed",
        "AlreadyMirrored",
    )


# In-process, on a clock the test moves (tests/timing.py): the leases' and the creates' timing
# without waiting for it. Redis keeps real time, so the test takes the time it moves the
# clock by off a lease's TTL (`age`), as Redis would.
LEASE = "mirrorq:eni-lease:eni-test"


def test_a_held_lease_outlives_its_ttl_renewed_a_third_of_it_at_a_time(redis_url: str) -> None:
    """A held lease is put back to its TTL every third of it on the worker's clock, so it
    lives as long as it is held; one no longer renewed lapses a TTL later."""

    async def run() -> None:
        clock = VirtualTime()
        client = aioredis.Redis.from_url(redis_url)
        leases = Leases(client, 3.0, clock.stepped)
        lease = await leases.try_acquire(LEASE)
        assert lease is not None
        for _ in range(48):  # four lifetimes, a quarter of a second at a time
            await clock.advance(0.25)
            await age(client, LEASE, 0.25)
        assert await client.get(LEASE) == lease.token.encode()
        assert not lease.lost
        assert clock.slept == [1.0] * 13  # twelve renewals, the thirteenth under way
        leases.forget(lease)  # released elsewhere (a store script): no longer renewed
        for _ in range(12):
            await clock.advance(0.25)
            await age(client, LEASE, 0.25)
        assert await client.get(LEASE) is None
        await leases.close()
        await client.aclose()

    asyncio.run(run())


def test_a_lease_another_worker_took_is_found_lost_and_fences_nothing(redis_url: str) -> None:
    """A holder cut off from Redis past its lease's TTL finds at its next renewal that
    another took it: its fence fails, so nothing is created under it, and its release leaves
    the other's lease alone."""

    async def run() -> None:
        clock = VirtualTime()
        client = aioredis.Redis.from_url(redis_url)
        leases = Leases(client, 3.0, clock.stepped)
        lease = await leases.try_acquire(LEASE)
        assert lease is not None
        await client.set(LEASE, "another's", px=3000)  # it lapsed; another worker took it
        await clock.advance(1.0)  # the next renewal
        assert lease.lost
        assert not await leases.fence(lease, 10.0)
        await leases.release(lease)
        assert await client.get(LEASE) == b"another's"
        await leases.close()
        await client.aclose()

    asyncio.run(run())


def test_a_lease_found_lost_is_renewed_no_more_and_its_holder_gives_it_up(
    redis_url: str,
) -> None:
    """Found in a graceful Sentinel failover: a worker's connections reached both primaries
    for a while, so a lease was found lost on one (another token there, or none) while the
    other still held its token. Its holder went on renewing it there, and then waited for the
    ENI to be free to take it again: for itself, the job left `retrying` (LeaseLost) for as
    long as it ran. A lease found lost is no longer renewed, and its holder's release gives
    it up wherever it still holds it (and leaves another's alone)."""

    async def run() -> None:
        clock = VirtualTime()
        client = aioredis.Redis.from_url(redis_url)
        leases = Leases(client, 3.0, clock.stepped)
        lease = await leases.try_acquire(LEASE)
        assert lease is not None
        await client.delete(LEASE)  # not on the primary its renewal reached
        await clock.advance(1.0)  # the next renewal
        assert lease.lost
        await client.set(LEASE, lease.token, px=3000)  # the primary that still has it
        for _ in range(16):  # four seconds: more than its TTL
            await clock.advance(0.25)
            await age(client, LEASE, 0.25)
        assert await client.get(LEASE) is None, "a lost lease was renewed"

        await client.set(LEASE, lease.token, px=3000)
        await leases.release(lease)  # before the holder takes the ENI again
        again = await leases.try_acquire(LEASE)
        assert again is not None, "the holder's lost lease kept the ENI from it"
        await client.set(LEASE, "another's", px=3000)
        await leases.release(lease)
        assert await client.get(LEASE) == b"another's"
        leases.forget(again)
        await leases.close()
        await client.aclose()

    asyncio.run(run())


def test_a_job_waits_for_its_enis_lease_for_as_long_as_its_holder_holds_it(
    redis_url: str,
) -> None:
    """In-process, what `test_a_lease_held_across_retries_outlives_its_ttl` shows with
    workers: a job polling for an ENI's lease waits through four of its lifetimes while the
    holder (retrying, say) renews it, then takes it as soon as it is released."""

    async def run() -> None:
        clock = VirtualTime()
        client = aioredis.Redis.from_url(redis_url)
        holder, waiter = Leases(client, 1.0, clock.stepped), Leases(client, 1.0, clock.stepped)
        held = await holder.try_acquire(LEASE)
        assert held is not None
        waiting = asyncio.create_task(waiter.acquire(LEASE))
        for _ in range(40):  # four lifetimes, a tenth of a second at a time
            await clock.advance(0.1)
            await age(client, LEASE, 0.1)
        assert not waiting.done()
        assert await client.get(LEASE) == held.token.encode()
        await holder.release(held)
        await clock.advance(0.25)  # the waiter's next poll, at the latest
        taken = waiting.result()
        assert await client.get(LEASE) == taken.token.encode() != held.token.encode()
        await holder.close()
        await waiter.close()
        await client.aclose()

    asyncio.run(run())


def lab_settings(emulator: EmulatorProcess, redis_url: str, **more: Any) -> Settings:
    # The lab's rates: the limiter in the path, never waited for.
    return Settings(
        broker_url=redis_url,
        ec2_endpoint_url=emulator.url,
        region="us-east-1",
        ec2_rate=1000,
        ec2_burst=200,
        ec2_describe_rate=1000,
        ec2_describe_burst=200,
        **more,
    )


def test_an_unanswered_create_may_land_until_its_bound_on_the_workers_clock(
    emulator: EmulatorProcess, redis_url: str
) -> None:
    """A create answered 5xx (or timed out, or cut off) may still reach EC2 until its bound
    (connect + read timeout + 1 s) has passed since it was sent; a create answered ends it."""
    eni, nlb, _, flt = one_eni_lab(emulator)
    request = {**auto_job(eni, nlb, flt), "SessionNumber": 1, "ClientToken": "landing"}
    settings = lab_settings(emulator, redis_url, connect_timeout_s=3, read_timeout_s=1)
    clock = VirtualTime()

    async def run() -> None:
        async with ec2_on(settings, clock.timing) as ec2:
            assert ec2.create_bound_s == 5.0
            creates = Creates(ec2)
            assert creates.may_land_for_s() == 0
            emulator.set_faults(error_rate=1.0)
            with pytest.raises(ClientError):
                await creates.send(request)
            assert creates.may_land_for_s() == 5.0
            await clock.sleep(3.0)
            assert creates.may_land_for_s() == 2.0
            emulator.set_faults(error_rate=0.0)
            await creates.send(request)  # one still on its way is answered from its token
            assert creates.may_land_for_s() == 0

    asyncio.run(run())
    assert mirrors(emulator.url, nlb, flt) == {eni: 1}


def test_a_job_that_gave_up_on_unanswered_creates_keeps_its_eni_for_their_bound(
    emulator: EmulatorProcess, redis_url: str
) -> None:
    """In-process, the ENI lease `test_a_job_that_gave_up_holds_its_eni_until_its_last_create_
    can_no_longer_land` relies on: an `auto` job whose creates all went unanswered retries to
    its deadline, then releases its ENI's lease to lapse once the last create's bound has
    passed, on the worker's clock; a job that created releases it at once."""
    lab = seed_lab(emulator.url, 2)
    nlb, flt = lab["target_ids"]["nlb"], lab["filter_id"]
    settings = lab_settings(
        emulator,
        redis_url,
        connect_timeout_s=3,
        read_timeout_s=1,
        job_deadline_s=2,
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
    )
    client = redis.Redis.from_url(redis_url)

    def started(eni: str) -> JobResult:
        request = parse_request(auto_job(eni, nlb, flt)).to_kwargs()
        request["ClientToken"] = eni
        return records.started(records.accepted(eni, request), request)

    async def run(eni: str) -> tuple[JobResult, float]:
        clock = VirtualTime()
        saved: list[JobResult] = []

        async def save(record: JobResult) -> None:
            saved.append(record)

        async with ec2_on(settings, clock.stepped) as ec2:
            outcome = await clock.drive(execute_job(ec2, started(eni), save=save, auto=True))
        return outcome, clock.monotonic()

    gave_up_on, creator = lab["eni_ids"]
    emulator.set_faults(error_rate=1.0)  # every create answered 5xx: each may still land
    gave_up, took = asyncio.run(run(gave_up_on))
    held_ms = client.pttl(keys.eni_lease(gave_up_on))
    assert (gave_up["status"], gave_up["error"]["retryable"]) == ("failed", True)  # type: ignore[index]
    assert gave_up["attempts"] > 1
    assert 1.5 < took < 2  # the deadline, on the worker's clock
    # Its last create was sent as it gave up: the lease lapses the bound (5 s) on.
    assert 4000 < held_ms <= 5000
    emulator.set_faults(error_rate=0.0)
    created, _ = asyncio.run(run(creator))
    assert created["status"] == "created"
    assert client.exists(keys.eni_lease(creator)) == 0
