"""The OpenAPI document is exact (issue 17): a schema-driven fuzzer (schemathesis) run against
the served /openapi.json of a real `mirrorq api` (real Redis, a real worker, the emulator),
started with and without a policy, finds no answer the document does not list, no answer
whose shape or media type it does not say, no request valid by the document that the API
refuses, and no request invalid by it that the API takes. The answers fuzzing cannot reach
(a job's record, a batch's status and results, an event that makes a job) are checked against
the document too, made for real."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks

from emulator.lab import lab_client
from emulator.zoned_lab import ZonedLab, policy_text, seed_zoned_lab
from mirrorq.jobfiles import parse_placed_jobs
from mirrorq.processes import ApiProcess, EmulatorProcess, WorkerProcess
from tests.api_process import AUTH, TOKENS, start_api
from tests.helpers import wait_until

CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.positive_data_acceptance,
    checks.negative_data_rejection,
    not_a_server_error,
]
# Stricter than schemathesis's defaults: valid data may meet an unknown id (404), a key used
# before (409), EC2's or Redis's answers and a missing policy (502, 503) or, without a token,
# 401; never a 500, which is a bug whether documented or not.
CHECKED: dict[str, Any] = {
    # Failures are reported with the values sent (the tests' own tokens are no secrets).
    "output": {"sanitization": {"enabled": False}},
    "checks": {
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "401", "404", "409", "502", "503"]
        },
        "not_a_server_error": {"expected-statuses": ["2xx", "4xx", "502", "503"]},
    },
}
# The document's bearer scheme with a token: sent with every request but those of negative
# cases that leave it out on purpose (which must get the documented 401).
WITH_A_TOKEN = {**CHECKED, "auth": {"openapi": {"bearer": {"bearer": TOKENS[1]}}}}
# Bounded: seconds an operation, the same examples every run.
FUZZ = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)
# Without a token every /v1 answer is the same 401: a few requests each show it is documented.
FEW = settings(FUZZ, max_examples=3)
# What a policy changes: the events it takes, its coverage, and readiness (its file's validity).
POLICY_DEPENDENT = {"POST /v1/events", "GET /v1/coverage", "GET /readyz"}


@schemathesis.serializer("application/x-ndjson")
def _json_lines(ctx: Any, value: Any) -> bytes:
    """The document's JSON Lines body: its array's items, one a line, in UTF-8 as JSON Lines
    are written (a value that is not an array, as negative cases make, is sent as the one line
    it is)."""
    items = value if isinstance(value, list) else [value]
    lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    return lines.encode("utf-8", "backslashreplace")  # a lone surrogate as JSON escapes it


@schemathesis.deserializer("application/x-ndjson")
def _read_json_lines(ctx: Any, response: Any) -> list[Any]:
    """A JSON Lines answer as the document says it: an array, one item a line."""
    return [json.loads(line) for line in response.content.decode().splitlines() if line]


@schemathesis.deserializer("text/csv")
def _read_csv(ctx: Any, response: Any) -> str:
    return str(response.content.decode())


def _integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


def _integers_as_integers(case: Any) -> Any:
    """JSON Schema cannot tell 7 from 7.0 (one number to it), and schemathesis writes some
    integers as 7.0 on purpose; the contract is strict and refuses 7.0 where EC2 takes an
    integer, which the document says in each such field's description (the one place it can).
    Bodies go with their integers written as integers; the refusal itself is checked apart
    (_integers_written_as_floats_are_refused_as_described)."""
    case.body = _integers(case.body)
    return case


@pytest.fixture
def api_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "MIRRORQ_API_TOKENS": ",".join(TOKENS)}


@pytest.fixture
def lab(emulator: EmulatorProcess) -> ZonedLab:
    return seed_zoned_lab(emulator.url)


@pytest.fixture(params=["without_policy", "with_policy"])
def served(
    request: pytest.FixtureRequest,
    api_env: dict[str, str],
    tmp_path: Path,
    lab: ZonedLab,
    start_worker: Callable[..., WorkerProcess],
) -> Iterator[ApiProcess]:
    """A real API, and a worker: a job accepted with `?wait=` ends (failed: the fuzzer's ENIs
    do not exist), so the 200 answer with its record is checked too."""
    args: list[str] = []
    if request.param == "with_policy":
        policy = tmp_path / "policy.toml"
        policy.write_text(policy_text(lab))
        args = ["--policy", str(policy)]
    process = start_api(api_env, tmp_path, *args)
    start_worker()
    yield process
    process.stop()


def _schema(url: str, config: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_url(
        f"{url}/openapi.json", config=schemathesis.Config.from_dict(config)
    )


def _said(failure: BaseException) -> str:
    """A failure in schemathesis's words: each check's, the answer, and a curl to reproduce."""
    if isinstance(failure, FailureGroup):
        return str(failure)
    return f"{type(failure).__name__}: {failure}"


def fuzz(
    url: str,
    config: dict[str, Any],
    modes: list[GenerationMode],
    budget: settings = FUZZ,
    only: set[str] | None = None,
) -> list[str]:
    """Every operation of the served document (or `only` those), in each mode, and with the
    positive mode the document's own examples: what the checks found."""
    schema = _schema(url, config)
    found: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if only is not None and operation.label not in only:
            continue
        raw = operation.definition.raw
        runs: list[tuple[str, Any]] = []
        for mode in modes:
            if mode is GenerationMode.NEGATIVE and not (
                raw.get("parameters") or raw.get("requestBody") or raw.get("security")
            ):
                continue  # nothing in the request to get wrong
            runs.append((mode.value, operation.as_strategy(generation_mode=mode)))
        examples = schema.get_strategies_from_examples(operation)
        if examples and GenerationMode.POSITIVE in modes:
            runs.append(("the document's examples", st.one_of(*examples)))
        for name, strategy in runs:

            @budget
            @given(case=strategy.map(_integers_as_integers))
            def run(case: Any) -> None:
                case.call_and_validate(base_url=url, checks=CHECKS, timeout=30)

            try:
                run()
            except (Exception, FailureGroup) as failure:  # the group is a BaseException
                found.append(f"{operation.label} ({name}):\n{_said(failure)}")
    return found


