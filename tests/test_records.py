"""A record's rules, written once in tasks/records.py, held to the scripts that apply them in
a real Redis: the terminal statuses the scripts are handed are TERMINAL_STATUSES, no later
step leaves one, and every verdict a step can return is a StepVerdict."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tasks import keys, records, scripts
from tasks.contract import JobKind, parse_request
from tasks.producer import Producer
from tasks.records import TERMINAL_STATUSES, JobResult, JobStatus, StepVerdict
from tasks.scripts import Step
from tests.helpers import producer_for

REQUEST = {
    "NetworkInterfaceId": "eni-0123456789abcdef0",
    "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
    "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
    "SessionNumber": 1,
}
LEASE = "the-workers-lease"  # its token
STEPS: tuple[Step, ...] = ("start", "save", "finish")


def in_status(producer: Producer, status: JobStatus) -> tuple[str, JobResult]:
    """A batch of one job whose record is `status`, as a worker's steps left it: its batch id
    and the record."""
    batch_id = producer.submit_batch([parse_request(REQUEST)])
    ([job_id],) = producer.store.batches.job_ids(batch_id)
    record = producer.result(job_id)
    assert record is not None
    if status is JobStatus.QUEUED:
        return batch_id, record
    running = records.started(record, {**REQUEST, "ClientToken": job_id})
    assert producer.store.step("start", running, LEASE).verdict is StepVerdict.STORED
    later = {
        JobStatus.RUNNING: running,
        JobStatus.RETRYING: records.retrying(running, "RequestLimitExceeded", "slow down"),
        JobStatus.CREATED: records.created(running, {"TrafficMirrorSession": {}}),
        JobStatus.DELETED: records.succeeded({**running, "kind": JobKind.DELETE}, {}),
        JobStatus.MODIFIED: records.succeeded({**running, "kind": JobKind.MODIFY}, {}),
        JobStatus.DRY_RUN_OK: records.dry_run_ok(running),
        JobStatus.FAILED: records.failed(running, "InvalidParameterValue", "no"),
    }[status]
    if later is not running:
        step: Step = "finish" if status in TERMINAL_STATUSES else "save"
        assert producer.store.step(step, later, LEASE).verdict is StepVerdict.STORED
    stored = producer.result(job_id)
    assert stored is not None
    assert stored["status"] is status
    return batch_id, stored


def everything_of(producer: Producer, batch_id: str, job_id: str) -> dict[str, Any]:
    """What a step may write: the record, the fleet's counters, the batch's counts and end."""
    client, batch = producer.store.client, keys.batch(batch_id)
    return {
        "record": client.get(producer.store.keys_for([job_id])[0]),
        "pending": client.zscore(keys.PENDING, job_id),
        "lease": client.get(keys.job_lease(job_id)),
        "statuses": client.hgetall(keys.STATS_STATUS),
        "placed": client.hgetall(keys.STATS_PLACED),
        "failures": client.hgetall(keys.STATS_FAILED),
        "durations": client.hgetall(keys.STATS_DURATION),
        "batch": client.hgetall(batch.record),
        "batch statuses": client.hgetall(batch.statuses),
        "batch counts": client.hgetall(batch.counts),
    }


def a_later_step(step: Step, record: JobResult) -> JobResult:
    """What a late or duplicate delivery of the job would write at `step`."""
    request = {**REQUEST, "ClientToken": record["job_id"]}
    again = records.started(records.accepted(record["job_id"], request), request)
    again = {**again, "batch_id": record["batch_id"], "submitted_at": record["submitted_at"]}
    if step == "save":
        return records.retrying(again, "RequestLimitExceeded", "a late retry")
    if step == "finish":
        return records.failed(again, "LateOutcome", "a late outcome")
    return again


def test_the_scripts_are_handed_the_terminal_statuses(redis_url: str) -> None:
    store = producer_for(redis_url).store
    record = records.started(records.accepted("job-1", REQUEST, scope=store.scope), REQUEST)
    for step in STEPS:
        _, argv = store.step_arguments(step, record, LEASE)
        (named,) = (json.loads(arg) for arg in argv)
        assert named["terminal"] == dict.fromkeys(TERMINAL_STATUSES, True)
        assert named["queued"] == JobStatus.QUEUED


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("status", list(JobStatus))
def test_a_step_never_writes_over_a_finished_job(
    redis_url: str, status: JobStatus, step: Step
) -> None:
    """For every status a record can be in and every step a worker takes: a job in a terminal
    status is `done` and nothing moves (its record, the fleet's counters, its batch's counts
    and end); any other is written (or, started again after it ran, resumed)."""
    producer = producer_for(redis_url)
    batch_id, stored = in_status(producer, status)
    before = everything_of(producer, batch_id, stored["job_id"])

    result = producer.store.step(step, a_later_step(step, stored), LEASE)

    assert (result.verdict is not StepVerdict.DONE) == records.may_write(status)
    if status in TERMINAL_STATUSES:
        assert result.verdict is StepVerdict.DONE
        assert result.current == stored
        assert everything_of(producer, batch_id, stored["job_id"]) == before
    elif step == "start" and status is not JobStatus.QUEUED:
        assert result.verdict is StepVerdict.RESUME
        assert result.current == stored
    else:
        assert result.verdict is StepVerdict.STORED
        after = producer.result(stored["job_id"])
        assert after is not None
        assert after["status"] is a_later_step(step, stored)["status"]


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_a_batchs_counts_never_move_a_job_out_of_a_terminal_status(
    redis_url: str, status: JobStatus
) -> None:
    """The batch's own record of the job keeps the rule too: with the job's record gone (its
    TTL ran out before the batch's), a late outcome is written, but the batch counts the job
    once, in the status it finished in."""
    producer = producer_for(redis_url)
    client, batch = producer.store.client, keys.batch(batch_id := in_status(producer, status)[0])
    ([job_id],) = producer.store.batches.job_ids(batch_id)
    client.delete(*producer.store.keys_for([job_id]))
    counted = [client.hgetall(batch.record), client.hgetall(batch.counts)]
    assert counted[1] == {status.encode(): b"1", b"queued": b"0", b"running": b"0"}

    ran = records.started(records.accepted(job_id, REQUEST, batch_id=batch_id), REQUEST)
    other = JobStatus.FAILED if status is JobStatus.CREATED else JobStatus.CREATED
    late = records.created(ran, {}) if other is JobStatus.CREATED else records.failed(ran, "X", "x")
    assert producer.store.step("finish", late, LEASE).verdict is StepVerdict.STORED

    assert client.hget(batch.statuses, job_id) == status.encode()
    assert [client.hgetall(batch.record), client.hgetall(batch.counts)] == counted


def test_every_verdict_the_step_script_returns_is_a_step_verdict() -> None:
    returned = set(re.findall(r"return \{'([a-z-]+)'", scripts.STEP))
    assert returned == {verdict.value for verdict in StepVerdict}


def test_the_scripts_take_their_arguments_by_name() -> None:
    """Every script of tasks/scripts.py reads one JSON argument; none reads ARGV by position
    past it."""
    for name in ("STEP", "ACCEPT", "UNACCEPT", "CLAIM_GAPS"):
        lua = getattr(scripts, name)
        assert "local a = cjson.decode(ARGV[1])" in lua, name
        assert set(re.findall(r"ARGV\[(\d+)\]", lua)) == {"1"}, name
