"""Event-driven intake end to end: the emulator emits EC2's EventBridge events into SQS, a real
`mirrorq listen` turns them into jobs through a policy, real workers create the sessions;
`mirrorq reconcile` repairs what is missing. Real Redis, real processes, real HTTP.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.lab import lab_client, lab_sqs_client
from emulator.zoned_lab import expected_mirrors, launch, policy_text, seed_zoned_lab
from mirrorq.processes import MIRRORQ, EmulatorProcess, ListenerProcess, WorkerProcess
from tests.fault_proxy import Answer, FaultProxy
from tests.forkserver import run_mirrorq
from tests.helpers import records, sessions, wait_until
from tests.intake_queues import drain, intake_queue, queue_depth, send

Lab = dict[str, Any]


@pytest.fixture(scope="module")
def events_emulator() -> Iterator[EmulatorProcess]:
    emulator = EmulatorProcess("--seed", "11", "--events-queue", "events")
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator_with_events(events_emulator: EmulatorProcess) -> EmulatorProcess:
    events_emulator.reset()
    return events_emulator


def write_policy(tmp_path: Path, lab: Lab) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(policy_text(lab))
    return path


def mirrors_made(url: str) -> list[tuple[str, str, str]]:
    return sorted(
        (s["NetworkInterfaceId"], s["TrafficMirrorTargetId"], s["TrafficMirrorFilterId"])
        for s in sessions(url)
    )


def test_events_mirror_every_matching_eni_once_per_rule_and_reconcile_repairs(
    emulator_with_events: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = emulator_with_events.url
    lab = seed_zoned_lab(url)
    policy = write_policy(tmp_path, lab)
    enis = launch(url, lab, 50)
    events = drain(url, emulator_with_events.ready["events_queue_url"])
    # pending and running for each instance (the two sensors too), create and attach per ENI
    assert len(events) == (50 + 2) * 2 + 2 * sum(1 for i in range(50) for _ in range(i % 3))
    own = {
        "NetworkInterfaceId": next(iter(enis)),
        "TrafficMirrorTargetId": lab["nlb"],
        "TrafficMirrorFilterId": lab["f_own"],
        "SessionNumber": "auto",
    }
    own_event = json.dumps(
        {
            "version": "0",
            "id": "own-1",
            "source": "my.service",
            "detail-type": "mirrorq.CreateTrafficMirrorSession",
            "detail": own,
        }
    )
    unknown = json.dumps(
        {"id": "x-1", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}
    )
    queue = intake_queue(url)
    # Every event twice (EventBridge delivers at least once), and two that make nothing.
    send(url, queue, [*events, *events, own_event, own_event, unknown, "this is not an event"])

    lenv = {**env, "MIRRORQ_EC2_ENDPOINT_URL": url}
    start_worker(**lenv)
    start_worker(**lenv)
    listener = ListenerProcess("listener", lenv, "--sqs-queue-url", queue, "--policy", str(policy))
    try:
        listener.wait_ready()
        wanted = expected_mirrors(lab, enis) | {
            (own["NetworkInterfaceId"], lab["nlb"], lab["f_own"])
        }
        assert any(t == lab["sensors"][lab["zones"][0]] for _, t, _ in wanted)
        assert any(t == lab["sensors"][lab["zones"][1]] for _, t, _ in wanted)
        wait_until(
            lambda: set(mirrors_made(url)) >= wanted,
            timeout=120,
            interval=0.5,
            what="every mirror the policy asks for",
        )
        # Only the message that is not an event stays, for the dead-letter queue.
        wait_until(
            lambda: queue_depth(url, queue) == 1,
            timeout=60,
            interval=0.5,
            what="the listener to delete what it handled",
        )
        assert listener.proc.poll() is None, "the listener stopped"
    finally:
        listener.stop()
    assert mirrors_made(url) == sorted(wanted)  # once each: none twice, none unasked
    made = records(redis_url)
    assert {r["rule"] for r in made if r.get("rule")} == {"prod-web", "db"}
    assert all(r.get("event_id") for r in made)
    assert sum(1 for r in made if r.get("event_id") == "own-1") == 1
    log = listener.log_path.read_text()
    assert "is not an EventBridge event" in log

    # A reconcile pass after the listener creates nothing...
    def reconcile() -> dict[str, Any]:
        done = run_mirrorq(
            [*MIRRORQ, "reconcile", "--policy", str(policy), "--wait"],
            env=lenv,
            check=False,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        status = run_mirrorq(
            [*MIRRORQ, "batch", "status", done.stdout.strip(), "--json"],
            env=lenv,
            check=True,
        )
        result: dict[str, Any] = json.loads(status.stdout)
        return result

    quiet = reconcile()
    assert quiet["total"] == 0
    assert "create" not in quiet["plan"]["counts"]
    # ...and after sessions are deleted by hand, the next pass (and only it) makes them again.
    ec2 = lab_client(url)
    gone = [s for s in sessions(url) if s["TrafficMirrorFilterId"] != lab["f_own"]][:3]
    for s in gone:
        ec2.delete_traffic_mirror_session(TrafficMirrorSessionId=s["TrafficMirrorSessionId"])
    repaired = reconcile()
    assert repaired["counts"] == {"created": 3}
    assert mirrors_made(url) == sorted(wanted)
    assert reconcile()["total"] == 0


def test_a_listener_killed_before_it_deletes_its_messages_makes_no_job_twice(
    emulator_with_events: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = emulator_with_events.url
    lab = seed_zoned_lab(url)
    policy = write_policy(tmp_path, lab)
    enis = launch(url, lab, 12)
    events = drain(url, emulator_with_events.ready["events_queue_url"])
    queue = intake_queue(url, visibility_s=2)
    send(url, queue, events)
    lenv = {**env, "MIRRORQ_EC2_ENDPOINT_URL": url}
    start_worker(**lenv)
    wanted = expected_mirrors(lab, enis)

    def hold_deletes(action: str, _: dict[str, str], __: int) -> Answer | None:
        return Answer(200, forward="hold") if action.startswith("DeleteMessage") else None

    with FaultProxy(url, hold_deletes) as proxy:
        doomed = ListenerProcess(
            "doomed",
            {**lenv, "MIRRORQ_SQS_ENDPOINT_URL": proxy.url},
            "--sqs-queue-url",
            queue,
            "--policy",
            str(policy),
        )
        try:
            doomed.wait_ready()
            # It accepted a batch's jobs and is stuck deleting the messages they came from.
            wait_until(lambda: proxy.mangled["DeleteMessageBatch"] >= 1, what="a delete")
            accepted = records(redis_url)
            assert accepted, "no job was accepted before the delete"
        finally:
            doomed.kill()
    rescuer = ListenerProcess("rescuer", lenv, "--sqs-queue-url", queue, "--policy", str(policy))
    try:
        rescuer.wait_ready()
        wait_until(
            lambda: queue_depth(url, queue) == 0,
            timeout=90,
            interval=0.5,
            what="the redelivered events to be handled and deleted",
        )
        wait_until(lambda: set(mirrors_made(url)) >= wanted, timeout=60, what="the sessions")
    finally:
        rescuer.stop()
    made = records(redis_url)
    keys = {(r["event_id"], r["request"]["NetworkInterfaceId"], r["rule"]) for r in made}
    assert len(keys) == len(made)  # no event, ENI and rule made two jobs
    assert {r["job_id"] for r in accepted} <= {r["job_id"] for r in made}
    assert mirrors_made(url) == sorted(wanted)
    summary = [line for line in rescuer.log_path.read_text().splitlines() if "duplicates" in line]
    assert int(summary[-1].split("events ")[1].split(":")[0]) >= 10  # the held batch came back


def test_policy_check_and_plan_from_the_command_line(
    emulator_with_events: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    url = emulator_with_events.url
    lab = seed_zoned_lab(url)
    policy = write_policy(tmp_path, lab)
    launch(url, lab, 8)
    lenv = {**env, "MIRRORQ_EC2_ENDPOINT_URL": url}
    checked = run_mirrorq(
        [*MIRRORQ, "policy", "check", str(policy), "--json"],
        env=lenv,
        check=True,
    )
    assert [r["name"] for r in json.loads(checked.stdout)] == ["prod-web", "db"]
    planned = run_mirrorq(
        [*MIRRORQ, "policy", "plan", str(policy), "--json"],
        env=lenv,
        check=True,
    )
    plan = json.loads(planned.stdout)
    assert set(plan["rules"]) == {"prod-web", "db"}
    assert plan["rules"]["prod-web"]["counts"]["create"] >= 1
    assert plan["rules"]["prod-web"]["counts"]["no_target_in_zone"] >= 1  # the third zone
    assert {j["rule"] for j in plan["jobs"]} == {"prod-web", "db"}
    assert sessions(url) == []  # planning creates nothing
    broken = tmp_path / "broken.toml"
    broken.write_text(policy.read_text().replace('choose = "same-az"', 'choose = "nearest"'))
    refused = run_mirrorq(
        [*MIRRORQ, "policy", "check", str(broken)],
        env=lenv,
        check=False,
    )
    assert refused.returncode == 2
    assert "rules[1] (prod-web).choose" in refused.stderr


def test_an_api_key_cannot_take_an_events_key(emulator: EmulatorProcess, redis_url: str) -> None:
    """Found in review: keys shared one namespace, so `event:<id>` sent by a client pre-empted
    the job that event would make."""
    from tests.helpers import producer_for

    lab = seed_zoned_lab(emulator.url)
    producer = producer_for(redis_url)
    request = {
        "NetworkInterfaceId": "eni-0123456789abcdef0",
        "TrafficMirrorTargetId": lab["nlb"],
        "TrafficMirrorFilterId": lab["f_own"],
        "SessionNumber": "auto",
    }
    by_client = producer.accept(request, idempotency_key="event:own-1")
    by_event = producer.accept(request, event_key="event:own-1")
    assert by_client.new
    assert by_event.new
    assert by_client.job_id != by_event.job_id


def queue_with_dlq(url: str, visibility_s: int = 2, max_receives: int = 3) -> tuple[str, str]:
    """An intake queue whose messages go to a dead-letter queue after `max_receives`."""
    sqs = lab_sqs_client(url)
    name = f"intake-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility_s),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": max_receives}
            ),
        },
    )["QueueUrl"]
    return queue, dlq


def running_events(events: list[str], instance_ids: set[str]) -> list[dict[str, Any]]:
    """The `running` state-change events of these instances, among the emulator's events."""
    found = [json.loads(e) for e in events]
    return [
        e
        for e in found
        if e["detail-type"] == "EC2 Instance State-change Notification"
        and e["detail"]["state"] == "running"
        and e["detail"]["instance-id"] in instance_ids
    ]


