"""A policy edited under a long-running command: `reconcile --every`, `listen` and `api --policy`
read it again when it changes; a valid edit applies from the next pass or event batch, an
invalid one keeps the last good policy, is logged naming the file, rule and field, and
readiness (the API's /readyz, the others' metrics) says so. Real processes, Redis, emulator.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emulator.lab import lab_client, lab_sqs_client
from emulator.zoned_lab import Enis, ZonedLab, expected_mirrors, launch_instance, seed_zoned_lab
from mirrorq.policy_watch import WatchedPolicy
from mirrorq.processes import (
    ApiProcess,
    EmulatorProcess,
    ListenerProcess,
    ServiceProcess,
    WorkerProcess,
    free_port,
)
from tasks import keys
from tasks.errors import PolicyError
from tasks.producer import Producer
from tests.helpers import sessions, wait_until

GOOD = """\
[[rules]]
name = "a"
eni = ["eni-0000000a"]
target = "tmt-0000000a"
filter = "tmf-1111111a"
"""
BAD_FILTER = GOOD.replace("tmf-1111111a", "tmf-nope")
TOKEN = "reload-token-4c1d"  # noqa: S105 - the test's own


# --- the watcher alone ---------------------------------------------------------------------


def test_an_unchanged_policy_is_not_parsed_again_and_a_changed_one_is(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    policy = WatchedPolicy(path)
    first = policy.current()
    assert [r.name for r in first] == ["a"]
    assert policy.current() is first  # nothing changed: the same rules, not parsed again
    path.write_text(GOOD + GOOD.replace('"a"', '"b"'))
    assert [r.name for r in policy.current()] == ["a", "b"]
    assert policy.error is None


def test_two_edits_within_one_timestamp_of_the_same_size_are_both_seen(tmp_path: Path) -> None:
    """A file system that keeps mtime to the second (or a copy that sets it back) must not hide
    an edit: what decides is the content."""
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    before = path.stat()
    policy = WatchedPolicy(path)
    assert policy.current()[0].targets == ("tmt-0000000a",)
    path.write_text(GOOD.replace("tmt-0000000a", "tmt-0000000b"))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime
    assert path.stat().st_size == before.st_size
    assert policy.current()[0].targets == ("tmt-0000000b",)


def test_an_invalid_edit_keeps_the_last_good_rules_and_names_file_rule_and_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    policy = WatchedPolicy(path)
    good = policy.current()
    path.write_text(BAD_FILTER)
    with caplog.at_level(logging.INFO, logger="mirrorq.policy"):
        assert policy.current() is good
        assert policy.current() is good  # logged once, not at every check
    assert isinstance(policy.error, PolicyError)
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(path) in error.getMessage()
    assert "rules[1] (a).filter" in error.getMessage()
    assert "1 rule" in error.getMessage()  # what stays in use
    caplog.clear()
    path.unlink()  # half-way through a deploy: the file is gone
    with caplog.at_level(logging.INFO, logger="mirrorq.policy"):
        assert policy.current() is good
    assert "(file)" in caplog.text
    path.write_text(GOOD.replace("tmt-0000000a", "tmt-0000000c"))
    with caplog.at_level(logging.INFO, logger="mirrorq.policy"):
        assert policy.current()[0].targets == ("tmt-0000000c",)
    assert policy.error is None
    assert f"policy {path} reloaded: 1 rule" in caplog.text


def test_a_policy_that_is_invalid_at_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BAD_FILTER)
    with pytest.raises(PolicyError, match=r"rules\[1\] \(a\)\.filter"):
        WatchedPolicy(path)


# --- the lab and its policies --------------------------------------------------------------


def db_rule(lab: ZonedLab) -> str:
    return f"""
[[rules]]
name = "db"
tag = ["Role=db"]
target = "{lab["nlb"]}"
filter = "{lab["f_db"]}"
"""


def web_rule(lab: ZonedLab, filter_id: str | None = None) -> str:
    a, b = (lab["sensors"][z] for z in lab["zones"][:2])
    return f"""
[[rules]]
name = "prod-web"
tag = ["Env=prod"]
targets = ["{a}", "{b}"]
choose = "same-az"
filter = "{filter_id or lab["f_web"]}"
"""


def fleet(url: str, lab: ZonedLab, first: int, count: int) -> Enis:
    made: Enis = {}
    for i in range(first, first + count):
        made |= launch_instance(url, lab, i)
    return made


def mirrors_made(url: str) -> set[tuple[str, str, str]]:
    return {
        (s["NetworkInterfaceId"], s["TrafficMirrorTargetId"], s["TrafficMirrorFilterId"])
        for s in sessions(url)
    }


def only(lab: ZonedLab, wanted: set[tuple[str, str, str]], rule: str) -> set[Any]:
    return {m for m in wanted if m[2] == lab["f_db" if rule == "db" else "f_web"]}


def gauge(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


def logged(process: ServiceProcess, *parts: str) -> Callable[[], bool]:
    """True once a line of the process's log holds every part."""

    def found() -> bool:
        return any(
            all(p in line for p in parts) for line in process.log_path.read_text().splitlines()
        )

    return found


