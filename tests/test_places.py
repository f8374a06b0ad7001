"""Jobs that name their Region and role: each runs in its own account and Region, on
credentials STS issues and botocore refreshes, through one worker's bounded cache of roads.

Real `mirrorq worker` processes, real Redis, the emulator over HTTP (its STS included):
jobs are published as other services publish them, `send_task` with `region`, `role_arn`
and `external_id` beside the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiobotocore.session import AioSession, get_session

from config import Settings
from emulator.lab import LAB_CREDENTIALS, create_nlb
from emulator.org_lab import account_client, control, role_arn, seed_org_lab, sessions_in
from mirrorq.processes import EmulatorProcess, WorkerProcess
from mirrorq.targets import load_balancer_states
from tasks.contract import QUEUE, TASK_NAME, Envelope, parse_envelope
from tasks.errors import InvalidJobError
from tasks.producer import Producer
from tests.helpers import wait_all
from worker.ec2 import Ec2Road
from worker.errors import classify
from worker.ratelimit import Limiters
from worker.roads import AssumedRoleCredentials, Place, Roads, assumed_role, place_of
from worker.timing import REAL

OrgLab = dict[str, Any]
TWO_REGIONS = ("us-east-1", "eu-west-1")


def send(producer: Producer, request: dict[str, Any], **placement: str) -> str:
    """Publish a job as another service would: the task's kwargs, no record beforehand."""
    job_id = str(uuid.uuid4())
    producer.app.send_task(
        TASK_NAME, task_id=job_id, kwargs={"request": request, **placement}, queue=QUEUE
    )
    return job_id


