"""Delete and modify jobs (issue 18), end to end: real workers, real Redis, the emulator over
HTTP. Each kind's success and dry run, another service's `send_task`, answers dropped after
the effect, a worker SIGKILLed mid-batch of deletes, and creates from sources EC2 refuses."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError
from celery import Celery

from emulator.lab import LAB_IMAGE_ID, lab_client, seed_lab
from mirrorq.export import result_row
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks import records
from tasks.contract import DELETE_TASK_NAME, JobKind, ec2_request, parse_request
from tasks.producer import Producer
from tests.helpers import Lab, job, sessions, wait_all, wait_until
from worker.errors import classify
from worker.execute import _already_modified, _outcome, _twin

# A dead worker's messages come back within seconds, and a lost one is published again.
QUICK = {
    "MIRRORQ_JOB_DEADLINE_S": "3",
    "MIRRORQ_CONNECT_TIMEOUT_S": "1",
    "MIRRORQ_READ_TIMEOUT_S": "2",
    "MIRRORQ_VISIBILITY_TIMEOUT_S": "6",
    "MIRRORQ_LEASE_S": "3",
    "MIRRORQ_LOST_AFTER_S": "2",
    "MIRRORQ_REPAIR_INTERVAL_S": "1",
}


@pytest.fixture
def lab(emulator: EmulatorProcess) -> Lab:
    return seed_lab(emulator.url, 40)


def mirrored(emulator: EmulatorProcess, lab: Lab, enis: range) -> list[str]:
    """A session on each of the lab's `enis`, made directly in EC2: their ids."""
    ec2 = lab_client(emulator.url)
    return [
        ec2.create_traffic_mirror_session(**job(lab, n))["TrafficMirrorSession"][
            "TrafficMirrorSessionId"
        ]
        for n in enis
    ]


def by_id(emulator: EmulatorProcess) -> dict[str, dict[str, Any]]:
    return {s["TrafficMirrorSessionId"]: s for s in sessions(emulator.url)}


def calls(emulator: EmulatorProcess, action: str) -> dict[str, int]:
    return dict(emulator.stats().get(action, {}))