def test_the_document_lists_every_answer_and_every_constraint(
    served: ApiProcess, request: pytest.FixtureRequest, emulator: EmulatorProcess, lab: ZonedLab
) -> None:
    url = served.url  # type: ignore[attr-defined]
    with_policy = "with_policy" in request.node.callspec.id
    # The API without a policy differs only in what a policy changes.
    only = None if with_policy else POLICY_DEPENDENT
    both = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    found = fuzz(url, WITH_A_TOKEN, both, only=only)
    found += fuzz(url, CHECKED, [GenerationMode.POSITIVE], FEW, only=only)
    found += _made_answers_match_the_document(url, emulator, lab, with_policy=with_policy)
    found += _integers_written_as_floats_are_refused_as_described(url)
    assert not found, "\n\n".join(found)


def _validated(schema: Any, label: str, found: list[str], **case: Any) -> httpx.Response | None:
    """One request made for real, its answer checked against the document."""
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    try:
        response = operation.Case(**case).call_and_validate(
            headers=AUTH,
            checks=[c for c in CHECKS if c is not checks.negative_data_rejection],
            timeout=90,
        )
    except (Exception, FailureGroup) as failure:
        found.append(f"{label} {case}:\n{_said(failure)}")
        return None
    return httpx.Response(response.status_code, content=response.content)


