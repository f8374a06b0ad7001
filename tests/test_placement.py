"""Where a job runs: `region`, `role_arn`, `external_id` beside the request, through every door.

Validation is pure (unit tests); acceptance, records, claims, batches' counts by account and
Region and the start check run against the tests' real Redis, real `mirrorq` commands, a real
API process and real workers on the emulator. Jobs with a role are accepted and recorded here,
never run: assuming roles is the workers' part (worker/aws.py).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from emulator.lab import seed_lab, sessions
from mirrorq.jobfiles import parse_placed_jobs
from mirrorq.processes import MIRRORQ, EmulatorProcess, WorkerProcess
from tasks import keys
from tasks.contract import (
    TASK_NAME,
    Placement,
    parse_envelope,
    parse_job,
    parse_placement,
    queue_for,
)
from tasks.errors import BatchFileError, InvalidJobError
from tasks.records import JobStatus, StepVerdict, started
from tasks.store import StepResult
from tests.api_process import AUTH, start_api
from tests.forkserver import run_mirrorq
from tests.helpers import job, producer_for, wait_all, wait_until
from worker.repair import queued_job_ids, repair_lost_jobs

ROLE = "arn:aws:iam::111111111111:role/mirrorq"
ROLE_B = "arn:aws:iam::222222222222:role/team/mirrorq-worker"
REQUEST: dict[str, Any] = {
    "NetworkInterfaceId": "eni-0123456789abcdef0",
    "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
    "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
    "SessionNumber": 1,
}
# (placement, the field named, words of the message)
BAD = [
    ({"region": "eu-nowhere-1"}, "region", "not a Region EC2 has"),
    ({"region": "cn-north-1"}, "region", "aws-cn partition"),
    ({"region": "us-gov-west-1"}, "region", "aws-us-gov partition"),
    ({"region": ""}, "region", "not a Region"),
    ({"role_arn": "arn:aws:iam::111111111111:user/mirrorq"}, "role_arn", "IAM role ARN"),
    ({"role_arn": "arn:aws:iam::11111111111:role/mirrorq"}, "role_arn", "IAM role ARN"),
    ({"role_arn": "mirrorq"}, "role_arn", "IAM role ARN"),
    ({"role_arn": "arn:aws-cn:iam::111111111111:role/m"}, "role_arn", "partition aws-cn"),
    ({"role_arn": ROLE, "external_id": "x"}, "external_id", "2 to 1,224"),
    ({"role_arn": ROLE, "external_id": "x" * 1225}, "external_id", "2 to 1,224"),
    ({"role_arn": ROLE, "external_id": "has space"}, "external_id", "2 to 1,224"),
    ({"external_id": "abc123"}, "external_id", "with a role_arn only"),
]


def refused(placement: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidJobError) as raised:
        parse_placement(placement)
    return [(e["field"], e["message"]) for e in raised.value.errors]


# Validation (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(("placement", "field", "words"), BAD)
def test_a_bad_placement_is_refused_naming_its_field(
    placement: dict[str, Any], field: str, words: str
) -> None:
    [(named, message)] = refused(placement)
    assert named == field
    assert words in message


def test_a_good_placement_and_its_account() -> None:
    placed = parse_placement(region="eu-west-1", role_arn=ROLE_B, external_id="Org:1/a+b=c,d.e@f-g")
    assert placed.account_id == "222222222222"
    assert placed.region == "eu-west-1"
    assert Placement().account_id is None
    assert parse_placement(region="ap-southeast-2").account_id is None
    assert parse_placement(external_id="x" * 1224, role_arn=ROLE).external_id == "x" * 1224
    with pytest.raises(Exception, match="frozen"):
        placed.region = "us-east-1"


def test_the_envelope_carries_the_placement_beside_the_request_and_checks_it() -> None:
    envelope = parse_envelope((), {"request": REQUEST, "region": "eu-west-1", "role_arn": ROLE})
    assert envelope.placement == Placement(region="eu-west-1", role_arn=ROLE)
    for placement, field, words in BAD:
        with pytest.raises(InvalidJobError) as raised:
            parse_envelope((), {"request": REQUEST, **placement})
        assert [e["field"] for e in raised.value.errors] == [field]
        assert words in str(raised.value)
    # Never inside the request: the request stays the seed's syntax.
    with pytest.raises(InvalidJobError) as raised:
        parse_job({**REQUEST, "region": "eu-west-1"})
    assert [e["field"] for e in raised.value.errors] == ["region"]


def test_a_job_file_line_may_be_an_envelope_and_the_defaults_fill_the_rest() -> None:
    defaults = parse_placement(region="eu-west-1", role_arn=ROLE, external_id="default-id")
    lines = [
        json.dumps(REQUEST),
        json.dumps({"request": REQUEST, "region": "us-west-2"}),
        json.dumps({"request": REQUEST, "role_arn": ROLE_B}),  # its own role, no default id
    ]
    jobs = parse_placed_jobs("\n".join(lines), "jsonl", defaults=defaults)
    assert [j.to_kwargs() for j in jobs.requests] == [REQUEST] * 3
    assert jobs.placements == [
        defaults,
        Placement(region="us-west-2", role_arn=ROLE, external_id="default-id"),
        Placement(region="eu-west-1", role_arn=ROLE_B),
    ]
    csv_text = "\n".join(
        [
            ",".join([*REQUEST, "region", "role_arn", "external_id"]),
            ",".join([*map(str, REQUEST.values()), "eu-west-1", ROLE, "ext-1"]),
            ",".join([*map(str, REQUEST.values()), "", "", ""]),
        ]
    )
    csv_jobs = parse_placed_jobs(csv_text, "csv")
    assert csv_jobs.placements == [
        Placement(region="eu-west-1", role_arn=ROLE, external_id="ext-1"),
        Placement(),
    ]


def test_bad_placements_in_a_file_are_named_with_their_line() -> None:
    lines = [
        json.dumps(REQUEST),
        json.dumps({"request": REQUEST, "role_arn": "arn:aws:iam::1:role/x"}),
        json.dumps({"request": REQUEST, "region": "mars-1", "queue": "mine"}),
        json.dumps({"request": {**REQUEST, "SessionNumber": 0}, "external_id": "e!"}),
    ]
    with pytest.raises(BatchFileError) as raised:
        parse_placed_jobs("\n".join(lines), "jsonl")
    assert [(e.get("line"), e["field"]) for e in raised.value.errors] == [
        (2, "role_arn"),
        (3, "queue"),
        (3, "region"),
        (4, "SessionNumber"),
        (4, "external_id"),
    ]


# Acceptance, records, claims (real Redis) --------------------------------------------------


def test_records_keep_where_the_job_runs_and_the_queue_of_the_fleet_that_accepted_it(
    redis_url: str,
) -> None:
    named = producer_for(redis_url, aws_account_id="333333333333")
    plain = named.result(named.submit(REQUEST))
    assert plain is not None
    assert {k: plain.get(k) for k in ("account_id", "region", "role_arn", "external_id")} == {
        "account_id": "333333333333",
        "region": "us-east-1",
        "role_arn": None,
        "external_id": None,
    }
    assert plain["queue"] == queue_for("333333333333", "us-east-1")
    role = named.result(
        named.submit(REQUEST, region="eu-west-1", role_arn=ROLE_B, external_id="e-1")
    )
    assert role is not None
    assert (role["account_id"], role["region"], role["role_arn"], role["external_id"]) == (
        "222222222222",
        "eu-west-1",
        ROLE_B,
        "e-1",
    )
    # Carried by the accepting fleet's queue: any of its workers assumes the role.
    assert role["queue"] == named.scope.queue
    # No role: only a worker of its own account and Region acts for it.
    west = named.result(named.submit(REQUEST, region="eu-west-1"))
    assert west is not None
    # Also the accepting fleet's queue: its own credentials serve every Region.
    assert (west["account_id"], west["region"], west["queue"]) == (
        "333333333333",
        "eu-west-1",
        named.scope.queue,
    )
    # The messages carry the placement beside the request.
    client = redis.Redis.from_url(redis_url)
    bodies = {
        message["headers"]["id"]: json.loads(base64.b64decode(message["body"]))[1]
        for queue in (named.scope.queue, queue_for("333333333333", "eu-west-1"))
        for message in map(json.loads, client.lrange(queue, 0, -1))
    }
    assert bodies[role["job_id"]]["role_arn"] == ROLE_B
    assert bodies[role["job_id"]]["region"] == "eu-west-1"
    assert bodies[role["job_id"]]["external_id"] == "e-1"
    assert "role_arn" not in bodies[plain["job_id"]]
    assert bodies[west["job_id"]]["region"] == "eu-west-1"


def test_producer_refuses_a_bad_placement_naming_every_field_and_queues_nothing(
    redis_url: str,
) -> None:
    producer = producer_for(redis_url)
    with pytest.raises(InvalidJobError) as raised:
        producer.submit({**REQUEST, "SessionNumber": 0}, region="nowhere", role_arn="x")
    assert [e["field"] for e in raised.value.errors] == ["SessionNumber", "region", "role_arn"]
    client = redis.Redis.from_url(redis_url)
    assert client.llen("mirrorq") == 0
    assert client.zcard(keys.PENDING) == 0


def test_an_idempotency_key_is_one_job_per_account_and_region(redis_url: str) -> None:
    producer = producer_for(redis_url)
    first = producer.submit(REQUEST, idempotency_key="k-1")
    assert producer.submit(REQUEST, idempotency_key="k-1") == first
    # A job with no placement keeps the key it always had (and so does one naming the
    # fleet's own Region): nothing existing changes meaning.
    assert redis.Redis.from_url(redis_url).exists(keys.idempotency("k-1"))
    assert producer.submit(REQUEST, idempotency_key="k-1", region="us-east-1") == first
    in_a = producer.submit(REQUEST, idempotency_key="k-1", role_arn=ROLE)
    in_b = producer.submit(REQUEST, idempotency_key="k-1", role_arn=ROLE_B)
    west = producer.submit(REQUEST, idempotency_key="k-1", region="eu-west-1")
    assert len({first, in_a, in_b, west}) == 4
    assert producer.submit(REQUEST, idempotency_key="k-1", role_arn=ROLE_B) == in_b
    assert redis.Redis.from_url(redis_url).exists(
        keys.idempotency("k-1", ("222222222222", "us-east-1"))
    )


def test_the_repair_publishes_a_lost_job_again_with_its_region_and_role(redis_url: str) -> None:
    producer = producer_for(redis_url, aws_account_id="333333333333")
    client = redis.Redis.from_url(redis_url)
    lost = producer.submit(REQUEST, region="eu-west-1", role_arn=ROLE, external_id="ext-9")
    assert client.rpop(producer.scope.queue) is not None  # its message is lost

    def sweep() -> list[str]:
        return repair_lost_jobs(producer.redis, producer.store, producer.publish, 0, time.time())

    assert [sweep(), sweep()] == [[], [lost]]
    [message] = [json.loads(m) for m in client.lrange(producer.scope.queue, 0, -1)]
    assert queued_job_ids([json.dumps(message)]) == {lost}
    envelope = json.loads(base64.b64decode(message["body"]))[1]
    assert {k: envelope[k] for k in ("region", "role_arn", "external_id")} == {
        "region": "eu-west-1",
        "role_arn": ROLE,
        "external_id": "ext-9",
    }
    assert parse_envelope((), envelope).placement.account_id == "111111111111"


def test_the_start_check_lets_any_worker_of_the_queue_act_for_a_role(redis_url: str) -> None:
    """A job runs on any worker reading the queue that carries it, whatever that worker's
    Region (it assumes a job's role; its own credentials serve every Region); one without a
    role only in the worker's own account."""
    producer = producer_for(redis_url)  # default account, us-east-1: the queue `mirrorq`
    role_job = producer.result(producer.submit(REQUEST, region="ap-south-1", role_arn=ROLE))
    west_job = producer.result(producer.submit(REQUEST, region="ap-south-1"))
    assert role_job is not None
    assert west_job is not None
    other_region = producer_for(redis_url, MIRRORQ_REGION="eu-west-1").store  # same queue
    other_account = producer_for(redis_url, aws_account_id="444444444444").store

    def verdict(store: Any, record: Any) -> StepVerdict:
        result: StepResult = store.step("start", started(record, record["request"]), "token")
        return result.verdict

    assert verdict(other_account, role_job) is StepVerdict.ELSEWHERE  # another queue: passed on
    assert verdict(other_account, west_job) is StepVerdict.ELSEWHERE
    assert verdict(other_region, west_job) is StepVerdict.STORED
    assert verdict(other_region, role_job) is StepVerdict.STORED
    assert producer.result(role_job["job_id"])["status"] == JobStatus.RUNNING  # type: ignore[index]


# Through every door (real processes) ---------------------------------------------------------


def mirrorq(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_mirrorq(
        [*MIRRORQ, *args],
        env=env,
        check=False,
        timeout=300,
        input=stdin,
    )


def test_cli_doors_take_a_placement_and_refuse_a_bad_one_naming_the_field(
    env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    request = json.dumps(REQUEST)
    for args, field in (
        (["--region", "eu-nowhere-1"], "region"),
        (["--role-arn", "arn:aws:iam::1:role/x"], "role_arn"),
        (["--role-arn", ROLE, "--external-id", "a"], "external_id"),
        (["--external-id", "abcd"], "external_id"),
    ):
        out = mirrorq(env, "submit", request, *args)
        assert out.returncode == 2, out.stderr
        assert f"{field}: " in out.stderr
        out = mirrorq(
            env,
            "mirror",
            "--target",
            REQUEST["TrafficMirrorTargetId"],
            "--filter",
            REQUEST["TrafficMirrorFilterId"],
            "--vpc",
            "vpc-12345678",
            *args,
        )
        assert out.returncode == 2, out.stderr
        assert f"{field}: " in out.stderr
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        "\n".join([request, json.dumps({"request": REQUEST, "region": "mars-1"})]) + "\n"
    )
    out = mirrorq(env, "batch", "submit", str(path))
    assert out.returncode == 2
    assert "line 2: region: " in out.stderr
    out = mirrorq(env, "batch", "submit", str(path), "--role-arn", "nope")
    assert out.returncode == 2
    assert "role_arn: " in out.stderr
    assert client.zcard(keys.PENDING) == 0  # nothing accepted, nothing queued
    assert client.llen("mirrorq") == 0

    out = mirrorq(
        env,
        "submit",
        request,
        "--region",
        "eu-west-1",
        "--role-arn",
        ROLE,
        "--external-id",
        "ext-cli",
    )
    assert out.returncode == 0, out.stderr
    status = mirrorq(env, "status", out.stdout.strip())
    record = json.loads(status.stdout)
    assert (record["account_id"], record["region"], record["role_arn"]) == (
        "111111111111",
        "eu-west-1",
        ROLE,
    )
    assert record["external_id"] == "ext-cli"
    path.write_text(
        "\n".join([request, json.dumps({"request": REQUEST, "role_arn": ROLE_B})]) + "\n"
    )
    out = mirrorq(env, "batch", "submit", str(path), "--region", "eu-west-2")
    assert out.returncode == 0, out.stderr
    batch_id = out.stdout.strip()
    results = mirrorq(env, "batch", "results", batch_id, "--format", "csv")
    rows = results.stdout.splitlines()
    assert rows[0].startswith("job_id,status,attempts,account_id,region,role_arn,")
    assert rows[1].split(",")[3:6] == ["", "eu-west-2", ""]
    assert rows[2].split(",")[3:6] == ["222222222222", "eu-west-2", ROLE_B]
    status_json = json.loads(mirrorq(env, "batch", "status", batch_id, "--json").stdout)
    assert [(p["account_id"], p["region"], p["counts"]) for p in status_json["by_placement"]] == [
        ("222222222222", "eu-west-2", {"queued": 1}),
        (None, "eu-west-2", {"queued": 1}),
    ]


def test_http_doors_take_the_envelope_and_refuse_a_bad_one_with_422_naming_the_field(
    env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    process = start_api({**env, "MIRRORQ_API_TOKENS": AUTH["Authorization"].split()[1]}, tmp_path)
    try:
        http = httpx.Client(base_url=process.url, headers=AUTH, timeout=60)  # type: ignore[attr-defined]
        for placement, field, _ in BAD:
            answer = http.post("/v1/jobs", json={"request": REQUEST, **placement})
            assert answer.status_code == 422, answer.text
            assert [f["field"] for f in answer.json()["error"]["fields"]] == [field]
        lines = [json.dumps(REQUEST), json.dumps({"request": REQUEST, "external_id": "ab"})]
        answer = http.post("/v1/batches", content="\n".join(lines))
        assert answer.status_code == 422
        assert [(f["line"], f["field"]) for f in answer.json()["error"]["fields"]] == [
            (2, "external_id")
        ]
        assert redis.Redis.from_url(redis_url).zcard(keys.PENDING) == 0

        accepted = http.post("/v1/jobs", json={"request": REQUEST, "role_arn": ROLE})
        assert accepted.status_code == 202
        record = http.get(f"/v1/jobs/{accepted.json()['job_id']}").json()
        assert (record["account_id"], record["region"], record["role_arn"]) == (
            "111111111111",
            "us-east-1",
            ROLE,
        )
        body = [{"request": REQUEST, "region": "eu-west-1"}, REQUEST]
        batch = http.post("/v1/batches", json=body).json()["batch_id"]
        status = http.get(f"/v1/batches/{batch}").json()
        assert [(p["region"], p["total"]) for p in status["by_placement"]] == [
            ("eu-west-1", 1),
            ("us-east-1", 1),
        ]
        schema = http.get("/openapi.json").json()
        envelope = schema["components"]["schemas"]["JobEnvelope"]
        assert set(envelope["properties"]) == {
            "request",
            "kind",
            "network_interface_id",
            "region",
            "role_arn",
            "external_id",
        }
        assert "eu-west-1" in envelope["properties"]["region"]["enum"]
        assert "cn-north-1" not in envelope["properties"]["region"]["enum"]
        assert envelope["properties"]["external_id"]["maxLength"] == 1224
        post = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
        assert {"$ref": "#/components/schemas/JobEnvelope"} in post["schema"]["oneOf"]
    finally:
        process.stop()


def test_send_task_with_a_bad_placement_ends_invalid_job_naming_the_field(
    emulator: EmulatorProcess, producer: Any, start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_lab(emulator.url, 2)
    start_worker()
    sent = {
        "bad-region": ({"region": "eu-nowhere-1"}, "region"),
        "bad-role": ({"role_arn": "arn:aws:iam::123:role/x"}, "role_arn"),
        "bad-external-id": ({"role_arn": ROLE, "external_id": "a b"}, "external_id"),
    }
    for task_id, (placement, _) in sent.items():
        producer.app.send_task(
            TASK_NAME, task_id=task_id, kwargs={"request": job(lab, 0), **placement}
        )
    # A job sent naming the worker's own Region runs, and its record says where.
    producer.app.send_task(
        TASK_NAME, task_id="own-region", kwargs={"request": job(lab, 1), "region": "us-east-1"}
    )
    records = wait_all(producer, [*sent, "own-region"])
    for record, (_, field) in zip(records, sent.values(), strict=False):
        assert record["status"] == "failed"
        assert record["error"]["code"] == "InvalidJob"
        assert record["error"]["message"].startswith(f"{field}: ")
    assert (records[-1]["status"], records[-1]["region"], records[-1]["role_arn"]) == (
        "created",
        "us-east-1",
        None,
    )
    assert emulator.stats()["CreateTrafficMirrorSession"] == {"ok": 1}


def test_a_batch_spanning_two_regions_counts_each_as_its_jobs_run(
    emulator: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Jobs without a role in two Regions of one account: the fleet's worker runs each in its
    own Region, and the batch's counts by account and Region move with them (the step
    script)."""
    account, per_region = "555555555555", 4
    east, west = seed_lab(emulator.url, per_region), seed_lab(emulator.url, per_region, "eu-west-1")
    producer = producer_for(redis_url, aws_account_id=account)
    requests = [job(east, i) for i in range(per_region)] + [job(west, i) for i in range(per_region)]
    placements = [Placement()] * per_region + [Placement(region="eu-west-1")] * per_region
    batch_id = producer.submit_batch([parse_job(r)[0] for r in requests], placements=placements)
    status = producer.batch_status(batch_id)
    assert status is not None
    assert status["by_placement"] == [
        {"account_id": account, "region": "eu-west-1", "total": 4, "counts": {"queued": 4}},
        {"account_id": account, "region": "us-east-1", "total": 4, "counts": {"queued": 4}},
    ]
    start_worker("east", MIRRORQ_AWS_ACCOUNT_ID=account)
    ids = [r["job_id"] for r in producer.batch_results(batch_id)]
    results = wait_all(producer, ids)
    assert {(r["status"], r["region"]) for r in results} == {
        ("created", "us-east-1"),
        ("created", "eu-west-1"),
    }
    assert sorted(s["NetworkInterfaceId"] for s in sessions(emulator.url, "eu-west-1")) == sorted(
        west["eni_ids"][:per_region]
    )
    wait_until(lambda: (producer.batch_status(batch_id) or {}).get("finished_at"), what="batch end")
    status = producer.batch_status(batch_id)
    assert status is not None
    assert [(p["region"], p["counts"]) for p in status["by_placement"]] == [
        ("eu-west-1", {"created": 4}),
        ("us-east-1", {"created": 4}),
    ]
    shown = {**env, "MIRRORQ_AWS_ACCOUNT_ID": account, "COLUMNS": "200"}
    text = mirrorq(shown, "batch", "status", batch_id).stdout
    assert "by account and Region" in text
    assert [line.split() for line in text.splitlines() if account in line] == [
        ["│", account, "│", "eu-west-1", "│", "4", "│", "4", "│"],
        ["│", account, "│", "us-east-1", "│", "4", "│", "4", "│"],
    ]


def test_a_job_the_fleet_accepts_for_another_region_runs_there_or_is_refused_at_the_door(
    emulator: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """The README's own example, `mirrorq submit --region eu-west-1` (and `batch submit
    --region eu-west-1`), on a fleet with the default settings (MIRRORQ_AWS_ACCOUNT_ID unset,
    MIRRORQ_REGION us-east-1): the door says 0 and prints a job id, then every worker of the
    fleet, whose own credentials serve eu-west-1 as well, ends the job failed WrongScope.
    Review 16: a job accepted at a door must be one the fleet can run (in its Region, as a
    job with a role_arn is), or be refused there naming `region`; never accepted to fail."""
    west = seed_lab(emulator.url, 1, "eu-west-1")
    start_worker()  # the default scope, us-east-1, reading the queue `mirrorq`
    out = mirrorq(env, "submit", "--region", "eu-west-1", "--wait", json.dumps(job(west, 0)))
    if out.returncode == 2:  # refused at the door: it must say why, nothing queued
        assert "region: " in out.stderr, out.stderr
        assert redis.Redis.from_url(redis_url).zcard(keys.PENDING) == 0
        return
    record = json.loads(out.stdout)
    assert (record["status"], record["region"], record["error"]) == ("created", "eu-west-1", None)