class ReconcileProcess(ServiceProcess):
    """A real `mirrorq reconcile --every` (its policy and period are its arguments)."""

    command = ("reconcile",)
    ready_marker = b"pass 1:"


# --- reconcile --every ----------------------------------------------------------------------


def test_reconcile_every_applies_a_valid_edit_and_keeps_the_last_good_policy_on_a_bad_one(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = emulator.url
    lab = seed_zoned_lab(url)
    enis = fleet(url, lab, 0, 8)
    wanted = expected_mirrors(lab, enis)
    assert only(lab, wanted, "db")
    assert only(lab, wanted, "prod-web")
    policy = tmp_path / "policy.toml"
    policy.write_text(db_rule(lab))
    start_worker()
    port = free_port()
    reconcile = ReconcileProcess(
        "reconcile", env, "--policy", str(policy), "--every", "1s", "--metrics-port", str(port)
    )
    try:
        reconcile.wait_ready(timeout=60)
        wait_until(lambda: mirrors_made(url) == only(lab, wanted, "db"), 60, 0.2, "db mirrored")
        assert gauge(port, "mirrorq_policy_valid") == 1
        assert gauge(port, "mirrorq_policy_rules") == 1

        # A valid edit: the next pass mirrors the new rule's ENIs.
        policy.write_text(db_rule(lab) + web_rule(lab))
        wait_until(lambda: mirrors_made(url) == wanted, 60, 0.2, "the new rule's ENIs mirrored")
        wait_until(logged(reconcile, f"policy {policy} reloaded: 2 rules"), 10, 0.1, "reload")

        # An invalid edit: logged naming the file, rule and field; the last good rules go on.
        policy.write_text(db_rule(lab) + web_rule(lab, "tmf-not-a-filter"))
        wait_until(
            logged(reconcile, str(policy), "rules[2] (prod-web).filter", "last good"),
            30,
            0.1,
            "the invalid policy logged",
        )
        assert gauge(port, "mirrorq_policy_valid") == 0
        assert gauge(port, "mirrorq_policy_rules") == 2
        ec2 = lab_client(url)
        web = next(s for s in sessions(url) if s["TrafficMirrorFilterId"] == lab["f_web"])
        ec2.delete_traffic_mirror_session(TrafficMirrorSessionId=web["TrafficMirrorSessionId"])
        wait_until(lambda: mirrors_made(url) == wanted, 60, 0.2, "the last good rules repairing")
        assert reconcile.proc.poll() is None, "reconcile stopped on an invalid policy"

        # Fixed (with the db rule dropped): reloaded, and readiness back.
        policy.write_text(web_rule(lab))
        wait_until(logged(reconcile, f"policy {policy} reloaded: 1 rule"), 30, 0.1, "the fix")
        assert gauge(port, "mirrorq_policy_valid") == 1
        assert gauge(port, "mirrorq_policy_rules") == 1

        # SIGHUP reads the file (no longer the signal's default: the end of the process).
        passes = reconcile.log_path.read_text().count(": pass ")
        os.kill(reconcile.proc.pid, signal.SIGHUP)
        wait_until(
            lambda: reconcile.log_path.read_text().count(": pass ") > passes + 1, 30, 0.1, "passes"
        )
        assert reconcile.proc.poll() is None, "SIGHUP ended reconcile"
    finally:
        reconcile.stop()
    assert reconcile.proc.returncode == 0


# --- listen -----------------------------------------------------------------------------------


def attach_events(enis: Enis) -> list[str]:
    """One AttachNetworkInterface CloudTrail event per ENI."""
    return [
        json.dumps(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "AWS API Call via CloudTrail",
                "source": "aws.ec2",
                "region": "us-east-1",
                "detail": {
                    "eventName": "AttachNetworkInterface",
                    "requestParameters": {"networkInterfaceId": eni},
                },
            }
        )
        for eni in enis
    ]


