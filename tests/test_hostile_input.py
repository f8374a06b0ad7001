"""Hostile input: whatever arrives is a valid job or a clear error naming the field.

The contract (pure, with hypothesis), job files, the CLI, and raw messages published straight
to a real worker's queue, as another service (or another language's Celery client) would.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.lab import seed_lab
from mirrorq.jobfiles import read_jobs
from mirrorq.processes import MIRRORQ, EmulatorProcess, WorkerProcess
from tasks.contract import TASK_NAME, SessionRequest, parse_request
from tasks.errors import BatchFileError, InvalidJobError
from tasks.producer import Producer
from tests.forkserver import run_mirrorq
from tests.helpers import job, raw_message, wait_all

VALID: dict[str, Any] = {
    "NetworkInterfaceId": "eni-0123456789abcdef0",
    "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
    "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
    "SessionNumber": 1,
}
DEEP = "[" * 100_000 + "]" * 100_000  # far past Python's recursion limit


def field_errors(raw: Any) -> list[str]:
    with pytest.raises(InvalidJobError) as raised:
        parse_request(raw)
    fields = [e["field"] for e in raised.value.errors]
    assert fields
    assert all(isinstance(f, str) and f for f in fields)
    return fields


# The contract ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"SessionNumber": True}, "SessionNumber"),
        ({"SessionNumber": "1_0"}, "SessionNumber"),
        ({"SessionNumber": " 7 "}, "SessionNumber"),
        ({"SessionNumber": "7"}, "SessionNumber"),
        ({"SessionNumber": 1.0}, "SessionNumber"),
        ({"PacketLength": False}, "PacketLength"),
        ({"PacketLength": "128"}, "PacketLength"),
        ({"VirtualNetworkId": 2.0}, "VirtualNetworkId"),
        ({"DryRun": 1}, "DryRun"),
        ({"DryRun": "true"}, "DryRun"),
        ({"Description": 7}, "Description"),
    ],
)
def test_ec2s_integers_are_integers_and_nothing_is_coerced(
    change: dict[str, Any], field: str
) -> None:
    assert field in field_errors({**VALID, **change})


@pytest.mark.parametrize("key", ["Session Number", "", "séance", "a.b", "0", "Colour"])
def test_an_unknown_key_is_named_as_it_was_sent(key: str) -> None:
    named = key if key.isidentifier() else json.dumps(key)  # quoted unless a plain name
    assert field_errors({**VALID, key: 1}) == [named]


def tag_specs(*specs: list[dict[str, str]]) -> dict[str, Any]:
    return {
        **VALID,
        "TagSpecifications": [
            {"ResourceType": "traffic-mirror-session", "Tags": tags} for tags in specs
        ],
    }


def test_tag_specifications_follow_ec2s_limits() -> None:
    fifty = [{"Key": f"k{i}", "Value": "v"} for i in range(50)]
    assert parse_request(tag_specs(fifty)).TagSpecifications is not None
    assert field_errors(tag_specs(fifty, fifty)) == ["TagSpecifications"]  # one per type
    assert field_errors(tag_specs([{"Key": "team"}, {"Key": "env"}, {"Key": "team"}])) == [
        "TagSpecifications.0.Tags.2.Key"
    ]
    million = {**VALID, "TagSpecifications": [{"ResourceType": "traffic-mirror-session"}] * 10**6}
    assert field_errors(million) == ["TagSpecifications"]


def test_deeply_nested_json_is_an_error_not_a_crash() -> None:
    assert field_errors(DEEP) == ["(job)"]
    assert field_errors(json.dumps(VALID)[:-1] + ', "Description": ' + DEEP + "}") == ["(job)"]


def parsed_or_fields(raw: Any) -> SessionRequest | list[str]:
    """The parsed job, or the fields its error names; any other exception fails the test."""
    try:
        return parse_request(raw)
    except InvalidJobError as error:
        return [e["field"] for e in error.errors]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        *VALID,
        "PacketLength",
        "VirtualNetworkId",
        "Description",
        "TagSpecifications",
        "DryRun",
        "ClientToken",
    ]
)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_any_json_value_is_a_job_or_names_a_field(value: Any) -> None:
    outcome = parsed_or_fields(value)
    if isinstance(outcome, list):
        assert outcome
        assert all(isinstance(f, str) and f for f in outcome)


@settings(max_examples=500, deadline=None)
@given(name=field_names, value=json_values)
def test_a_job_with_one_field_replaced_is_valid_or_names_that_field(name: str, value: Any) -> None:
    outcome = parsed_or_fields({**VALID, name: value})
    if isinstance(outcome, list):
        assert {f.split(".")[0] for f in outcome} == {name}
        return
    kwargs = outcome.to_kwargs()
    if value is not None and name != "TagSpecifications":  # sent exactly as it came
        assert kwargs[name] == value
        assert type(kwargs[name]) is type(value)
    assert json.loads(json.dumps(kwargs)) == kwargs


# Job files and the CLI ---------------------------------------------------------------------


def bad_lines(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(BatchFileError) as raised:
        read_jobs(path)
    return [(e.get("line", 0), e["field"]) for e in raised.value.errors]


def test_job_files_refuse_what_they_cannot_read(tmp_path: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps(VALID) + "\n" + DEEP + "\n")
    assert bad_lines(deep) == [(2, "(line)")]

    header = ",".join(VALID)
    values = ",".join(str(v) for v in VALID.values())
    huge = tmp_path / "huge.csv"
    huge.write_text(f"{header},Description\n{values},{'x' * 200_000}\n{values},ok\n")
    assert bad_lines(huge)[0] == (2, "(line)")

    twice = tmp_path / "twice.csv"
    twice.write_text(f"{header},SessionNumber\n{values},2\n")
    assert bad_lines(twice) == [(1, "SessionNumber")]

    loose = tmp_path / "loose.csv"
    loose.write_text(f"{header}\n" + values.replace(",1", ", 1 ") + "\n")
    assert bad_lines(loose) == [(2, "SessionNumber")]


def test_the_cli_refuses_deep_nesting_with_exit_2_and_no_traceback(
    env: dict[str, str], redis_url: str
) -> None:
    done = run_mirrorq([*MIRRORQ, "submit", "-"], input=DEEP, env=env, check=False)
    assert done.returncode == 2
    assert "(job)" in done.stderr
    assert "Traceback" not in done.stderr
    assert redis.Redis.from_url(redis_url).llen("mirrorq") == 0


# Raw messages, as another service publishes them -------------------------------------------


def publish_raw(redis_url: str, task_id: str, body: str) -> None:
    redis.Redis.from_url(redis_url).lpush("mirrorq", json.dumps(raw_message(task_id, body)))


def test_every_message_with_a_job_id_gets_a_record_however_it_is_built(
    emulator: EmulatorProcess,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 3)
    start_worker()
    embed = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'
    bodies = {
        "deep request": '[[], {"request": ' + DEEP + "}, " + embed + "]",
        "not JSON": "[[], {this is not json",
        "not a list": '{"request": {}}',
        "kwargs not an object": "[[], [1, 2], {}]",
        "loose number": json.dumps([[], {"request": job(lab, 0, SessionNumber="1")}, {}]),
    }
    job_ids = {name: str(uuid.uuid4()) for name in bodies}
    for name, body in bodies.items():
        publish_raw(redis_url, job_ids[name], body)
    good = producer.submit(job(lab, 1))
    for name, job_id in job_ids.items():
        (record,) = wait_all(producer, [job_id], timeout=30)
        assert (record["status"], record["error"]["code"]) == ("failed", "InvalidJob"), name
    assert wait_all(producer, [good])[0]["status"] == "created"


def test_a_batch_id_counts_only_for_a_batch_that_registered_the_job(
    emulator: EmulatorProcess,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 4)
    start_worker()
    real = producer.submit_batch([parse_request(job(lab, 0))])
    (real_job,) = next(producer.store.batches.job_ids(real))
    wait_all(producer, [real_job])
    before = producer.batch_status(real)
    strangers = {"unknown": str(uuid.uuid4()), "real": real}
    job_ids = {}
    for n, (name, batch_id) in enumerate(strangers.items(), start=1):
        job_ids[name] = str(uuid.uuid4())
        producer.app.send_task(
            TASK_NAME,
            task_id=job_ids[name],
            kwargs={"request": job(lab, n), "batch_id": batch_id},
            queue="mirrorq",
        )
    for name, job_id in job_ids.items():
        (record,) = wait_all(producer, [job_id])
        assert (record["status"], record["error"]["code"]) == ("failed", "InvalidJob"), name
        assert "batch_id" in record["error"]["message"]
    assert producer.batch_status(real) == before
    assert producer.batch_status(strangers["unknown"]) is None
    assert not redis.Redis.from_url(redis_url).keys(f"*{strangers['unknown']}*")


kwargs_strategy = st.dictionaries(
    st.sampled_from(["request", "batch_id", "submitted_at"]) | st.text(max_size=8),
    json_values | st.builds(lambda n, v: {**VALID, n: v}, field_names, json_values),
    max_size=3,
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    messages=st.lists(
        st.tuples(st.lists(json_values, max_size=2), kwargs_strategy), min_size=1, max_size=12
    )
)
def test_any_message_on_the_queue_ends_in_a_record_and_the_worker_goes_on(
    emulator: EmulatorProcess,
    producer: Producer,
    worker: WorkerProcess,
    messages: list[tuple[list[Any], dict[str, Any]]],
) -> None:
    job_ids = []
    for args, kwargs in messages:
        job_ids.append(str(uuid.uuid4()))
        producer.app.send_task(
            TASK_NAME, task_id=job_ids[-1], args=args, kwargs=kwargs, queue="mirrorq"
        )
    for record in wait_all(producer, job_ids, timeout=60):
        assert record["status"] in {"created", "failed"}
        if record["status"] == "failed":
            assert record["error"]["code"]
    assert worker.proc.poll() is None


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker()


# Exports -----------------------------------------------------------------------------------


def test_csv_exports_neutralise_spreadsheet_formulas(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 6)
    tokens = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(1+1)*cmd|x"]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "".join(json.dumps(job(lab, i, ClientToken=t)) + "\n" for i, t in enumerate(tokens))
    )
    batch_id = run_mirrorq(
        [*MIRRORQ, "batch", "submit", str(jobs)],
        env=env,
        check=True,
    ).stdout.strip()
    start_worker()
    subprocess.run(
        [*MIRRORQ, "batch", "status", batch_id, "--watch", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    exported = run_mirrorq(
        [*MIRRORQ, "batch", "results", batch_id, "--format", "csv"],
        env=env,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(exported, newline="")))
    assert [row["client_token"] for row in rows] == ["'" + t for t in tokens]
    for row in rows:
        for value in row.values():
            assert not value or value[0] not in "=+-@\t\r", row


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@A1", "\tx", "\rx"])
def test_a_cell_that_a_spreadsheet_would_run_is_quoted(cell: str) -> None:
    from mirrorq.export import csv_cell

    assert csv_cell(cell) == "'" + cell
    assert csv_cell("eni-0123") == "eni-0123"
    assert csv_cell(7) == 7


def test_a_carriage_return_inside_a_cell_cannot_start_a_row_of_its_own() -> None:
    """Found in review: a CR inside an unquoted cell let a reader start a new row with a live
    formula. Every cell holding a line break is quoted (RFC 4180)."""
    from mirrorq.export import csv_lines

    record = {
        "job_id": "j",
        "status": "failed",
        "error": {"code": "X", "message": "a\r=cmd|' /C calc'!A0"},
    }
    text = "".join(csv_lines([record]))
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 2
    assert all(not cell.startswith("=") for row in rows for cell in row)
    for naive in text.replace("\r\n", "\n").split("\n"):
        assert not naive.startswith("=")


@pytest.mark.parametrize("token", ["a\rb", "tab\there", "nul\x00", "bell\x07"])
def test_a_client_token_is_printable_ascii(token: str) -> None:
    assert field_errors({**VALID, "ClientToken": token}) == ["ClientToken"]


def test_a_file_with_a_million_bad_lines_lists_a_bounded_number_of_them(tmp_path: Path) -> None:
    """Found in review: every bad line was listed, twice, in one answer (7.8 GB for 16 MB)."""
    path = tmp_path / "bad.jsonl"
    path.write_text("x\n" * 200_000)
    with pytest.raises(BatchFileError) as raised:
        read_jobs(path)
    assert len(raised.value.errors) <= 101
    assert raised.value.total == 200_000
    assert len(str(raised.value)) < 20_000


def test_an_empty_idempotency_key_is_refused(producer: Producer, emulator: EmulatorProcess) -> None:
    lab = seed_lab(emulator.url, 1)
    with pytest.raises(InvalidJobError) as raised:
        producer.submit(job(lab, 0), idempotency_key=" ")
    assert [e["field"] for e in raised.value.errors] == ["idempotency_key"]