def org_jobs(lab: OrgLab, per_place: int, **request: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(account, Region, request) for the first `per_place` ENIs of every account-Region,
    each to the security account's shared sensor there, through its own filter; the places
    take turns."""
    jobs: list[tuple[int, str, str, dict[str, Any]]] = []
    for account, seeded in lab["accounts"].items():
        for region, place in seeded["regions"].items():
            target = lab["security"]["regions"][region]["target_ids"][0]
            for n, eni in enumerate(place["eni_ids"][:per_place]):
                jobs.append(
                    (
                        n,
                        account,
                        region,
                        {
                            "NetworkInterfaceId": eni,
                            "TrafficMirrorTargetId": target,
                            "TrafficMirrorFilterId": place["filter_id"],
                            "SessionNumber": "auto",
                            **request,
                        },
                    )
                )
    # Every place's n-th job before any place's (n+1)-th: all places busy throughout.
    return [
        (account, region, request)
        for _, account, region, request in sorted(jobs, key=lambda j: j[0])
    ]


def submit_all(
    producer: Producer, jobs: list[tuple[str, str, dict[str, Any]]], **extra: str
) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        send(producer, request, region=region, role_arn=role_arn(account), **extra): (
            account,
            region,
            request,
        )
        for account, region, request in jobs
    }


def assume_role_calls(emulator: EmulatorProcess) -> Counter[str]:
    return Counter(emulator.stats().get("AssumeRole", {}))


def assert_created_where_asked(
    emulator: EmulatorProcess, jobs: dict[str, tuple[str, str, dict[str, Any]]], records: Any
) -> None:
    """Every job created exactly once, in its own account and Region, and nowhere else."""
    assert Counter(r["status"] for r in records) == {"created": len(jobs)}, [
        r["error"] for r in records if r["error"]
    ]
    places = {(account, region) for account, region, _ in jobs.values()}
    for account, region in places:
        mine = {r["NetworkInterfaceId"] for a, g, r in jobs.values() if (a, g) == (account, region)}
        seen = sessions_in(emulator.url, account, region)
        assert seen == dict.fromkeys(mine, 1), (account, region)


def test_jobs_across_two_accounts_and_two_regions_each_run_in_its_own(
    emulator: EmulatorProcess, producer: Producer, start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_org_lab(emulator.url, accounts=2, regions=TWO_REGIONS, enis=6)
    start_worker(MIRRORQ_CONCURRENCY="16")
    jobs = submit_all(producer, org_jobs(lab, 6))
    records = wait_all(producer, list(jobs), timeout=60)
    assert_created_where_asked(emulator, jobs, records)
    # Nothing in the lab's own (default) account: every call went on its place's road.
    assert sessions_in(emulator.url, "123456789012", "us-east-1") == {}
    scopes = control(emulator.url, "stats")["scopes"]
    for account in lab["accounts"]:
        for region in TWO_REGIONS:
            assert scopes[f"{account}/{region}"]["CreateTrafficMirrorSession"]["ok"] == 6


def test_credentials_expiring_every_few_seconds_are_refreshed_and_no_job_fails(
    emulator: EmulatorProcess, producer: Producer, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The issue's batch: 1,000 jobs over 4 account-Regions (250 each) on credentials that
    last 2 s."""
    lab = seed_org_lab(emulator.url, accounts=2, regions=TWO_REGIONS, enis=250)
    control(emulator.url, "sts", {"lifetime_seconds": 2})
    # Slow enough creates that the run outlasts lifetimes: 1,000 x 40 ms / 16 >= 2.5 s.
    emulator.set_faults(latency_ms=40)
    start_worker(MIRRORQ_CONCURRENCY="16")
    jobs = submit_all(producer, org_jobs(lab, 250))
    assert len(jobs) == 1000
    started = time.monotonic()
    records = wait_all(producer, list(jobs), timeout=180)
    took = time.monotonic() - started
    assert_created_where_asked(emulator, jobs, records)
    calls = assume_role_calls(emulator)
    sts = control(emulator.url, "sts")
    print(f"1000 jobs in {took:.1f} s; AssumeRole {dict(calls)}; {sts['expired']} sets expired")
    # Two roles (each serves its account in both Regions), each in use throughout, each set
    # lasting at most 2 s: each role assumed again at least once per lifetime the run lasted
    # (far more than the first refresh, aiobotocore issue #1317), and the run lasts at least
    # 2.5 s (above), so at least 2 sets each; never an expired set used.
    assert calls["ok"] >= 2 * max(2, int(took / 2) - 1), (took, calls)
    assert set(calls) == {"ok"}
    assert "RequestExpired" not in emulator.stats()["CreateTrafficMirrorSession"]


def test_a_role_that_cannot_be_assumed_fails_only_its_own_jobs(
    emulator: EmulatorProcess, producer: Producer, start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_org_lab(emulator.url, accounts=3, regions=("us-east-1",), enis=5)
    denied = next(iter(lab["accounts"]))
    control(emulator.url, "roles", {"role_arn": role_arn(denied), "assumable": False})
    start_worker()
    jobs = submit_all(producer, org_jobs(lab, 5))
    records = dict(zip(jobs, wait_all(producer, list(jobs), timeout=60), strict=True))
    for job_id, (account, _, _) in jobs.items():
        record = records[job_id]
        if account == denied:
            assert record["status"] == "failed"
            assert record["error"]["code"] == "AccessDenied"
            assert record["error"]["retryable"] is False
            assert record["attempts"] == 0  # nothing reached EC2
        else:
            assert record["status"] == "created", record["error"]
    assert sessions_in(emulator.url, denied, "us-east-1") == {}
    assert assume_role_calls(emulator)["AccessDenied"] >= 1


def test_a_role_that_requires_an_external_id_is_assumed_with_it(
    emulator: EmulatorProcess, producer: Producer, start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_org_lab(emulator.url, accounts=1, regions=("us-east-1",), enis=4)
    (account,) = lab["accounts"]
    control(emulator.url, "roles", {"role_arn": role_arn(account), "external_id": "org-7Hq2"})
    start_worker()
    with_id, without = org_jobs(lab, 4)[:2], org_jobs(lab, 4)[2:]
    given = submit_all(producer, with_id, external_id="org-7Hq2")
    refused = submit_all(producer, without)
    assert {r["status"] for r in wait_all(producer, list(given), timeout=60)} == {"created"}
    assert {
        (r["status"], r["error"]["code"]) for r in wait_all(producer, list(refused), timeout=60)
    } == {("failed", "AccessDenied")}
    assert sorted(sessions_in(emulator.url, account, "us-east-1")) == sorted(
        r["NetworkInterfaceId"] for _, _, r in with_id
    )


FIFTY_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
    "ca-central-1",
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_fifty_account_regions_through_one_worker_with_a_client_cache_of_eight(
    emulator: EmulatorProcess, producer: Producer, start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_org_lab(emulator.url, accounts=5, regions=FIFTY_REGIONS, enis=2)
    worker = start_worker(MIRRORQ_CONCURRENCY="8", MIRRORQ_CLIENT_CACHE="8")
    jobs = org_jobs(lab, 2)
    rounds = [jobs[:50], jobs[50:]]  # one ENI of each place, then the other
    assert len({(a, g) for a, g, _ in rounds[0]}) == 50
    rss = []
    for jobs in rounds:
        submitted = submit_all(producer, jobs)
        records = wait_all(producer, list(submitted), timeout=90)
        assert {r["status"] for r in records} == {"created"}, [r["error"] for r in records]
        rss.append(rss_mb(worker.proc.pid))
    print(f"worker RSS after each round of 50 account-Regions: {rss} MB")
    for account, seeded in lab["accounts"].items():
        for region in seeded["regions"]:
            assert sum(sessions_in(emulator.url, account, region).values()) == 2
    log = worker.log_path.read_text()
    opened = [int(n) for n in re.findall(r"EC2 client opened for .*? \((\d+) open\)", log)]
    # Every place was opened again in the second round (the cache held 8 of 50), and never
    # more were open than the cache and the jobs running at once.
    assert len(opened) >= 100 - 8
    assert max(opened) <= 8 + 8
    # The second round's 50 places cost no memory the first did not: roads are closed.
    assert rss[1] - rss[0] < 25, rss


# In-process, on the emulator's STS: the parts of the worker's roads, directly --------------


def test_place_is_read_from_the_record_else_the_envelope() -> None:
    arn = role_arn("111111111111")
    envelope = parse_envelope(
        (), {"request": {}, "region": "eu-west-1", "role_arn": arn, "external_id": "xy"}
    )
    assert place_of(envelope, None, "us-east-1") == Place("eu-west-1", arn, "xy")
    assert place_of(envelope, None, "us-east-1").account_id == "111111111111"
    bare = parse_envelope((), {"request": {}})
    assert place_of(bare, None, "us-east-1") == Place("us-east-1")
    assert place_of(bare, None, "us-east-1").account_id is None
    # A record that carries a placement wins (what its producer accepted); one written before
    # placements (no role_arn key) leaves it to the envelope.
    placed: Any = {"region": "ap-south-1", "role_arn": None, "external_id": None}
    assert place_of(envelope, placed, "us-east-1") == Place("ap-south-1")
    assert place_of(envelope, {"region": "us-east-1"}, "us-east-1") == Place("eu-west-1", arn, "xy")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("role_arn", "arn:aws:iam::111111111111:user/mirrorq"),
        ("role_arn", "arn:aws:iam::1111:role/mirrorq"),
        ("region", "Mars-1"),
        ("external_id", "x"),
        ("external_id", "has space"),
    ],
)
def test_a_bad_placement_in_the_envelope_is_refused_naming_its_field(
    field: str, value: str
) -> None:
    with pytest.raises(InvalidJobError) as refused:
        parse_envelope((), {"request": {}, field: value})
    assert refused.value.errors[0]["field"] == field


def sts_error(code: str, status: int) -> Any:
    from botocore.exceptions import ClientError

    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "AssumeRole")


def test_sts_throttling_is_retried_but_spends_no_ec2_bucket() -> None:
    throttled = classify(sts_error("Throttling", 400))
    assert throttled.retryable
    assert not throttled.throttled  # EC2's limiter is not told of STS's throttling
    assert classify(sts_error("ServiceUnavailable", 503)).retryable
    assert not classify(sts_error("AccessDenied", 403)).retryable
    assert not classify(sts_error("RegionDisabledException", 403)).retryable


def _settings(emulator: EmulatorProcess, **more: Any) -> Settings:
    return Settings(ec2_endpoint_url=emulator.url, ec2_rate=0, ec2_describe_rate=0, **more)


@pytest.fixture
def lab_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LAB_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LAB_CREDENTIALS["aws_secret_access_key"])