def test_deletes_and_modifies_end_to_end_once_though_their_answers_are_dropped(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    kept, moved, gone, dropped_delete, dropped_modify = mirrored(emulator, lab, range(5))
    eni_target = lab["target_ids"]["eni"]

    # A modify through the producer, naming no ENI: the worker reads the session for its lease.
    modify = producer.submit(
        {
            "TrafficMirrorSessionId": moved,
            "TrafficMirrorTargetId": eni_target,
            "PacketLength": 200,
            "Description": "moved",
        },
        kind="modify",
    )
    # A delete as another service sends it: plain Celery, JSON, no mirrorq imported.
    delete = str(uuid.uuid4())
    other.send_task(
        DELETE_TASK_NAME,
        task_id=delete,
        kwargs={"request": {"TrafficMirrorSessionId": gone}, "network_interface_id": None},
    )
    dry = producer.submit({"TrafficMirrorSessionId": kept, "DryRun": True}, kind=JobKind.DELETE)
    # A second session on kept's ENI, pointed where kept already mirrors it: refused.
    second = lab_client(emulator.url).create_traffic_mirror_session(
        **job(lab, 0, TrafficMirrorTargetId=eni_target, SessionNumber=2)
    )["TrafficMirrorSession"]["TrafficMirrorSessionId"]
    twin = producer.submit(
        {"TrafficMirrorSessionId": second, "TrafficMirrorTargetId": lab["target_ids"]["nlb"]},
        kind="modify",
        network_interface_id=lab["eni_ids"][0],
    )
    missing = producer.submit(
        {"TrafficMirrorSessionId": "tms-0123456789abcdef0"},
        kind="delete",
        network_interface_id=lab["eni_ids"][0],  # so the delete itself is sent
    )
    done = dict(
        zip(
            ("modify", "delete", "dry", "missing", "twin"),
            wait_all(producer, [modify, delete, dry, missing, twin]),
            strict=True,
        )
    )

    assert done["modify"]["status"] == "modified", done["modify"]["error"]
    assert done["modify"]["kind"] == "modify"
    assert done["modify"]["network_interface_id"] == lab["eni_ids"][1]  # read from EC2
    assert done["modify"]["client_token"] is None  # EC2 takes none for a modify
    assert done["delete"]["status"] == "deleted", done["delete"]["error"]
    assert done["dry"]["status"] == "dry_run_ok"
    # A first attempt's NotFound: nothing of ours was sent, so the sender is told.
    assert (done["missing"]["status"], done["missing"]["error"]["code"]) == (
        "failed",
        "InvalidTrafficMirrorSessionId.NotFound",
    )
    assert done["missing"]["attempts"] == 1
    assert (done["twin"]["status"], done["twin"]["error"]["code"]) == ("failed", "AlreadyMirrored")
    assert done["twin"]["attempts"] == 0  # nothing sent to EC2
    now = by_id(emulator)
    assert gone not in now
    assert kept in now
    assert now[second]["TrafficMirrorTargetId"] == eni_target
    assert (now[moved]["TrafficMirrorTargetId"], now[moved]["PacketLength"]) == (eni_target, 200)
    assert now[moved]["SessionNumber"] == 1  # untouched: a modify sends only what it changes

    # Every answer dropped after its effect until one of each was dropped, then answered.
    vni_before = by_id(emulator)[dropped_modify]["VirtualNetworkId"]
    emulator.set_faults(drop_rate=1.0)
    before = (
        calls(emulator, "DeleteTrafficMirrorSession"),
        calls(emulator, "ModifyTrafficMirrorSession"),
    )
    batch = producer.submit_batch(
        [
            parse_request({"TrafficMirrorSessionId": dropped_delete}, JobKind.DELETE),
            parse_request(
                {"TrafficMirrorSessionId": dropped_modify, "RemoveFields": ["virtual-network-id"]},
                JobKind.MODIFY,
            ),
        ],
        network_interface_ids=[lab["eni_ids"][3], lab["eni_ids"][4]],
    )

    def dropped(action: str, n: int) -> int:
        return calls(emulator, action).get("dropped", 0) - before[n].get("dropped", 0)

    wait_until(
        lambda: (
            dropped("DeleteTrafficMirrorSession", 0) and dropped("ModifyTrafficMirrorSession", 1)
        ),
        timeout=30,
        what="a delete and a modify dropped",
    )
    emulator.set_faults(drop_rate=0.0)
    status = producer.wait_batch(batch, timeout=60)
    assert status is not None
    assert status["counts"] == {"deleted": 1, "modified": 1}, status
    deleted, modified = list(producer.batch_results(batch))
    assert deleted["attempts"] >= 2
    assert modified["attempts"] >= 2
    # The retry met NotFound: the dropped attempt had deleted it. Success, said so.
    assert (deleted["response"] or {})["AlreadyDeleted"][
        "Code"
    ] == "InvalidTrafficMirrorSessionId.NotFound"
    now = by_id(emulator)
    assert dropped_delete not in now
    assert now[dropped_modify]["VirtualNetworkId"] != vni_before  # removed: a new one chosen
    # Nothing else was touched: one delete landed, the other sessions are all there.
    assert set(now) == {kept, moved, dropped_modify, second}


def test_a_worker_killed_mid_batch_of_deletes_loses_nothing(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """SIGKILLed with deletes on their way, and the messages it held lost with it: the
    lost-message repair publishes them again as deletes, and each ends `deleted` (a delete of
    the dead worker's that landed is one of ours)."""
    targets = mirrored(emulator, lab, range(30))
    survivor = mirrored(emulator, lab, range(30, 31))[0]  # not in the batch: must stay
    emulator.set_faults(latency_ms=600)  # slow enough to be caught mid-batch under load
    doomed = start_worker("doomed", **QUICK)
    batch = producer.submit_batch(
        [parse_request({"TrafficMirrorSessionId": t}, JobKind.DELETE) for t in targets],
        network_interface_ids=lab["eni_ids"][:30],
    )
    wait_until(
        lambda: (producer.batch_status(batch) or {"done": 0})["done"] >= 2,
        timeout=60,
        what="some deletes done",
    )
    doomed.kill()  # SIGKILL: its held messages unacked, some deletes on their way
    assert (producer.batch_status(batch) or {"done": 30})["done"] < 30, "killed too late"
    redis.Redis.from_url(redis_url).delete("unacked", "unacked_index")  # and they are lost
    emulator.set_faults(latency_ms=0)
    start_worker("rescuer", **QUICK)
    status = producer.wait_batch(batch, timeout=90)
    assert status is not None
    assert status["counts"] == {"deleted": 30}, status
    assert set(by_id(emulator)) == {survivor}
    rows = [result_row(r) for r in producer.batch_results(batch)]  # as exports show them
    assert {(r["kind"], r["status"]) for r in rows} == {("delete", "deleted")}
    assert sorted(r["TrafficMirrorSessionId"] for r in rows) == sorted(targets)


def test_a_create_from_a_source_ec2_refuses_fails_at_once_with_ec2s_code(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    ec2 = lab_client(emulator.url)
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    enis = [
        ec2.run_instances(
            ImageId=LAB_IMAGE_ID, MinCount=1, MaxCount=1, InstanceType=kind, SubnetId=subnet
        )["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
        for kind in ("t2.micro", "c5.metal", "m4.large")
    ]
    start_worker()
    before = calls(emulator, "CreateTrafficMirrorSession")
    jobs = [producer.submit({**job(lab, 0), "NetworkInterfaceId": eni}) for eni in enis]
    t2, metal, m4 = wait_all(producer, jobs)
    for refused in (t2, metal):
        assert (refused["status"], refused["error"]["code"]) == ("failed", "UnsupportedOperation")
        assert refused["attempts"] == 1
        assert not refused["error"]["retryable"]
    assert m4["status"] == "created", m4["error"]  # a non-Nitro family that can be a source
    after = calls(emulator, "CreateTrafficMirrorSession")
    assert after.get("UnsupportedOperation", 0) - before.get("UnsupportedOperation", 0) == 2


def test_a_change_given_up_ends_as_its_session_shows_and_a_wrong_eni_is_refused(
    emulator: EmulatorProcess,
    lab: Lab,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A delete's and a modify's first answers dropped after their effect, every later attempt
    failing retryably until the job's deadline: one read of the session when the job gives up
    finds the effect, and the jobs succeed. A modify naming
    another ENI than its session's is refused before anything is sent, naming the field."""
    gone, moved, other = mirrored(emulator, lab, range(3))
    eni_target = lab["target_ids"]["eni"]
    start_worker(**{**QUICK, "MIRRORQ_JOB_DEADLINE_S": "8", "MIRRORQ_VISIBILITY_TIMEOUT_S": "12"})
    before = (
        calls(emulator, "DeleteTrafficMirrorSession"),
        calls(emulator, "ModifyTrafficMirrorSession"),
    )
    emulator.set_faults(drop_rate=1.0)  # the first attempts take effect, unanswered
    delete = producer.submit(
        {"TrafficMirrorSessionId": gone}, kind="delete", network_interface_id=lab["eni_ids"][0]
    )
    modify = producer.submit(
        {"TrafficMirrorSessionId": moved, "TrafficMirrorTargetId": eni_target, "PacketLength": 99},
        kind="modify",
        network_interface_id=lab["eni_ids"][1],
    )
    wrong = producer.submit(  # `other` is on ENI 2; the ENI named is 1's, well-formed
        {"TrafficMirrorSessionId": other, "TrafficMirrorTargetId": eni_target},
        kind="modify",
        network_interface_id=lab["eni_ids"][1],
    )

    def dropped(action: str, n: int) -> int:
        return calls(emulator, action).get("dropped", 0) - before[n].get("dropped", 0)

    wait_until(
        lambda: (
            dropped("DeleteTrafficMirrorSession", 0) and dropped("ModifyTrafficMirrorSession", 1)
        ),
        timeout=30,
        what="a delete and a modify dropped",
    )
    # Then every later attempt fails retryably (the delete's would otherwise meet NotFound)
    # until the job's deadline: each job gives up on a retryable failure.
    emulator.set_faults(drop_rate=0.0, error_rate=1.0)
    deleted, modified, refused = wait_all(producer, [delete, modify, wrong])
    emulator.set_faults(error_rate=0.0)
    assert deleted["status"] == "deleted", deleted["error"]
    assert deleted["attempts"] >= 1
    assert (deleted["response"] or {})["AlreadyDeleted"][
        "Code"
    ] == "InvalidTrafficMirrorSessionId.NotFound"
    assert modified["status"] == "modified", modified["error"]
    assert modified["attempts"] >= 1
    assert (modified["response"] or {})["TrafficMirrorSession"]["PacketLength"] == 99
    assert (refused["status"], refused["error"]["code"]) == ("failed", "InvalidJob")
    assert f"session {other} is not on network_interface_id" in refused["error"]["message"]
    assert not refused["error"]["retryable"]
    assert refused["attempts"] == 0  # nothing sent under the wrong ENI's lease
    now = by_id(emulator)
    assert gone not in now
    assert (now[moved]["TrafficMirrorTargetId"], now[moved]["PacketLength"]) == (eni_target, 99)
    assert now[other]["TrafficMirrorTargetId"] != eni_target


def test_a_modify_is_taken_as_done_only_when_the_session_shows_all_it_asked() -> None:
    session = {
        "TrafficMirrorSessionId": "tms-1",
        "TrafficMirrorTargetId": "B",
        "TrafficMirrorFilterId": "F",
        "SessionNumber": 3,
        "VirtualNetworkId": 7,
        "Description": "d",
    }
    ask = {"TrafficMirrorSessionId": "tms-1", "TrafficMirrorTargetId": "B", "SessionNumber": 3}
    assert _already_modified(session, ask)
    assert not _already_modified(session, {**ask, "TrafficMirrorTargetId": "A"})
    assert not _already_modified(session, {**ask, "PacketLength": 100})
    assert _already_modified(session, {**ask, "RemoveFields": ["packet-length"]})
    assert not _already_modified(session, {**ask, "RemoveFields": ["description"]})
    # EC2 picks a new VNI for a removed one: a read cannot tell it was ours.
    assert not _already_modified(session, {**ask, "RemoveFields": ["virtual-network-id"]})


# The pure parts of a delete's or a modify's end ------------------------------------------


def test_a_deletes_notfound_is_its_success_only_after_an_attempt_of_ours() -> None:
    session = "tms-0123456789abcdef0"

    def running(kind: JobKind) -> Any:
        accepted = records.accepted("j", {"TrafficMirrorSessionId": session}, kind=kind)
        return records.started(accepted, {"TrafficMirrorSessionId": session})

    gone = classify(not_found())
    deleted = _outcome(running(JobKind.DELETE), gone, ours_maybe=True)
    assert deleted["status"] == "deleted"
    assert deleted["response"] == {
        "TrafficMirrorSessionId": session,
        "AlreadyDeleted": {"Code": gone.code, "Message": gone.message},
    }
    assert _outcome(running(JobKind.DELETE), gone, ours_maybe=False)["status"] == "failed"
    # A delete the planner made (`missing_ok`): the session gone is the goal met, said so.
    planned = records.accepted(
        "j", {"TrafficMirrorSessionId": session, "missing_ok": True}, kind=JobKind.DELETE
    )
    planned = records.started(planned, planned["request"] or {})
    met = _outcome(planned, gone, ours_maybe=False)
    assert met["status"] == "deleted"
    assert met["response"] == {
        "TrafficMirrorSessionId": session,
        "AlreadyDeleted": {"Code": gone.code, "Message": gone.message},
    }
    assert _outcome(running(JobKind.MODIFY), gone, ours_maybe=True)["status"] == "failed"
    # Another session of the ENI with the target and filter the modify would give: a twin.
    here = {
        "TrafficMirrorSessionId": session,
        "TrafficMirrorTargetId": "A",
        "TrafficMirrorFilterId": "F",
    }
    there = {
        "TrafficMirrorSessionId": "tms-1",
        "TrafficMirrorTargetId": "B",
        "TrafficMirrorFilterId": "F",
    }
    move = {"TrafficMirrorSessionId": session, "TrafficMirrorTargetId": "B"}
    assert _twin([here, there], session, move) == ("B", "F")
    assert _twin([here], session, move) is None
    assert _twin([there], session, move) is None  # not there: _no_twin refuses the job
    assert _twin([here, there], session, {**move, "TrafficMirrorFilterId": "G"}) is None


def not_found() -> Exception:
    answer: Any = {
        "Error": {"Code": "InvalidTrafficMirrorSessionId.NotFound", "Message": "gone"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    return ClientError(answer, "DeleteTrafficMirrorSession")


def test_a_delete_the_planner_made_ends_deleted_when_ec2_removed_the_session_first(
    emulator: EmulatorProcess,
    lab: Lab,
    other: Celery,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """`missing_ok`: the job's goal is "this session does not exist", so a first attempt's
    NotFound meets it (the planner, which just read the session, sets it); without it an
    API or send_task delete keeps telling its sender."""
    start_worker()
    (gone,) = mirrored(emulator, lab, range(1))
    lab_client(emulator.url).delete_traffic_mirror_session(TrafficMirrorSessionId=gone)
    named = producer.submit(
        {"TrafficMirrorSessionId": gone, "missing_ok": True},
        kind="delete",
        network_interface_id=lab["eni_ids"][0],  # so the delete itself is sent
    )
    unnamed = producer.submit({"TrafficMirrorSessionId": gone, "missing_ok": True}, kind="delete")
    sent = str(uuid.uuid4())
    other.send_task(
        DELETE_TASK_NAME,
        task_id=sent,
        kwargs={"request": {"TrafficMirrorSessionId": gone, "missing_ok": True}},
    )
    plain = producer.submit(
        {"TrafficMirrorSessionId": gone}, kind="delete", network_interface_id=lab["eni_ids"][0]
    )
    done = wait_all(producer, [named, unnamed, sent, plain])
    for record in done[:3]:
        assert record["status"] == "deleted", record["error"]
        assert (record["response"] or {})["AlreadyDeleted"][
            "Code"
        ] == "InvalidTrafficMirrorSessionId.NotFound"
    assert done[0]["attempts"] == 1
    assert (done[3]["status"], done[3]["error"]["code"]) == (
        "failed",
        "InvalidTrafficMirrorSessionId.NotFound",
    )
    assert calls(emulator, "DeleteTrafficMirrorSession") == {
        "ok": 1,  # the test's own, in EC2
        # named's and plain's: the others name no ENI, and read the session's first
        "InvalidTrafficMirrorSessionId.NotFound": 2,
    }
    # mirrorq's field, never EC2's: kept in the record, left out of what EC2 is sent.
    assert done[0]["request"] == {"TrafficMirrorSessionId": gone, "missing_ok": True}
    asked = parse_request({"TrafficMirrorSessionId": gone, "missing_ok": True}, JobKind.DELETE)
    assert ec2_request(asked.to_kwargs()) == {"TrafficMirrorSessionId": gone}