def test_listen_applies_a_valid_edit_from_the_next_batch_and_keeps_the_last_good_on_a_bad_one(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = emulator.url
    lab = seed_zoned_lab(url)
    phases = [fleet(url, lab, 4 * n, 4) for n in range(4)]
    wanted = [expected_mirrors(lab, enis) for enis in phases]
    sqs = lab_sqs_client(url)
    queue = sqs.create_queue(
        QueueName=f"reload-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "5"}
    )["QueueUrl"]

    def send(enis: Enis) -> None:
        bodies = attach_events(enis)
        for start in range(0, len(bodies), 10):
            sqs.send_message_batch(
                QueueUrl=queue,
                Entries=[
                    {"Id": str(n), "MessageBody": b}
                    for n, b in enumerate(bodies[start : start + 10])
                ],
            )

    def settled() -> bool:
        """Every message deleted and every job it made finished."""
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return not any(int(v) for v in attributes.values()) and not producer.store.client.zcard(
            keys.PENDING
        )

    policy = tmp_path / "policy.toml"
    policy.write_text(db_rule(lab))
    start_worker()
    port = free_port()
    listener = ListenerProcess(
        "listener",
        env,
        "--sqs-queue-url",
        queue,
        "--policy",
        str(policy),
        "--metrics-port",
        str(port),
    )
    try:
        listener.wait_ready()
        send(phases[0])
        wait_until(settled, 60, 0.2, "the first events handled")
        assert mirrors_made(url) == only(lab, wanted[0], "db")

        # A valid edit applies from the next batch.
        policy.write_text(db_rule(lab) + web_rule(lab))
        send(phases[1])
        wait_until(settled, 60, 0.2, "the second events handled")
        assert mirrors_made(url) == only(lab, wanted[0], "db") | wanted[1]
        assert logged(listener, f"policy {policy} reloaded: 2 rules")()

        # An invalid edit, read at once on SIGHUP (no event needed): logged, readiness says so,
        # and the next events go through the last good rules.
        policy.write_text(web_rule(lab, "tmf-not-a-filter") + db_rule(lab))
        os.kill(listener.proc.pid, signal.SIGHUP)
        wait_until(
            logged(listener, str(policy), "rules[1] (prod-web).filter", "last good"),
            30,
            0.1,
            "the invalid policy logged on SIGHUP",
        )
        assert gauge(port, "mirrorq_policy_valid") == 0
        send(phases[2])
        wait_until(settled, 60, 0.2, "the third events handled")
        assert mirrors_made(url) == only(lab, wanted[0], "db") | wanted[1] | wanted[2]
        assert listener.proc.poll() is None, "the listener stopped on an invalid policy"

        # Fixed, with only the web rule: the next batch mirrors only what it asks for.
        policy.write_text(web_rule(lab))
        send(phases[3])
        wait_until(settled, 60, 0.2, "the fourth events handled")
        assert mirrors_made(url) == (
            only(lab, wanted[0], "db") | wanted[1] | wanted[2] | only(lab, wanted[3], "prod-web")
        )
        assert logged(listener, f"policy {policy} reloaded: 1 rule")()
        assert gauge(port, "mirrorq_policy_valid") == 1
    finally:
        listener.stop()


# --- api --policy ---------------------------------------------------------------------------


def test_the_api_reloads_its_policy_and_readyz_says_when_the_file_is_bad(
    emulator: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    url = emulator.url
    lab = seed_zoned_lab(url)
    enis = fleet(url, lab, 0, 8)
    prod_only = next(e for e, (_, tags) in enis.items() if tags == {"Env": "prod"})
    db_only = [e for e, (_, tags) in enis.items() if tags == {"Role": "db"}]
    policy = tmp_path / "policy.toml"
    policy.write_text(db_rule(lab))
    port = free_port()
    api = ApiProcess(
        "api", {**env, "MIRRORQ_API_TOKENS": TOKEN}, "--port", str(port), "--policy", str(policy)
    )
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )

    def event_for(eni: str) -> dict[str, Any]:
        outcome: dict[str, Any] = http.post(
            "/v1/events", content=attach_events({eni: ("", {})})[0]
        ).json()
        return outcome

    try:
        api.wait_ready()
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["policy"] == {"path": str(policy), "rules": 1}
        assert event_for(prod_only)["job_ids"] == []  # no rule for it yet

        policy.write_text(db_rule(lab) + web_rule(lab, "tmf-not-a-filter"))
        unready = http.get("/readyz")
        assert unready.status_code == 503
        error = unready.json()["error"]
        assert error["code"] == "InvalidPolicy"
        assert str(policy) in error["message"]
        assert "last good" in error["message"]
        assert {"field": "rules[2] (prod-web).filter"}.items() <= error["fields"][0].items()
        assert http.get("/healthz").status_code == 200  # alive: a restart would not start
        assert len(event_for(db_only[0])["job_ids"]) == 1  # the last good rules serve

        policy.write_text(db_rule(lab) + web_rule(lab))
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["policy"] == {"path": str(policy), "rules": 2}
        assert len(event_for(prod_only)["job_ids"]) == 1
        assert logged(api, f"policy {policy} reloaded: 2 rules")()
        families = text_string_to_metric_families(http.get("/metrics").text)
        valid = {s.name: s.value for f in families for s in f.samples}["mirrorq_policy_valid"]
        assert valid == 1

        # SIGHUP reads the file at once, with no request to ask (and no longer ends the process).
        policy.write_text(web_rule(lab, "tmf-hup"))
        os.kill(api.proc.pid, signal.SIGHUP)
        wait_until(logged(api, str(policy), "rules[1] (prod-web).filter"), 30, 0.1, "SIGHUP read")
        assert api.proc.poll() is None
        assert http.get("/readyz").status_code == 503
    finally:
        http.close()
        api.stop()
    assert TOKEN not in api.log_path.read_text()
