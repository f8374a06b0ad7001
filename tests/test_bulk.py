"""Bulk mirroring: the plan (pure), and `mirrorq mirror` against a 1,000-ENI lab."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from emulator.lab import lab_client, seed_lab
from mirrorq.planning import Outcome, Plan, Target, plan
from mirrorq.processes import MIRRORQ, EmulatorProcess, WorkerProcess
from mirrorq.rules import Rule, Selectors
from tests.forkserver import run_mirrorq
from worker.sessions import lowest_free_session_number

T, F = "tmt-00000000000000001", "tmf-00000000000000001"


def eni(n: int, kind: str = "interface") -> dict[str, Any]:
    return {"NetworkInterfaceId": f"eni-{n:017x}", "InterfaceType": kind}


def session(
    n: int, number: int, target: str = "tmt-00000000000000009", flt: str = F
) -> dict[str, Any]:
    return {
        "NetworkInterfaceId": f"eni-{n:017x}",
        "TrafficMirrorTargetId": target,
        "TrafficMirrorFilterId": flt,
        "SessionNumber": number,
        "TrafficMirrorSessionId": f"tms-{n:08x}{number:09x}",
    }


# The plan (pure) ----------------------------------------------------------------------------


def plan_mirroring(
    enis: list[dict[str, Any]], sessions: list[dict[str, Any]], target_enis: set[str]
) -> Plan:
    """What `mirrorq mirror --eni … --target T --filter F` plans."""
    every = Selectors(eni_ids=tuple(e["NetworkInterfaceId"] for e in enis))
    rule = Rule(name="", selectors=every, targets=(T,), filter_id=F)
    return plan([rule], enis, sessions, {T: Target(T)}, target_enis)


def test_plan_gives_every_eni_an_outcome() -> None:
    enis = [eni(1), eni(2), eni(3), eni(4), eni(5, "efa"), eni(6)]
    sessions = [session(2, 1, target=T), session(3, 1), session(3, 2), session(3, 3), session(6, 1)]
    target_enis = {eni(4)["NetworkInterfaceId"]}  # the ENI of another target, "tmt-x"
    planned = plan_mirroring(enis, sessions, target_enis)
    assert [(i.eni_id[-1], i.outcome) for i in planned.items] == [
        ("1", Outcome.CREATE),
        ("2", Outcome.ALREADY_MIRRORED),
        ("3", Outcome.SESSION_LIMIT),
        ("4", Outcome.IS_MIRROR_TARGET),
        ("5", Outcome.NOT_INTERFACE),
        ("6", Outcome.CREATE),
    ]
    assert planned.counts() == {
        "create": 2,
        "already_mirrored": 1,
        "session_limit": 1,
        "is_mirror_target": 1,
        "not_interface_type": 1,
    }


def test_same_target_through_another_filter_is_not_the_same_mirror() -> None:
    planned = plan_mirroring([eni(1)], [session(1, 1, target=T, flt="tmf-other")], set())
    assert [i.eni_id for i in planned.to_create()] == [eni(1)["NetworkInterfaceId"]]


def test_selectors_become_ec2_filters() -> None:
    selectors = Selectors(
        vpc_ids=("vpc-1",),
        tags=(("Env", "prod"), ("Env", "dev"), ("Role", "web")),
        instance_ids=("i-1", "i-2"),
    )
    assert selectors.filters() == [
        {"Name": "vpc-id", "Values": ["vpc-1"]},
        {"Name": "attachment.instance-id", "Values": ["i-1", "i-2"]},
        {"Name": "tag:Env", "Values": ["prod", "dev"]},
        {"Name": "tag:Role", "Values": ["web"]},
    ]
    assert not Selectors()


@pytest.mark.parametrize(("used", "expected"), [((), 1), ((1, 2), 3), ((2, 3), 1), ((1, 3), 2)])
def test_lowest_free_session_number(used: tuple[int, ...], expected: int) -> None:
    assert lowest_free_session_number(used) == expected


# `mirrorq mirror` end to end -------------------------------------------------------------------


@pytest.fixture
def lab(emulator: EmulatorProcess) -> dict[str, Any]:
    return seed_lab(emulator.url, 1000)


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The tests' settings, with room for the emulator to list 1000 ENIs in one page on a
    loaded CI machine (a 5 s read timeout made planning time out there now and then)."""
    return {**env, "MIRRORQ_READ_TIMEOUT_S": "30", "MIRRORQ_VISIBILITY_TIMEOUT_S": "60"}