def _made_answers_match_the_document(
    url: str, emulator: EmulatorProcess, lab: ZonedLab, *, with_policy: bool
) -> list[str]:
    """The answers random ids and ENIs never get: a job's record (created, in EC2), a batch's
    status and its results in both formats, an event that makes a job, or the 503 of an API
    without a policy; and the 401 with its WWW-Authenticate."""
    schema = _schema(url, WITH_A_TOKEN)
    found: list[str] = []
    eni = lab_client(emulator.url).create_network_interface(
        SubnetId=lab["subnets"][lab["zones"][0]],
        TagSpecifications=[
            {"ResourceType": "network-interface", "Tags": [{"Key": "Role", "Value": "db"}]}
        ],
    )["NetworkInterface"]["NetworkInterfaceId"]
    job = {
        "NetworkInterfaceId": eni,
        "TrafficMirrorTargetId": lab["nlb"],
        "TrafficMirrorFilterId": lab["f_db"],
        "SessionNumber": "auto",
    }
    record = _validated(schema, "POST /v1/jobs", found, body=job, query={"wait": 60})
    if record is not None and record.status_code == 200:
        assert record.json()["status"] == "created", record.text
        _validated(
            schema,
            "GET /v1/jobs/{job_id}",
            found,
            path_parameters={"job_id": record.json()["job_id"]},
        )
    jobs = [{**job, "DryRun": True}] * 2
    batch = _validated(
        schema, "POST /v1/batches", found, body=jobs, media_type="application/x-ndjson"
    )
    if batch is not None:
        batch_id = {"batch_id": batch.json()["batch_id"]}
        http = httpx.Client(base_url=url, headers=AUTH, timeout=60)
        wait_until(
            lambda: http.get(f"/v1/batches/{batch_id['batch_id']}").json()["finished_at"],
            what="the batch",
        )
        _validated(schema, "GET /v1/batches/{batch_id}", found, path_parameters=batch_id)
        for fmt in ("jsonl", "csv"):
            _validated(
                schema,
                "GET /v1/batches/{batch_id}/results",
                found,
                path_parameters=batch_id,
                query={"format": fmt},
            )
    event = {
        "id": "made-1",
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {
            "eventName": "AttachNetworkInterface",
            "requestParameters": {"networkInterfaceId": eni},
        },
    }
    answer = _validated(schema, "POST /v1/events", found, body=event)
    if answer is not None and with_policy:
        assert answer.status_code == 202, answer.text
    elif answer is not None:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "NoPolicy"
    ready = _validated(schema, "GET /readyz", found)
    if ready is not None:
        assert ("policy" in ready.json()) is with_policy, ready.text
    _validated(schema, "GET /metrics", found)
    refused = httpx.post(f"{url}/v1/events", json=event)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    return found


def _integers_written_as_floats_are_refused_as_described(url: str) -> list[str]:
    """What _integers_as_integers leaves out of fuzzing: 7.0 for an integer, refused naming
    the field, as the field's description says."""
    document = httpx.get(f"{url}/openapi.json").json()
    request = document["components"]["schemas"]["SessionRequest"]["properties"]
    job = {
        "NetworkInterfaceId": "eni-0123456789abcdef0",
        "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
        "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
        "SessionNumber": 1,
    }
    found = []
    for name in ("SessionNumber", "PacketLength", "VirtualNetworkId"):
        if "7.0" not in request[name].get("description", ""):
            found.append(f"{name}: its description does not say 7.0 is refused")
        answer = httpx.post(f"{url}/v1/jobs", headers=AUTH, json={**job, name: 7.0})
        fields = [f["field"] for f in answer.json()["error"]["fields"]]
        if (answer.status_code, fields) != (422, [name]):
            found.append(f"{name}: 7.0 answered {answer.status_code} {answer.text}")
    return found


# Any text, and the line breaks of Unicode that are not JSON Lines' often.
_TEXT = st.text(st.sampled_from("\x85\u2028\u2029") | st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(descriptions=st.lists(_TEXT, min_size=1, max_size=4))
def test_json_lines_are_split_at_line_feeds_only(descriptions: list[str]) -> None:
    """Found writing the document's JSON Lines body: lines were split wherever Python sees a
    line break, so a job whose Description held a U+2028, U+2029 or U+0085 written as itself
    (JSON's strings may, and JSON Lines is UTF-8) broke in two and the batch was refused."""
    jobs = [
        {
            "NetworkInterfaceId": "eni-0123456789abcdef0",
            "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
            "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
            "SessionNumber": 1,
            "Description": text,
        }
        for text in descriptions
    ]
    for end in ("\n", "\r\n"):
        body = "".join(json.dumps(j, ensure_ascii=False) + end for j in jobs)
        read = parse_placed_jobs(body, "jsonl", "the body")
        assert [r.to_kwargs()["Description"] for r in read.requests] == descriptions
