"""The HTTP API over real HTTP: a real `mirrorq api` process, real Redis, real workers, the
emulator. Auth, limits, errors, the contract's guarantees through HTTP, events, metrics."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emulator.lab import lab_client, seed_lab
from emulator.zoned_lab import policy_text, seed_zoned_lab
from mirrorq.processes import MIRRORQ, ApiProcess, EmulatorProcess, WorkerProcess, free_port
from tasks.errors import InvalidJobError
from tasks.producer import Producer
from tests.api_process import AUTH, TOKENS, start_api
from tests.helpers import job, mirrors, sessions, wait_until


class Api:
    def __init__(self, process: ApiProcess, url: str) -> None:
        self.process, self.url = process, url
        self.http = httpx.Client(base_url=url, headers=AUTH, timeout=60)

    def job_ids_done(self, job_ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}

        def finished() -> bool:
            for job_id in job_ids:
                if job_id not in done:
                    record = self.http.get(f"/v1/jobs/{job_id}").json()
                    if record["status"] in ("created", "failed", "dry_run_ok"):
                        done[job_id] = record
            return len(done) == len(job_ids)

        wait_until(finished, timeout=timeout, interval=0.2, what="the jobs to finish")
        return [done[j] for j in job_ids]


@pytest.fixture
def api_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "MIRRORQ_API_TOKENS": ",".join(TOKENS)}


@pytest.fixture
def api(api_env: dict[str, str], tmp_path: Path) -> Iterator[Api]:
    process = start_api(api_env, tmp_path)
    yield Api(process, process.url)  # type: ignore[attr-defined]
    process.stop()
    log = process.log_path.read_text()
    assert not any(token in log for token in TOKENS), "a token was logged"


V1 = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/some-id"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/some-id"),
    ("GET", "/v1/batches/some-id/results"),
    ("POST", "/v1/events"),
]


def test_every_v1_route_needs_a_valid_token_and_says_no_more(api: Api) -> None:
    bare = httpx.Client(base_url=api.url)
    answers = set()
    for method, path in V1:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKENS[0]}"},
            {"Authorization": f"Bearer {TOKENS[0]}x"},
            {"Authorization": "Bearer"},
        ):
            answer = bare.request(method, path, headers=headers, content=b"{}")
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
            answers.add(answer.text)
    assert len(answers) == 1  # the same answer whatever was wrong
    assert json.loads(answers.pop())["error"]["code"] == "Unauthorized"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert bare.get(path).status_code == 200
    first = httpx.get(
        f"{api.url}/v1/jobs/some-id", headers={"Authorization": f"Bearer {TOKENS[0]}"}
    )
    assert first.status_code == 404  # either token opens the door


def test_bad_input_gets_one_error_shape_naming_the_field(
    api: Api, emulator: EmulatorProcess
) -> None:
    lab = seed_lab(emulator.url, 2)
    invalid = api.http.post("/v1/jobs", json=job(lab, 0, SessionNumber=0, Colour="red"))
    assert invalid.status_code == 422
    error = invalid.json()["error"]
    assert error["code"] == "InvalidJob"
    assert {f["field"] for f in error["fields"]} == {"SessionNumber", "Colour"}
    assert api.http.post("/v1/jobs", content=b"{not json").status_code == 400
    assert (
        api.http.post("/v1/jobs", content=b"[" * 100_000).json()["error"]["fields"][0]["field"]
        == "(job)"
    )
    batch = api.http.post("/v1/batches", content=json.dumps(job(lab, 0)) + "\n{}\n")
    assert batch.status_code == 422
    assert {f.get("line") for f in batch.json()["error"]["fields"]} == {2}
    first = api.http.post("/v1/jobs", json=job(lab, 0), headers={"Idempotency-Key": "k-1"})
    again = api.http.post("/v1/jobs", json=job(lab, 0), headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    other = api.http.post("/v1/jobs", json=job(lab, 1), headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "IdempotencyConflict"
    assert api.http.get("/v1/batches/nope").json()["error"]["code"] == "BatchNotFound"
    assert api.http.get("/v1/jobs/x", params={"wait": "soon"}).status_code in (404, 422)
    assert api.http.post("/v1/jobs", params={"wait": "soon"}, json=job(lab, 1)).status_code == 422
    wrong_method = api.http.delete("/v1/jobs")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "MethodNotAllowed"


def test_an_oversized_body_is_refused_before_it_is_read_and_the_api_stays_up(
    api_env: dict[str, str], tmp_path: Path, emulator: EmulatorProcess
) -> None:
    process = start_api(api_env, tmp_path, MIRRORQ_API_MAX_BODY_BYTES="4096")
    url = process.url  # type: ignore[attr-defined]
    try:
        http = httpx.Client(base_url=url, headers=AUTH, timeout=30)
        declared = http.post("/v1/batches", content=b"x" * 100_000)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "TooLarge"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(100):
                yield b"x" * 1000

        assert http.post("/v1/batches", content=chunks()).status_code == 413
        assert httpx.get(f"{url}/healthz").status_code == 200
        lab = seed_lab(emulator.url, 1)
        assert http.post("/v1/jobs", json=job(lab, 0)).status_code == 202
    finally:
        process.stop()


def test_a_thousand_jobs_posted_at_once_end_created_one_session_each(
    api: Api, emulator: EmulatorProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_lab(emulator.url, 1000)
    start_worker(MIRRORQ_JOBS_PER_MESSAGE="1")
    start_worker(MIRRORQ_JOBS_PER_MESSAGE="1")

    async def post_all() -> list[str]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(
            base_url=api.url, headers=AUTH, limits=limits, timeout=60
        ) as c:
            answers = await asyncio.gather(
                *(c.post("/v1/jobs", json=job(lab, i)) for i in range(1000))
            )
        assert Counter(a.status_code for a in answers) == {202: 1000}
        return [a.json()["job_id"] for a in answers]

    job_ids = asyncio.run(post_all())
    assert len(set(job_ids)) == 1000
    records = api.job_ids_done(job_ids, timeout=240)
    assert Counter(r["status"] for r in records) == {"created": 1000}
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == dict.fromkeys(
        lab["eni_ids"], 1
    )


def test_a_batch_in_json_lines_comes_back_as_csv_matching_ec2(
    api: Api, emulator: EmulatorProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_lab(emulator.url, 40)
    start_worker()
    body = "".join(json.dumps(job(lab, i, SessionNumber="auto")) + "\n" for i in range(30))
    posted = api.http.post(
        "/v1/batches", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert posted.status_code == 202
    batch_id = posted.json()["batch_id"]
    assert posted.json()["jobs"] == 30
    wait_until(
        lambda: api.http.get(f"/v1/batches/{batch_id}").json()["finished_at"],
        timeout=120,
        what="the batch to finish",
    )
    status = api.http.get(f"/v1/batches/{batch_id}").json()
    assert (status["total"], status["done"], status["counts"]) == (30, 30, {"created": 30})
    exported = api.http.get(f"/v1/batches/{batch_id}/results", params={"format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    made = {s["TrafficMirrorSessionId"]: s for s in sessions(emulator.url)}
    assert {r["TrafficMirrorSessionId"] for r in rows} == set(made)
    for row in rows:
        session = made[row["TrafficMirrorSessionId"]]
        assert row["NetworkInterfaceId"] == session["NetworkInterfaceId"]
        assert int(row["SessionNumber"]) == session["SessionNumber"]
    lines = api.http.get(f"/v1/batches/{batch_id}/results").text.splitlines()
    assert [json.loads(line)["batch_id"] for line in lines] == [batch_id] * 30
    array = api.http.post("/v1/batches", json=[job(lab, i) for i in range(30, 40)])
    assert array.json()["jobs"] == 10
    waited = api.http.post(
        "/v1/jobs",
        params={"wait": 60},
        json=job(lab, 30, SessionNumber=2, TrafficMirrorTargetId=lab["target_ids"]["nlb"]),
    )
    assert waited.status_code == 200
    assert waited.json()["status"] in ("created", "failed")


def test_the_same_event_twice_makes_one_session(
    api_env: dict[str, str],
    tmp_path: Path,
    emulator: EmulatorProcess,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_zoned_lab(emulator.url)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(lab))
    tags = [{"ResourceType": "network-interface", "Tags": [{"Key": "Role", "Value": "db"}]}]
    eni = lab_client(emulator.url).create_network_interface(
        SubnetId=lab["subnets"][lab["zones"][0]], TagSpecifications=tags
    )["NetworkInterface"]["NetworkInterfaceId"]
    event = {
        "version": "0",
        "id": "evt-42",
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.ec2",
        "region": "us-east-1",
        "detail": {
            "eventName": "CreateNetworkInterface",
            "responseElements": {"networkInterface": {"networkInterfaceId": eni}},
        },
    }
    process = start_api(api_env, tmp_path, "--policy", str(policy))
    try:
        http = httpx.Client(base_url=process.url, headers=AUTH, timeout=60)  # type: ignore[attr-defined]
        start_worker()
        first, second = (http.post("/v1/events", json=event) for _ in range(2))
        assert (first.status_code, second.status_code) == (202, 202)
        assert len(first.json()["job_ids"]) == 1
        assert second.json()["job_ids"] == []
        wait_until(lambda: len(sessions(emulator.url)) == 1, what="the session")
        third = http.post("/v1/events", json=event)
        assert third.json()["job_ids"] == []
        assert [s["NetworkInterfaceId"] for s in sessions(emulator.url)] == [eni]
        record = http.get(f"/v1/jobs/{first.json()['job_ids'][0]}").json()
        assert (record["rule"], record["event_id"]) == ("db", "evt-42")
        assert (
            http.post("/v1/events", content=b"not an event").json()["error"]["code"]
            == "InvalidEvent"
        )
    finally:
        process.stop()


def test_an_event_whose_id_is_too_long_for_a_key_is_handled_once(
    api_env: dict[str, str],
    tmp_path: Path,
    emulator: EmulatorProcess,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found in review: an id over 256 characters with its ENI and rule was refused (and in
    `mirrorq listen`, held back every event received with it). Its keys hold its digest now."""
    lab = seed_zoned_lab(emulator.url)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(lab))
    tags = [{"ResourceType": "network-interface", "Tags": [{"Key": "Role", "Value": "db"}]}]
    eni = lab_client(emulator.url).create_network_interface(
        SubnetId=lab["subnets"][lab["zones"][0]], TagSpecifications=tags
    )["NetworkInterface"]["NetworkInterfaceId"]
    event = {
        "version": "0",
        "id": "long-" + "x" * 400,
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {
            "eventName": "AttachNetworkInterface",
            "requestParameters": {"networkInterfaceId": eni},
        },
    }
    wildcard = {**event, "detail": {"instance-id": "i-*", "state": "running"}}
    wildcard["detail-type"] = "EC2 Instance State-change Notification"
    process = start_api(api_env, tmp_path, "--policy", str(policy))
    try:
        http = httpx.Client(base_url=process.url, headers=AUTH, timeout=60)  # type: ignore[attr-defined]
        # The worker starts after both: once the first job's session exists, the event is
        # answered "mirrored already", not as a duplicate (seen once the API read target health).
        first, second = (http.post("/v1/events", json=event) for _ in range(2))
        assert (first.status_code, second.status_code) == (202, 202), first.text
        assert len(first.json()["job_ids"]) == 1
        assert (second.json()["job_ids"], second.json()["duplicates"]) == ([], 1)
        start_worker()
        wait_until(lambda: len(sessions(emulator.url)) == 1, what="the session")
        record = http.get(f"/v1/jobs/{first.json()['job_ids'][0]}").json()
        assert record["status"] == "created"
        assert record["event_id"].startswith("sha256:")
        refused = http.post("/v1/events", json=wildcard)
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "InvalidEvent"
    finally:
        process.stop()
    assert [s["NetworkInterfaceId"] for s in sessions(emulator.url)] == [eni]


