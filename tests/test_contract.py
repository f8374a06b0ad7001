"""The job contract: the seed's constraints, with errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.app import create_app
from tasks.contract import (
    IDEMPOTENCY_KEY_MAX,
    JobKind,
    client_token,
    idempotency_key,
    parse_envelope,
    parse_job_entry,
    parse_request,
)
from tasks.errors import InvalidJobError

VALID = {
    "NetworkInterfaceId": "eni-0123456789abcdef0",
    "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
    "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
    "SessionNumber": 1,
}


def fields_of(raw: Any) -> set[str]:
    with pytest.raises(InvalidJobError) as raised:
        parse_request(raw)
    return {e["field"] for e in raised.value.errors}


def test_every_parameter_of_the_seed_is_accepted() -> None:
    full = {
        **VALID,
        "PacketLength": 8500,
        "VirtualNetworkId": 2**24 - 1,
        "Description": "d",
        "TagSpecifications": [
            {
                "ResourceType": "traffic-mirror-session",
                "Tags": [{"Key": "k" * 127, "Value": "v" * 256}],
            }
        ],
        "DryRun": False,
        "ClientToken": "t" * 64,
    }
    assert parse_request(full).to_kwargs() == full


def test_unset_optionals_are_left_out_of_the_call() -> None:
    assert parse_request(VALID).to_kwargs() == VALID


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"SessionNumber": 0}, "SessionNumber"),
        ({"SessionNumber": 32767}, "SessionNumber"),
        ({"SessionNumber": 1.5}, "SessionNumber"),
        ({"PacketLength": 8501}, "PacketLength"),
        ({"PacketLength": 0}, "PacketLength"),
        ({"VirtualNetworkId": 2**24}, "VirtualNetworkId"),
        ({"VirtualNetworkId": -1}, "VirtualNetworkId"),
        ({"ClientToken": "x" * 65}, "ClientToken"),
        ({"ClientToken": "jöb"}, "ClientToken"),
        ({"DryRun": "maybe"}, "DryRun"),
        ({"NetworkInterfaceId": "i-0123456789abcdef0"}, "NetworkInterfaceId"),
        ({"TrafficMirrorTargetId": "tmf-0123456789abcdef0"}, "TrafficMirrorTargetId"),
        ({"Surprise": 1}, "Surprise"),
        (
            {"TagSpecifications": [{"ResourceType": "instance", "Tags": []}]},
            "TagSpecifications.0.ResourceType",
        ),
        (
            {
                "TagSpecifications": [
                    {
                        "ResourceType": "traffic-mirror-session",
                        "Tags": [{"Key": "aws:x", "Value": ""}],
                    }
                ]
            },
            "TagSpecifications.0.Tags.0.Key",
        ),
        (
            {
                "TagSpecifications": [
                    {"ResourceType": "traffic-mirror-session", "Tags": [{"Key": "k" * 128}]}
                ]
            },
            "TagSpecifications.0.Tags.0.Key",
        ),
        (
            {
                "TagSpecifications": [
                    {
                        "ResourceType": "traffic-mirror-session",
                        "Tags": [{"Key": "k", "Value": "v" * 257}],
                    }
                ]
            },
            "TagSpecifications.0.Tags.0.Value",
        ),
        (
            {
                "TagSpecifications": [
                    {
                        "ResourceType": "traffic-mirror-session",
                        "Tags": [{"Key": f"k{i}"} for i in range(51)],
                    }
                ]
            },
            "TagSpecifications.0.Tags",
        ),
    ],
)
def test_out_of_contract_values_name_their_field(change: dict[str, Any], field: str) -> None:
    assert field in fields_of({**VALID, **change})


def test_missing_required_fields_are_all_named() -> None:
    assert fields_of({"SessionNumber": 1}) == {
        "NetworkInterfaceId",
        "TrafficMirrorTargetId",
        "TrafficMirrorFilterId",
    }


@pytest.mark.parametrize("raw", ["{nope", "[1, 2]", 42, None])
def test_a_job_must_be_a_json_object(raw: Any) -> None:
    assert fields_of(raw) == {"(job)"}


def test_json_text_is_accepted() -> None:
    import json

    assert parse_request(json.dumps(VALID)).SessionNumber == 1


@pytest.mark.parametrize("job_id", ["j" * 65, "jöb", ""])
def test_a_job_id_that_becomes_the_client_token_must_be_one(job_id: str) -> None:
    with pytest.raises(InvalidJobError) as raised:
        client_token(parse_request(VALID), job_id)
    assert [e["field"] for e in raised.value.errors] == ["job_id"]
    assert "ClientToken" in raised.value.errors[0]["message"]


def test_a_request_that_carries_its_token_keeps_it_whatever_its_job_id() -> None:
    assert client_token(parse_request({**VALID, "ClientToken": "t"}), "j" * 65) == "t"
    assert client_token(parse_request(VALID), "j" * 64) == "j" * 64


@pytest.mark.parametrize(
    ("concurrency", "per_message", "threads"), [(64, 8, 8), (64, 1, 64), (10, 8, 2), (4, 8, 1)]
)
def test_worker_threads_hold_concurrency_jobs_between_them(
    concurrency: int, per_message: int, threads: int
) -> None:
    from config import Settings

    settings = Settings(concurrency=concurrency, jobs_per_message=per_message)
    assert settings.worker_threads == threads
    assert create_app(settings).conf.worker_concurrency == threads


@pytest.mark.parametrize("key", ["k", "ключ-1", "é" * IDEMPOTENCY_KEY_MAX, "鍵 🔑 deploy 4711"])
def test_an_idempotency_key_is_counted_in_characters_not_bytes(key: str) -> None:
    assert idempotency_key(key) == key


@pytest.mark.parametrize(
    "key",
    ["", " ", " k", "k ", "k\tk", "k\nk", "\x00", "k\udcff", "é" * (IDEMPOTENCY_KEY_MAX + 1)],
    ids=["empty", "blank", "leading", "trailing", "tab", "newline", "nul", "surrogate", "long"],
)
def test_an_idempotency_key_http_could_not_carry_is_refused_naming_its_field(key: str) -> None:
    with pytest.raises(InvalidJobError) as raised:
        idempotency_key(key, "Idempotency-Key")
    assert [e["field"] for e in raised.value.errors] == ["Idempotency-Key"]


def test_the_regions_are_read_once_however_many_threads_ask_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by profiling a worker: each of a worker's threads validating its first message
    read botocore's EC2 model itself (a cache filled by whoever finishes first), so 50
    messages arriving at start cost 50 reads of a large gzipped JSON, seconds of CPU that
    starved every job."""
    import threading

    import botocore.regions

    from tasks import contract

    reads = []
    real = botocore.regions.EndpointResolver.get_available_endpoints

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(botocore.regions.EndpointResolver, "get_available_endpoints", counted)
    contract.ec2_regions.cache_clear()
    contract._read_regions.cache_clear()
    contract._endpoints.cache_clear()
    start = threading.Barrier(16)

    def validate() -> None:
        start.wait()
        contract.parse_placement(region="eu-west-1")

    threads = [threading.Thread(target=validate) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(reads) == 1


# Delete and modify jobs (issue 18): EC2's own request syntax for each, as strictly checked.

SESSION = "tms-0123456789abcdef0"


def kind_errors(raw: Any, kind: str) -> dict[str, str]:
    with pytest.raises(InvalidJobError) as raised:
        parse_request(raw, kind)
    return {e["field"]: e["message"] for e in raised.value.errors}


def test_delete_and_modify_take_their_actions_syntax_and_no_client_token() -> None:
    delete = parse_request({"TrafficMirrorSessionId": SESSION, "DryRun": True}, JobKind.DELETE)
    assert delete.kind is JobKind.DELETE
    assert delete.to_kwargs() == {"TrafficMirrorSessionId": SESSION, "DryRun": True}
    full = {
        "TrafficMirrorSessionId": SESSION,
        "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
        "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
        "SessionNumber": 32766,
        "Description": "d" * 255,
        "RemoveFields": ["packet-length", "virtual-network-id"],
    }
    assert parse_request(full, "modify").to_kwargs() == full
    assert JobKind.MODIFY.action == "ModifyTrafficMirrorSession"
    assert JobKind.DELETE.task_name == "mirrorq.delete_traffic_mirror_session"


def test_every_bad_field_of_a_delete_or_a_modify_is_named() -> None:
    assert set(
        kind_errors(
            {"TrafficMirrorSessionId": "tmt-0123456789abcdef0", "DryRun": "yes", "X": 1},
            "delete",
        )
    ) == {"TrafficMirrorSessionId", "DryRun", "X"}
    assert kind_errors({"TrafficMirrorSessionId": SESSION, "ClientToken": "t"}, "delete") == {
        "ClientToken": "not a parameter of DeleteTrafficMirrorSession"
    }
    # mirrorq's own field of a delete is named as EC2's are (it was reported as "(job)").
    assert set(
        kind_errors({"TrafficMirrorSessionId": SESSION, "missing_ok": "true"}, "delete")
    ) == {"missing_ok"}
    bad = kind_errors(
        {
            "TrafficMirrorSessionId": SESSION,
            "SessionNumber": "auto",
            "PacketLength": 8501,
            "VirtualNetworkId": True,
            "TrafficMirrorFilterId": "tmt-0123456789abcdef0",
            "RemoveFields": ["bogus"],
            "NetworkInterfaceId": "eni-0123456789abcdef0",
        },
        "modify",
    )
    assert set(bad) == {
        "SessionNumber",
        "PacketLength",
        "VirtualNetworkId",
        "TrafficMirrorFilterId",
        "RemoveFields.0",
        "NetworkInterfaceId",
    }


def test_a_modify_changes_something_and_never_sets_and_removes_one_field() -> None:
    assert set(kind_errors({"TrafficMirrorSessionId": SESSION, "DryRun": False}, "modify")) == {
        "(job)"
    }
    assert set(
        kind_errors(
            {
                "TrafficMirrorSessionId": SESSION,
                "Description": "x",
                "RemoveFields": ["description"],
            },
            "modify",
        )
    ) == {"Description"}
    assert set(
        kind_errors(
            {"TrafficMirrorSessionId": SESSION, "RemoveFields": ["description", "description"]},
            "modify",
        )
    ) == {"RemoveFields.1"}
    assert kind_errors({"TrafficMirrorSessionId": SESSION}, "unmirror") == {
        "kind": "one of create, delete, modify"
    }


def test_a_jobs_envelope_names_its_kind_and_its_sessions_eni() -> None:
    job = parse_job_entry(
        {
            "kind": "delete",
            "request": {"TrafficMirrorSessionId": SESSION},
            "network_interface_id": "eni-0123456789abcdef0",
            "region": "eu-west-1",
        }
    )
    assert (job.kind, job.network_interface_id) == (JobKind.DELETE, "eni-0123456789abcdef0")
    assert parse_job_entry(VALID).kind is JobKind.CREATE  # no kind: a create, as always
    with pytest.raises(InvalidJobError) as raised:
        parse_job_entry({"kind": "create", "request": VALID, "network_interface_id": "eni-1"})
    assert {e["field"] for e in raised.value.errors} == {"network_interface_id"}
    with pytest.raises(InvalidJobError) as raised:
        parse_job_entry({"kind": "delete", "request": {}, "network_interface_id": "x"})
    assert {e["field"] for e in raised.value.errors} == {
        "TrafficMirrorSessionId",
        "network_interface_id",
    }
    # A single-job task carries its own kind: an envelope saying another is refused.
    assert parse_envelope((), {"request": {}}, JobKind.DELETE).kind is JobKind.DELETE
    with pytest.raises(InvalidJobError) as raised:
        parse_envelope((), {"request": {}, "kind": "delete"}, JobKind.MODIFY)
    assert [e["field"] for e in raised.value.errors] == ["kind"]