def test_events_that_can_never_be_handled_hold_back_no_other_event(
    emulator_with_events: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found in review: an event whose id was too long for an event key made the listener refuse
    its whole receive of 10, at every redelivery, until the good events went to the DLQ. Here
    30 good events (3 with ids too long for a key, one of them sent twice) and 3 that can never
    be handled, mixed so that every receive of 10 holds a bad or a long one."""
    url = emulator_with_events.url
    lab = seed_zoned_lab(url)
    policy = write_policy(tmp_path, lab)
    enis = launch(url, lab, 30)
    attached = lab_client(url).describe_network_interfaces(NetworkInterfaceIds=list(enis))
    instances = {e["Attachment"]["InstanceId"] for e in attached["NetworkInterfaces"]}
    good = running_events(drain(url, emulator_with_events.ready["events_queue_url"]), instances)
    assert len(good) == 30
    for n, event in enumerate(good[:3]):
        event["id"] = f"long-{n}-" + "x" * 300  # over the 256 characters of a key on its own
    bad = [
        # An instance id that is an EC2 filter's wildcard: it names every attached ENI.
        {**good[5], "id": "bad-wildcard", "detail": {"instance-id": "i-*", "state": "running"}},
        # An id no key can hold: JSON's "\\ud800" reads as a lone surrogate.
        {**good[6], "id": "bad-surrogate-\ud800"},
        {  # a service's own job whose detail is not a job
            "version": "0",
            "id": "bad-job",
            "detail-type": "mirrorq.CreateTrafficMirrorSession",
            "detail": {"NetworkInterfaceId": "eni-0123", "SessionNumber": "auto"},
        },
    ]
    bodies = [json.dumps(e) for e in good[3:]]
    poison = [json.dumps(e) for e in [*good[:3], bad[0], good[0], bad[1], bad[2]]]
    for n, body in enumerate(poison):  # one every 5 messages
        bodies.insert(n * 5 + 2, body)
    queue, dlq = queue_with_dlq(url)
    send(url, queue, bodies)

    lenv = {**env, "MIRRORQ_EC2_ENDPOINT_URL": url}
    start_worker(**lenv)
    start_worker(**lenv)
    listener = ListenerProcess("listener", lenv, "--sqs-queue-url", queue, "--policy", str(policy))
    try:
        listener.wait_ready()
        wait_until(
            lambda: queue_depth(url, queue) == 0,
            timeout=90,
            interval=0.5,
            what="every message handled or dead-lettered",
        )
        dead = sorted(json.loads(b)["id"][:24] for b in drain(url, dlq))
        assert dead == sorted(e["id"] for e in bad)
        wanted = expected_mirrors(lab, enis)
        wait_until(
            lambda: set(mirrors_made(url)) >= wanted,
            timeout=60,
            interval=0.5,
            what="every mirror the good events ask for",
        )
        assert listener.proc.poll() is None, "the listener stopped"
    finally:
        listener.stop()
    assert mirrors_made(url) == sorted(wanted)
    made = records(redis_url)
    keys = [(r["event_id"], r["request"]["NetworkInterfaceId"], r["rule"]) for r in made]
    assert len(set(keys)) == len(keys)  # the long event sent twice made its jobs once
    assert all(len(r["event_id"]) <= 256 for r in made)
    wait_until(
        lambda: all(r["status"] == "created" for r in records(redis_url)),
        what="every job created",
    )


def test_a_listener_on_a_queue_that_does_not_exist_exits_2_naming_it(
    emulator_with_events: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """Found in review: it logged `NonExistentQueue ... trying again` every 2 s, forever."""
    url = emulator_with_events.url
    policy = write_policy(tmp_path, seed_zoned_lab(url))
    good = intake_queue(url)
    missing = good.rsplit("/", 1)[0] + "/no-such-queue"
    queues = ["--sqs-queue-url", good, "--sqs-queue-url", missing]
    done = subprocess.run(
        [*MIRRORQ, "listen", *queues, "--policy", str(policy)],
        env={**env, "MIRRORQ_EC2_ENDPOINT_URL": url},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert missing in done.stderr
    assert "NonExistentQueue" in done.stderr
    assert good not in done.stderr  # the queue that exists is not blamed


def test_a_queue_deleted_under_a_running_listener_stops_it_with_an_error(
    emulator_with_events: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    url = emulator_with_events.url
    policy = write_policy(tmp_path, seed_zoned_lab(url))
    queue = intake_queue(url)
    lenv = {**env, "MIRRORQ_EC2_ENDPOINT_URL": url}
    listener = ListenerProcess("listener", lenv, "--sqs-queue-url", queue, "--policy", str(policy))
    try:
        listener.wait_ready()
        lab_sqs_client(url).delete_queue(QueueUrl=queue)
        wait_until(
            lambda: listener.proc.poll() is not None,
            timeout=60,
            interval=0.2,
            what="the listener to stop",
        )
    finally:
        listener.stop()
    assert listener.proc.returncode not in (0, None)
    errors = [line for line in listener.log_path.read_text().splitlines() if " ERROR " in line]
    assert any(queue in line and "NonExistentQueue" in line for line in errors), errors


def test_a_listener_retries_sqs_transient_errors_and_goes_on(
    emulator_with_events: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """5xx from SQS (or a proxy before it) at the start-up check and on receives: retried with
    backoff, each logged, and the listener then serves."""
    url = emulator_with_events.url
    policy = write_policy(tmp_path, seed_zoned_lab(url))
    queue = intake_queue(url)
    unknown = {"id": "x-1", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}
    send(url, queue, [json.dumps(unknown)])
    failing = {"GetQueueAttributes": 2, "ReceiveMessage": 3}

    def unavailable(action: str, _: dict[str, str], seen: int) -> Answer | None:
        return Answer(503, forward="instead") if seen < failing.get(action, 0) else None

    with FaultProxy(url, unavailable) as proxy:
        listener = ListenerProcess(
            "listener",
            {**env, "MIRRORQ_EC2_ENDPOINT_URL": url, "MIRRORQ_SQS_ENDPOINT_URL": proxy.url},
            "--sqs-queue-url",
            queue,
            "--policy",
            str(policy),
            "--pollers",
            "1",
        )
        try:
            listener.wait_ready(timeout=60)
            wait_until(
                lambda: queue_depth(url, queue) == 0,
                timeout=60,
                interval=0.2,
                what="the event handled after the failures",
            )
            assert listener.proc.poll() is None, "the listener stopped"
        finally:
            listener.stop()
        assert proxy.mangled == failing
    log = listener.log_path.read_text()
    assert log.count("trying again") == sum(failing.values())
    assert " ERROR " not in log