def test_metrics_parse_and_match_the_records(
    api: Api, emulator: EmulatorProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_lab(emulator.url, 20)
    metrics_port = free_port()
    start_worker(None, "--metrics-port", str(metrics_port))
    good = [api.http.post("/v1/jobs", json=job(lab, i)).json()["job_id"] for i in range(15)]
    bad = [
        api.http.post(
            "/v1/jobs",
            json=job(lab, 0, NetworkInterfaceId="eni-0123456789abcdef0", ClientToken=f"t-{i}"),
        ).json()["job_id"]
        for i in range(3)
    ]
    records = api.job_ids_done(good + bad)
    statuses = Counter(r["status"] for r in records)
    families = {f.name: f for f in text_string_to_metric_families(api.http.get("/metrics").text)}

    def value(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in families[name].samples
            if s.name.endswith(("_total", "_count")) or s.name == name
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("mirrorq_jobs", status="created") == statuses["created"] == 15
    assert value("mirrorq_jobs", status="failed") == statuses["failed"] == 3
    assert value("mirrorq_jobs", status="queued") == 18
    here = {"account": "default", "region": "us-east-1"}  # the fleet's own credentials' place
    assert value("mirrorq_jobs_by_place", **here, status="created") == 15
    assert value("mirrorq_jobs_by_place", **here, status="failed") == 3
    assert value("mirrorq_jobs_by_place", **here, status="queued") == 18
    assert value("mirrorq_jobs_failed", code="InvalidNetworkInterfaceID.NotFound") == 3
    assert value("mirrorq_jobs_pending") == 0
    buckets = [s for s in families["mirrorq_job_seconds"].samples if s.name.endswith("_count")]
    assert buckets[0].value == 18
    worker = {
        f.name: f
        for f in text_string_to_metric_families(
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        )
    }
    calls = [
        s
        for s in worker["mirrorq_ec2_call_seconds"].samples
        if s.name.endswith("_count") and s.labels["action"] == "CreateTrafficMirrorSession"
    ]
    assert sum(s.value for s in calls if s.labels["outcome"] == "ok") == 15
    assert sum(s.value for s in calls if s.labels["outcome"] != "ok") == 3
    assert "mirrorq_worker_jobs_in_flight" in worker


def test_openapi_documents_every_route_and_the_request_syntax(api: Api) -> None:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    paths = schema["paths"]
    assert {(m.upper(), p) for p, ops in paths.items() for m in ops} >= {
        (m, p.replace("some-id", "{job_id}" if "jobs" in p else "{batch_id}")) for m, p in V1
    } | {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
    body = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {
        "oneOf": [
            {"$ref": "#/components/schemas/SessionRequest"},
            {"$ref": "#/components/schemas/JobEnvelope"},
        ]
    }
    components = schema["components"]["schemas"]
    assert set(components["SessionRequest"]["properties"]) == {
        "NetworkInterfaceId",
        "TrafficMirrorTargetId",
        "TrafficMirrorFilterId",
        "SessionNumber",
        "PacketLength",
        "VirtualNetworkId",
        "Description",
        "TagSpecifications",
        "DryRun",
        "ClientToken",
    }
    assert "client_token" in components["JobResult"]["properties"]
    assert {"401", "422", "202"} <= set(paths["/v1/jobs"]["post"]["responses"])
    assert paths["/v1/jobs"]["post"]["security"] == [{"bearer": []}]


def test_review_findings_bodies_keys_logs_and_schema(
    api: Api, emulator: EmulatorProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Found in review: a batch body that is not UTF-8 was accepted with its bytes replaced;
    an API key `event:<id>` pre-empted that event's job; an empty key was shared by everyone;
    the redactor broke uvicorn's access log; the OpenAPI document promised FastAPI's 422."""
    lab = seed_lab(emulator.url, 2)
    bad_utf8 = json.dumps(job(lab, 0, Description="x")).encode().replace(b'"x"', b'"\xff\xfe"')
    for path in ("/v1/jobs", "/v1/batches"):
        answer = api.http.post(path, content=bad_utf8)
        assert answer.status_code == 400, path
        assert answer.json()["error"]["code"] == "InvalidJob"
    assert (
        api.http.post("/v1/jobs", json=job(lab, 0), headers={"Idempotency-Key": ""}).status_code
        == 422
    )
    taken = api.http.post("/v1/jobs", json=job(lab, 0), headers={"Idempotency-Key": "event:own-9"})
    assert taken.status_code == 202
    for _ in range(20):
        assert httpx.get(f"{api.url}/healthz", params={"token": "x"}).status_code == 200
    schema = httpx.get(f"{api.url}/openapi.json").json()
    text = json.dumps(schema)
    assert "HTTPValidationError" not in text
    event = schema["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert event["schema"] == {"$ref": "#/components/schemas/EventBridgeEvent"}
    assert schema["components"]["schemas"]["EventBridgeEvent"]["properties"]["id"]["type"] == (
        "string"
    )
    api.process.stop()
    log = api.process.log_path.read_text()
    assert "Logging error" not in log
    assert "/healthz?token=***" in log or "/healthz?token=" in log


def test_a_hung_redis_gets_prompt_answers_and_the_api_recovers(
    api_env: dict[str, str], tmp_path: Path, emulator: EmulatorProcess
) -> None:
    """Redis stopped (SIGSTOP, as a hung host looks): every probe answers 503 within its
    bound, the process stays alive, and once Redis goes on the API serves again."""
    import os
    import signal

    from tests.redis_server import RedisServer

    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    assert server.proc is not None
    process = start_api(api_env, tmp_path, MIRRORQ_BROKER_URL=server.url(0))
    http = httpx.Client(base_url=process.url, headers=AUTH, timeout=15)  # type: ignore[attr-defined]
    lab = seed_lab(emulator.url, 1)
    try:
        assert http.get("/readyz").status_code == 200
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            answers = Counter(http.get("/readyz").status_code for _ in range(5))
            assert answers == {503: 5}
            assert http.get("/healthz").status_code == 200
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert http.get("/readyz").status_code == 200
        assert http.post("/v1/jobs", json=job(lab, 0, DryRun=True)).status_code == 202
    finally:
        process.stop()
        server.stop()


# Issue 15: tokens files, keys through every door, partial request heads ----------------------

REAL_TOKEN = "real-token-7c1d2e9f0a3b"  # noqa: S105 - the test's own


def test_a_tokens_file_s_comments_and_blank_lines_are_not_tokens(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Found in review: `Authorization: Bearer # mirrorq API tokens, one a line` was let in."""
    comment = "# mirrorq API tokens, one a line"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{comment}\n\n   \n{REAL_TOKEN}   \n# another comment\n")
    process = start_api(env, tmp_path, MIRRORQ_API_TOKENS_FILE=str(tokens))
    try:
        url = f"{process.url}/v1/jobs/some-id"  # type: ignore[attr-defined]
        for given in (comment, "#", "another comment", "# another comment"):
            answer = httpx.get(url, headers={"Authorization": f"Bearer {given}"})
            assert answer.status_code == 401, given
        assert httpx.get(url, headers={"Authorization": f"Bearer {REAL_TOKEN}"}).status_code == 404
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("lines", "bad_line", "token"),
    [
        (["# tokens", REAL_TOKEN, "short-7c1d"], 3, "short-7c1d"),
        (["# tokens", "", "spaced-7c1d 2e9f0a3b5e6d", REAL_TOKEN], 3, "spaced-7c1d 2e9f0a3b5e6d"),
        ([REAL_TOKEN, "tab-1f2e\t7c1d2e9f0a3b"], 2, "tab-1f2e\t7c1d2e9f0a3b"),
    ],
    ids=["too-short", "a-space", "a-tab"],
)
def test_a_bad_token_in_the_file_stops_the_api_naming_file_line_and_rule(
    env: dict[str, str], tmp_path: Path, lines: list[str], bad_line: int, token: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [*MIRRORQ, "api", "--port", str(free_port())],
        env={**env, "MIRRORQ_API_TOKENS_FILE": str(tokens)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert f"{tokens}, line {bad_line}" in output
    assert "at least 16 characters" in output  # the rule, as the README names it
    for part in (token, *token.split()):
        assert part not in output, "the token was echoed"


@pytest.mark.parametrize("tokens", [f"{REAL_TOKEN},short-7c1d", f"{REAL_TOKEN}, a b c d e f g h i"])
def test_a_bad_token_in_the_variable_stops_the_api_the_same_way(
    env: dict[str, str], tokens: str
) -> None:
    run = subprocess.run(
        [*MIRRORQ, "api", "--port", str(free_port())],
        env={**env, "MIRRORQ_API_TOKENS": tokens},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "MIRRORQ_API_TOKENS, token 2" in output
    assert "at least 16 characters" in output
    bad = tokens.split(",")[1].strip()
    assert bad not in output
    assert REAL_TOKEN not in output


def test_an_idempotency_key_names_one_job_whichever_door_it_came_through(
    api: Api, emulator: EmulatorProcess, producer: Producer, env: dict[str, str]
) -> None:
    """Found in review: header bytes were read as Latin-1, so `ключ-1` over HTTP was another
    key than in Python, and 200 "é" (400 bytes) was too long over HTTP only."""
    lab = seed_lab(emulator.url, 3)
    for n, key in enumerate(("ключ-1", "é" * 200, "鍵-🔑")):
        request = job(lab, n, DryRun=True)
        answer = api.http.post(
            "/v1/jobs", json=request, headers=[(b"Idempotency-Key", key.encode())]
        )
        assert answer.status_code == 202, answer.text
        over_http = answer.json()["job_id"]
        assert producer.submit(request, idempotency_key=key) == over_http, key
        cli = subprocess.run(
            [*MIRRORQ, "submit", json.dumps(request), "--idempotency-key", key],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cli.stdout.strip() == over_http, cli.stderr
    too_long = "é" * 257
    answer = api.http.post(
        "/v1/jobs", json=job(lab, 0), headers=[(b"Idempotency-Key", too_long.encode())]
    )
    assert answer.status_code == 422
    assert [f["field"] for f in answer.json()["error"]["fields"]] == ["Idempotency-Key"]
    with pytest.raises(InvalidJobError) as refused:
        producer.submit(job(lab, 0), idempotency_key=too_long)
    assert refused.value.errors[0]["field"] == "idempotency_key"
    assert answer.json()["error"]["fields"][0]["message"] == refused.value.errors[0]["message"]


def test_an_idempotency_key_that_is_not_utf8_is_refused_naming_the_header(
    api: Api, emulator: EmulatorProcess
) -> None:
    lab = seed_lab(emulator.url, 1)
    for raw in (b"\xff\xfe-key", "ключ".encode("cp1251"), b"caf\xe9"):
        answer = api.http.post("/v1/jobs", json=job(lab, 0), headers=[(b"Idempotency-Key", raw)])
        assert answer.status_code == 422, raw
        error = answer.json()["error"]
        assert error["code"] == "InvalidJob"
        assert error["fields"][0]["field"] == "Idempotency-Key"
        assert "UTF-8" in error["fields"][0]["message"]
    assert api.http.get("/v1/jobs/some-id").status_code == 404  # nothing was accepted, API up


def test_the_openapi_document_says_how_an_idempotency_key_is_read(api: Api) -> None:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    (header,) = [
        p for p in schema["paths"]["/v1/jobs"]["post"]["parameters"] if p["in"] == "header"
    ]
    assert header["name"] == "Idempotency-Key"
    assert "UTF-8" in header["description"]
    assert "256 characters" in header["description"]


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection (rather than the read timing out)."""
    sock.settimeout(30)  # a bound far above the API's setting, so only a missing one fails
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_a_request_head_not_sent_in_time_is_closed_and_nothing_else_is(
    api_env: dict[str, str], tmp_path: Path, emulator: EmulatorProcess
) -> None:
    """Found in review: partial request heads were never timed out (uvicorn has no such
    bound); MIRRORQ_API_HEADER_TIMEOUT_S bounds them, and only them."""
    process = start_api(api_env, tmp_path, MIRRORQ_API_HEADER_TIMEOUT_S="1")
    port = int(process.url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    lab = seed_lab(emulator.url, 1)
    try:
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Slow: ")
        silent = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
        reused = socket.create_connection(("127.0.0.1", port))
        reused.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
        assert reused.recv(65536).startswith(b"HTTP/1.1 200")
        reused.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")  # a second head, partial
        with partial, silent, reused:
            assert _closed_by_server(partial)
            assert _closed_by_server(silent)
            assert _closed_by_server(reused)
        # A request whose head is in is not cut, however long its answer takes (no worker
        # runs, so ?wait=3 waits its 3 s and answers 202).
        http = httpx.Client(base_url=process.url, headers=AUTH, timeout=30)  # type: ignore[attr-defined]
        slow = http.post("/v1/jobs", params={"wait": 3}, json=job(lab, 0, DryRun=True))
        assert slow.status_code == 202
        assert http.get("/healthz").status_code == 200
    finally:
        process.stop()


def test_a_connection_answered_before_its_body_is_read_is_not_held_by_trickling_it(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    """Found in review: a request the API answers without reading its body (no token: 401; or
    a GET with a Content-Length) leaves the connection waiting for that body, under no
    deadline: a client that trickles a byte every second holds it for as long as it likes,
    with no token, around the head deadline ("after its previous answer" the next head is
    due within MIRRORQ_API_HEADER_TIMEOUT_S)."""
    process = start_api(api_env, tmp_path, MIRRORQ_API_HEADER_TIMEOUT_S="1")
    port = int(process.url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    heads = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: api\r\nContent-Length: 100000\r\n\r\n",  # no token
        b"GET /healthz HTTP/1.1\r\nHost: api\r\nContent-Length: 100000\r\n\r\n",
    )
    try:
        for head in heads:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head)
                sock.settimeout(10)
                assert sock.recv(65536).startswith(b"HTTP/1.1 ")  # answered at once
                sock.settimeout(1)
                closed, deadline = False, time.monotonic() + 30  # far above 1 s + keep-alive 5 s
                while not closed and time.monotonic() < deadline:
                    try:
                        sock.sendall(b"x")  # one byte of the unread body, every second
                        closed = sock.recv(65536) == b""
                    except TimeoutError:
                        continue
                    except OSError:  # reset, broken pipe: the server closed it
                        closed = True
                assert closed, f"held for 30 s by a trickled body after {head.split()[:2]}"
    finally:
        process.stop()


def test_a_tokens_file_written_with_a_byte_order_mark_reads_as_without_one(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Found in review: a tokens file saved as "UTF-8 with BOM" (Notepad, PowerShell 5's
    `Set-Content -Encoding utf8`) starts with U+FEFF, so its first line, a `#` comment, was
    read as a token and the API refused to start ("line 1: not an API token")."""
    tokens = tmp_path / "tokens"
    tokens.write_bytes(
        b"\xef\xbb\xbf# mirrorq API tokens, one a line\r\n" + REAL_TOKEN.encode() + b"\r\n"
    )
    process = start_api(env, tmp_path, MIRRORQ_API_TOKENS_FILE=str(tokens))
    try:
        url = f"{process.url}/v1/jobs/some-id"  # type: ignore[attr-defined]
        assert httpx.get(url, headers={"Authorization": f"Bearer {REAL_TOKEN}"}).status_code == 404
        comment = "\ufeff# mirrorq API tokens, one a line".encode()
        answer = httpx.get(url, headers=[(b"Authorization", b"Bearer " + comment)])
        assert answer.status_code == 401
    finally:
        process.stop()