@contextlib.asynccontextmanager
async def open_roads(
    session: AioSession, emulator: EmulatorProcess, redis_url: str, settings: Settings
) -> AsyncIterator[Roads]:
    """A worker's roads (`session` signs the default road and assumes the roles), each
    road's limiters the fleet's in Redis (a bucket exists at any rate); closed after."""
    async with session.create_client(
        "ec2", region_name="us-east-1", endpoint_url=emulator.url
    ) as client:
        broker = aioredis.Redis.from_url(redis_url)
        default = Ec2Road(client, Limiters(broker, settings, REAL), settings, REAL)
        roads = Roads(session, default, broker, settings)
        try:
            yield roads
        finally:
            await roads.close()
            await broker.aclose()


async def _until_refreshed(
    road: Ec2Road, credentials: list[AssumedRoleCredentials], times: int, timeout: float = 30
) -> int:
    """Calls on the road until every set of credentials was received `times` times."""
    deadline = time.monotonic() + timeout
    calls = 0
    while min(c.refreshes for c in credentials) < times:
        assert time.monotonic() < deadline, [c.refreshes for c in credentials]
        await road.call("DescribeVpcs")
        calls += 1
    return calls


def test_a_chained_role_refreshes_and_so_does_its_source(
    emulator: EmulatorProcess, lab_credentials: None, redis_url: str
) -> None:
    """The fleet's own credentials are themselves an assumed role (role chaining): the role
    assumed from them refreshes again and again, and so does its source, each time it is
    needed to sign the next AssumeRole."""
    control(emulator.url, "sts", {"lifetime_seconds": 2})
    settings = _settings(emulator)

    async def run() -> tuple[int, int, int]:
        base = get_session()
        hop = await assumed_role(base, settings, role_arn("555555555555"), None)
        chained = get_session()
        chained._credentials = hop  # type: ignore[attr-defined]
        async with open_roads(chained, emulator, redis_url, settings) as roads:
            place = Place("eu-west-1", role_arn("666666666666"))
            async with roads.use(place) as road:
                target = roads.credentials(place)
                assert target is not None
                calls = await _until_refreshed(road, [target, hop], 4)
                assert road.limiters.account == "666666666666"
                return calls, target.refreshes, hop.refreshes

    calls, target, hop = asyncio.run(run())
    print(f"{calls} calls: the chained role received {target} sets, its source {hop}")
    assert Counter(emulator.stats()["AssumeRole"]) == {"ok": target + hop}
    scopes = control(emulator.url, "stats")["scopes"]
    assert scopes["666666666666/eu-west-1"]["DescribeVpcs"] == {"ok": calls}