def mirror(
    env: dict[str, str], lab: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_mirrorq(
        [
            *MIRRORQ,
            "mirror",
            "--vpc",
            lab["vpc_id"],
            "--target",
            lab["target_ids"]["nlb"],
            "--filter",
            lab["filter_id"],
            *extra,
        ],
        env=env,
        check=False,
        timeout=300,
    )


def batch_status(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    done = run_mirrorq(
        [*MIRRORQ, "batch", "status", batch_id, "--json"],
        env=env,
        check=False,
    )
    status: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (1 if status["counts"].get("failed") else 0)
    return status


def sessions(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    pages = lab_client(emulator.url).get_paginator("describe_traffic_mirror_sessions").paginate()
    return [s for page in pages for s in page["TrafficMirrorSessions"]]


def mirrored_pairs(emulator: EmulatorProcess, target: str, flt: str) -> Counter[str]:
    return Counter(
        s["NetworkInterfaceId"]
        for s in sessions(emulator)
        if (s["TrafficMirrorTargetId"], s["TrafficMirrorFilterId"]) == (target, flt)
    )


def test_mirror_a_vpc_creates_one_session_per_eligible_eni_and_is_idempotent(
    emulator: EmulatorProcess,
    lab: dict[str, Any],
    env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    ec2 = lab_client(emulator.url)
    enis, nlb, flt = lab["eni_ids"], lab["target_ids"]["nlb"], lab["filter_id"]
    # Another target with no sources limit: the lab's ENI target takes 10 sources at most.
    other_target = ec2.create_traffic_mirror_target(
        GatewayLoadBalancerEndpointId="vpce-0123456789abcdef0"
    )["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
    for e in enis[:40]:  # already mirrored to the NLB target
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=e,
            TrafficMirrorTargetId=nlb,
            TrafficMirrorFilterId=flt,
            SessionNumber=7,
        )
    for e in enis[40:60]:  # at EC2's limit, with sessions to another target
        for number in (1, 2, 3):
            ec2.create_traffic_mirror_session(
                NetworkInterfaceId=e,
                TrafficMirrorTargetId=other_target,
                TrafficMirrorFilterId=flt,
                SessionNumber=number,
            )
    for e in enis[60:80]:  # one session already: auto must pick 2
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=e,
            TrafficMirrorTargetId=other_target,
            TrafficMirrorFilterId=flt,
            SessionNumber=1,
        )
    efa = [
        ec2.create_network_interface(SubnetId=lab["subnet_ids"][0], InterfaceType="efa")[
            "NetworkInterface"
        ]["NetworkInterfaceId"]
        for _ in range(5)
    ]
    start_worker()
    start_worker()

    first = mirror(env, lab, "--wait")
    assert first.returncode == 0, first.stderr[-2000:]
    plan = batch_status(env, first.stdout.strip())
    assert plan["plan"]["counts"] == {
        "create": 940,
        "already_mirrored": 40,
        "session_limit": 20,
        "is_mirror_target": 1,
        "not_interface_type": 5,
    }
    assert sorted(plan["plan"]["skipped"]["not_interface_type"]) == sorted(efa)
    assert plan["plan"]["skipped"]["is_mirror_target"] == [lab["sensor_eni_id"]]
    assert plan["counts"] == {"created": 940}

    pairs = mirrored_pairs(emulator, nlb, flt)
    assert set(pairs) == set(enis) - set(enis[40:60])
    assert max(pairs.values()) == 1
    numbers = {
        s["NetworkInterfaceId"]: s["SessionNumber"]
        for s in sessions(emulator)
        if s["TrafficMirrorTargetId"] == nlb
    }
    assert {numbers[e] for e in enis[60:80]} == {2}
    assert {numbers[e] for e in enis[80:]} == {1}

    before = len(sessions(emulator))
    again = mirror(env, lab, "--wait")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "create" not in batch_status(env, again.stdout.strip())["plan"]["counts"]
    assert len(sessions(emulator)) == before


def test_overlapping_runs_never_mirror_an_eni_twice_and_deleted_sessions_come_back(
    emulator: EmulatorProcess,
    env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 150)
    nlb, flt = lab["target_ids"]["nlb"], lab["filter_id"]
    start_worker()
    start_worker()
    runs = [
        subprocess.Popen(
            [
                *MIRRORQ,
                "mirror",
                "--vpc",
                lab["vpc_id"],
                "--target",
                nlb,
                "--filter",
                flt,
                "--wait",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    statuses = [batch_status(env, out.strip()) for out, _ in outputs]
    pairs = mirrored_pairs(emulator, nlb, flt)
    assert set(pairs) == set(lab["eni_ids"])
    assert max(pairs.values()) == 1  # never twice, though both runs planned every ENI
    created = sum(s["counts"].get("created", 0) for s in statuses)
    refused = sum(s["counts"].get("failed", 0) for s in statuses)
    assert created == 150
    assert created + refused == sum(s["total"] for s in statuses)
    for out, _ in outputs:
        lines = run_mirrorq(
            [*MIRRORQ, "batch", "results", out.strip()],
            env=env,
            check=True,
        ).stdout.splitlines()
        codes = {
            json.loads(line)["error"]["code"]
            for line in lines
            if json.loads(line)["status"] == "failed"
        }
        assert codes <= {"AlreadyMirrored"}

    ec2 = lab_client(emulator.url)
    victim = next(s for s in sessions(emulator) if s["NetworkInterfaceId"] == lab["eni_ids"][0])
    ec2.delete_traffic_mirror_session(TrafficMirrorSessionId=victim["TrafficMirrorSessionId"])
    rerun = mirror(env, lab, "--wait")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = run_mirrorq(
        [*MIRRORQ, "batch", "results", rerun.stdout.strip()],
        env=env,
        check=True,
    ).stdout.splitlines()
    (record,) = [json.loads(line) for line in results]
    assert record["status"] == "created"
    assert record["request"]["NetworkInterfaceId"] == lab["eni_ids"][0]
    new = record["response"]["TrafficMirrorSession"]["TrafficMirrorSessionId"]
    assert new != victim["TrafficMirrorSessionId"]
    assert mirrored_pairs(emulator, nlb, flt)[lab["eni_ids"][0]] == 1


def test_dry_run_plans_and_creates_nothing(
    emulator: EmulatorProcess,
    env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 30)
    start_worker()
    done = mirror(env, lab, "--dry-run", "--wait")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "create" in done.stderr  # the plan table
    assert batch_status(env, done.stdout.strip())["counts"] == {"dry_run_ok": 30}
    assert sessions(emulator) == []
    # Every ENI of an instance, not only its primary one.
    two_enis = run_mirrorq(
        [
            *MIRRORQ,
            "mirror",
            "--instance",
            lab["instance_ids"][0],
            "--target",
            lab["target_ids"]["nlb"],
            "--filter",
            lab["filter_id"],
            "--dry-run",
        ],
        env=env,
        check=True,
    )
    planned = batch_status(env, two_enis.stdout.strip())["plan"]["counts"]
    assert planned == {"create": 2}


def test_mirror_needs_a_selector_and_real_target(env: dict[str, str]) -> None:
    no_selector = run_mirrorq(
        [*MIRRORQ, "mirror", "--target", "tmt-1", "--filter", "tmf-1"],
        env=env,
        check=False,
    )
    assert no_selector.returncode == 2
    assert "--vpc" in no_selector.stderr
    assert "--target" in no_selector.stderr  # every problem is named at once
    unknown = run_mirrorq(
        [
            *MIRRORQ,
            "mirror",
            "--vpc",
            "vpc-0123456789abcdef0",
            "--target",
            "tmt-0123456789abcdef0",
            "--filter",
            "tmf-0123456789abcdef0",
        ],
        env=env,
        check=False,
    )
    assert unknown.returncode == 2
    assert "--target" in unknown.stderr
