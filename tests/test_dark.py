"""Dark sessions found and repaired end to end (issue 18): a policy over 300 ENIs with two
sensors per rule; a sensor instance terminated leaves its sessions dark, which `coverage`
shows (and `--fail-under 100` fails on) until one `reconcile` moves each to the rule's other
sensor by modify (same sessions, same numbers: nothing deleted or created). The same again
from the instance's state-change event, through a real `mirrorq listen`. Real Redis, real
worker processes, the emulator over HTTP."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from emulator.lab import LAB_IMAGE_ID, lab_client, lab_sqs_client, seed_lab
from mirrorq.api.metrics import FleetCollector
from mirrorq.processes import MIRRORQ, EmulatorProcess, ListenerProcess, WorkerProcess
from tests.forkserver import run_mirrorq
from tests.helpers import producer_for, records, sessions, wait_until

ROLES = ("web", "db", "cache")  # the lab tags its ENIs Role=web/db/cache in turn: 100 each


@pytest.fixture(scope="module")
def events_emulator() -> Iterator[EmulatorProcess]:
    emulator = EmulatorProcess("--seed", "18", "--events-queue", "events")
    yield emulator
    emulator.stop()


def sensors(url: str, lab: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Two sensors per rule: (instance, target), each the largest c5 (100 sources)."""
    ec2 = lab_client(url)
    found: dict[str, list[tuple[str, str]]] = {}
    for n, role in enumerate(ROLES * 2):
        instance = ec2.run_instances(
            ImageId=LAB_IMAGE_ID,
            MinCount=1,
            MaxCount=1,
            SubnetId=lab["subnet_ids"][n % len(lab["subnet_ids"])],
            InstanceType="c5.24xlarge",
        )["Instances"][0]
        eni = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
        target = ec2.create_traffic_mirror_target(NetworkInterfaceId=eni, Description=role)
        found.setdefault(role, []).append(
            (instance["InstanceId"], target["TrafficMirrorTarget"]["TrafficMirrorTargetId"])
        )
    return found


def policy_text(lab: dict[str, Any], by_role: dict[str, list[tuple[str, str]]]) -> str:
    return "".join(
        f"""
[[rules]]
name = "{role}"
tag = ["Role={role}", "mirrorq-lab=1"]
targets = ["{by_role[role][0][1]}", "{by_role[role][1][1]}"]
choose = "least-loaded"
filter = "{lab["filter_id"]}"
"""
        for role in ROLES
    )


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_mirrorq([*MIRRORQ, *args], env=env, check=False, timeout=300)


def coverage(env: dict[str, str], policy: Path) -> tuple[int, dict[str, Any]]:
    done = run(env, "coverage", "--policy", str(policy), "--json", "--fail-under", "100")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def by_id(url: str) -> dict[str, tuple[str, str, str, int]]:
    return {
        s["TrafficMirrorSessionId"]: (
            s["NetworkInterfaceId"],
            s["TrafficMirrorTargetId"],
            s["TrafficMirrorFilterId"],
            s["SessionNumber"],
        )
        for s in sessions(url)
    }


def calls(emulator: EmulatorProcess, action: str) -> dict[str, int]:
    found: dict[str, int] = emulator.stats().get(action, {})
    return found


def test_a_terminated_sensor_s_sessions_go_dark_and_are_moved_in_place(
    events_emulator: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    emulator = events_emulator
    emulator.reset()
    url = emulator.url
    env = {**env, "MIRRORQ_EC2_ENDPOINT_URL": url}
    lab = seed_lab(url, 300)
    by_role = sensors(url, lab)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(lab, by_role))
    start_worker(**env)
    start_worker(**env)

    made = run(env, "reconcile", "--policy", str(policy), "--wait")
    assert made.returncode == 0, made.stderr[-3000:]
    first = by_id(url)
    assert len(first) == 300

    # The web rule's first sensor is terminated (EC2 keeps the sessions, mirroring nothing).
    (web_gone, web_dead), (_, web_live) = by_role["web"]
    lab_client(url).terminate_instances(InstanceIds=[web_gone])
    status, found = coverage(env, policy)
    dark = {s: v for s, v in first.items() if v[1] == web_dead}
    assert len(dark) == 50  # least-loaded: half of the rule's 100 ENIs
    assert status == 1
    assert found["totals"]["dark"] == 50
    assert found["percent"] == round(100 * 250 / 300, 2)
    web = next(r for r in found["rules"] if r["rule"] == "web")
    assert (web["live"], web["dark"], web["missing"]) == (50, 50, {})
    dark_enis = {
        e["session_id"]: (e["target"], e["reason"]) for e in web["enis"] if e["state"] == "dark"
    }
    assert dark_enis == {s: (web_dead, "instance_terminated") for s in dark}

    creates = calls(emulator, "CreateTrafficMirrorSession")
    repaired = run(env, "reconcile", "--policy", str(policy), "--wait")
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    after = by_id(url)
    assert after.keys() == first.keys()  # no session deleted or created
    for session_id, (eni, _target, filter_id, number) in first.items():
        moved = (eni, web_live, filter_id, number) if session_id in dark else first[session_id]
        assert after[session_id] == moved
    assert calls(emulator, "ModifyTrafficMirrorSession") == {"ok": 50}
    assert calls(emulator, "CreateTrafficMirrorSession") == creates
    assert "DeleteTrafficMirrorSession" not in emulator.stats()
    status, found = coverage(env, policy)
    assert (status, found["percent"], found["totals"]["dark"]) == (0, 100.0, 0)
    # The pass kept what it found for /metrics: 50 of web's ENIs dark.
    registry = CollectorRegistry()
    registry.register(FleetCollector(producer_for(redis_url)))
    metrics = generate_latest(registry).decode()
    assert (
        'mirrorq_coverage_enis{account="",region="us-east-1",rule="web",state="dark"} 50.0'
        in metrics
    )

    # The same from the db sensor's state-change events, through the listener.
    queue = emulator.ready["events_queue_url"]
    lab_sqs_client(url).purge_queue(QueueUrl=queue)  # the lab's, and the web sensor's, done
    (db_gone, db_dead), (_, db_live) = by_role["db"]
    listener = ListenerProcess(
        "listener",
        env,
        "--sqs-queue-url",
        queue,
        "--policy",
        str(policy),
    )
    try:
        listener.wait_ready()
        lab_client(url).terminate_instances(InstanceIds=[db_gone])
        on_db_dead = {s for s, v in after.items() if v[1] == db_dead}
        assert len(on_db_dead) == 50
        wait_until(
            lambda: all(by_id(url)[s][1] == db_live for s in on_db_dead),
            timeout=120,
            interval=0.5,
            what="the listener's modifies",
        )
        assert listener.proc.poll() is None, "the listener stopped"
    finally:
        listener.stop()
    final = by_id(url)
    assert final.keys() == first.keys()
    assert {s: v[3] for s, v in final.items()} == {s: v[3] for s, v in first.items()}
    assert calls(emulator, "ModifyTrafficMirrorSession") == {"ok": 100}
    assert calls(emulator, "CreateTrafficMirrorSession") == creates
    status, found = coverage(env, policy)
    assert (status, found["percent"]) == (0, 100.0)
    modifies = [r for r in records(redis_url) if r.get("kind") == "modify"]
    assert len(modifies) == 100
    assert {r["status"] for r in modifies} == {"modified"}
    assert sum(1 for r in modifies if r.get("event_id")) == 50  # the listener's, from the event