def test_a_roles_load_balancer_reads_refresh_its_expiring_credentials(
    emulator: EmulatorProcess, lab_credentials: None, redis_url: str
) -> None:
    """The target-health read of an NLB target (elbv2 DescribeLoadBalancers on the road's
    own elbv2 client) through a role whose credentials last 2 s: the set is refreshed again
    and again, each read answers, and none is signed with an expired set (the emulator's
    elbv2 refuses those, `ExpiredToken`, as EC2 refuses them `RequestExpired`)."""
    account, region = "777777777777", "eu-west-1"
    ec2 = account_client(emulator.url, account, region)
    vpc_id = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.40.0.0/20")["Subnet"]["SubnetId"]
    arn = create_nlb(account_client(emulator.url, account, region, "elbv2"), "sensors", [subnet])
    control(emulator.url, "sts", {"lifetime_seconds": 2})
    settings = _settings(emulator)

    async def run() -> tuple[int, int]:
        async with open_roads(get_session(), emulator, redis_url, settings) as roads:
            place = Place(region, role_arn(account))
            async with roads.use(place) as road:
                credentials = roads.credentials(place)
                assert credentials is not None
                deadline = time.monotonic() + 30
                reads = 0
                while credentials.refreshes < 4:  # lived through at least three expiries
                    assert time.monotonic() < deadline, credentials.refreshes
                    assert await load_balancer_states(road, [arn]) == {arn: "active"}
                    reads += 1
                return reads, credentials.refreshes

    reads, refreshes = asyncio.run(run())
    print(f"{reads} reads of the NLB on {refreshes} sets of the role's credentials")
    assert emulator.stats()["DescribeLoadBalancers"] == {"ok": reads}
    assert Counter(emulator.stats()["AssumeRole"]) == {"ok": refreshes}


def test_a_wrong_twelve_digit_account_id_never_splits_the_own_account_s_buckets(
    emulator: EmulatorProcess, lab_credentials: None, redis_url: str
) -> None:
    """Review 2: MIRRORQ_AWS_ACCOUNT_ID 12 digits but not the credentials' account: it was
    taken for that account without asking STS, so a role in the real own account (an
    [[accounts]] entry naming it) got buckets of its own beside the default place's. The
    credentials' account is STS's answer (asked once), and such a role spends the fleet's."""
    settings = _settings(emulator, aws_account_id="999999999999")

    async def run() -> tuple[str | None, str]:
        async with open_roads(get_session(), emulator, redis_url, settings) as roads:
            async with roads.use(Place("us-east-1", role_arn("123456789012"))) as road:
                account = road.limiters.account
            assert await roads.default_account() == await roads.default_account()
            return await roads.default_account(), account

    own, bucket = asyncio.run(run())
    assert own == "123456789012"
    assert bucket == "999999999999"  # the default road's: one set of buckets for the account
    assert Counter(emulator.stats().get("GetCallerIdentity", {})) == {"ok": 1}


def test_the_cache_closes_the_least_recently_used_idle_road_never_one_in_use(
    emulator: EmulatorProcess, lab_credentials: None, redis_url: str
) -> None:
    settings = _settings(emulator, client_cache=2)

    async def run() -> None:
        async with open_roads(get_session(), emulator, redis_url, settings) as roads:
            default = roads.default
            places = [Place("us-east-1", role_arn(f"{n}" * 12)) for n in range(1, 5)]
            async with roads.use(Place("us-east-1")) as road:
                assert road is default
                assert len(roads) == 0
            async with roads.use(places[0]) as held:
                for place in places[1:]:
                    async with roads.use(place) as road:
                        await road.call("DescribeVpcs")
                # Over its size, the cache closed the idle roads, oldest first, not the held one.
                assert len(roads) == 2
                assert roads.closed == 2
                assert roads.credentials(places[0]) is not None
                assert roads.credentials(places[1]) is None
                assert roads.credentials(places[3]) is not None
                await held.call("DescribeVpcs")  # still open
            await roads.close()
            assert len(roads) == 0

    asyncio.run(run())


def test_envelope_fields_are_the_placement() -> None:
    assert {"region", "role_arn", "external_id"} <= set(Envelope.model_fields)
