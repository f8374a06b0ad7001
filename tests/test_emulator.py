"""The emulator, driven over real HTTP by boto3 and aiobotocore, behaves as EC2 documents."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError

from emulator.lab import aio_lab_client, seed_lab
from mirrorq.processes import EmulatorProcess

Lab = dict[str, Any]


@pytest.fixture
def lab(emulator: EmulatorProcess) -> Lab:
    return seed_lab(emulator.url, 6)


def session_args(lab: Lab, eni: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "NetworkInterfaceId": lab["eni_ids"][eni],
        "TrafficMirrorTargetId": lab["target_ids"]["eni"],
        "TrafficMirrorFilterId": lab["filter_id"],
        "SessionNumber": 1,
        **extra,
    }


def error_of(call: Any, **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def sessions(ec2: Any, **filters: str) -> list[dict[str, Any]]:
    flt = [{"Name": k.replace("_", "-"), "Values": [v]} for k, v in filters.items()]
    pages = ec2.get_paginator("describe_traffic_mirror_sessions").paginate(Filters=flt)
    return [s for page in pages for s in page["TrafficMirrorSessions"]]


# ClientToken idempotency ---------------------------------------------------------------


def test_same_token_same_parameters_returns_the_original_session(ec2: Any, lab: Lab) -> None:
    first = ec2.create_traffic_mirror_session(**session_args(lab, ClientToken="job-1"))
    again = ec2.create_traffic_mirror_session(**session_args(lab, ClientToken="job-1"))
    assert again["TrafficMirrorSession"] == first["TrafficMirrorSession"]
    assert again["ClientToken"] == "job-1"
    assert len(sessions(ec2)) == 1


def test_same_token_different_parameters_is_a_mismatch(ec2: Any, lab: Lab) -> None:
    ec2.create_traffic_mirror_session(**session_args(lab, ClientToken="job-1"))
    code, status = error_of(
        ec2.create_traffic_mirror_session,
        **session_args(lab, ClientToken="job-1", PacketLength=100),
    )
    assert (code, status) == ("IdempotentParameterMismatch", 400)
    assert len(sessions(ec2)) == 1


def test_token_over_64_characters_is_refused(ec2: Any, lab: Lab) -> None:
    code, _ = error_of(ec2.create_traffic_mirror_session, **session_args(lab, ClientToken="x" * 65))
    assert code == "InvalidParameterValue"
    ec2.create_traffic_mirror_session(**session_args(lab, ClientToken="x" * 64))


def test_targets_and_filters_are_idempotent_too(ec2: Any, lab: Lab) -> None:
    a = ec2.create_traffic_mirror_filter(Description="f", ClientToken="filter-1")
    b = ec2.create_traffic_mirror_filter(Description="f", ClientToken="filter-1")
    assert (
        a["TrafficMirrorFilter"]["TrafficMirrorFilterId"]
        == b["TrafficMirrorFilter"]["TrafficMirrorFilterId"]
    )
    code, _ = error_of(ec2.create_traffic_mirror_filter, Description="g", ClientToken="filter-1")
    assert code == "IdempotentParameterMismatch"


# Validation with EC2's codes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"NetworkInterfaceId": "eni-0123456789abcdef0"}, "InvalidNetworkInterfaceID.NotFound"),
        ({"TrafficMirrorTargetId": "tmt-0123456789abcdef0"}, "InvalidTrafficMirrorTargetNoFound"),
        ({"TrafficMirrorFilterId": "tmf-0123456789abcdef0"}, "InvalidTrafficMirrorFilterNotFound"),
        ({"SessionNumber": 0}, "InvalidParameterValue"),
        ({"SessionNumber": 32767}, "InvalidParameterValue"),
        ({"PacketLength": 0}, "InvalidParameterValue"),
        ({"PacketLength": 8501}, "InvalidParameterValue"),
        ({"VirtualNetworkId": 2**24}, "InvalidParameterValue"),
        (
            {
                "TagSpecifications": [
                    {"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}
                ]
            },
            "InvalidParameterValue",
        ),
        (
            {
                "TagSpecifications": [
                    {
                        "ResourceType": "traffic-mirror-session",
                        "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(51)],
                    }
                ]
            },
            "TagLimitExceeded",
        ),
        (
            {
                "TagSpecifications": [
                    {
                        "ResourceType": "traffic-mirror-session",
                        "Tags": [{"Key": "aws:owner", "Value": "v"}],
                    }
                ]
            },
            "InvalidParameterValue",
        ),
        (
            {
                "TagSpecifications": [
                    {
                        "ResourceType": "traffic-mirror-session",
                        "Tags": [{"Key": "k" * 128, "Value": "v"}],
                    }
                ]
            },
            "InvalidParameterValue",
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
            "InvalidParameterValue",
        ),
    ],
)
def test_invalid_requests_get_ec2s_error_codes(
    ec2: Any, lab: Lab, override: dict[str, Any], code: str
) -> None:
    assert error_of(ec2.create_traffic_mirror_session, **session_args(lab, **override)) == (
        code,
        400,
    )
    assert sessions(ec2) == []


def test_boundary_values_are_accepted(ec2: Any, lab: Lab) -> None:
    tags = [{"Key": "k" * 127, "Value": "v" * 256}] + [
        {"Key": f"t{i}", "Value": ""} for i in range(49)
    ]
    created = ec2.create_traffic_mirror_session(
        **session_args(
            lab,
            SessionNumber=32766,
            PacketLength=8500,
            VirtualNetworkId=2**24 - 1,
            TagSpecifications=[{"ResourceType": "traffic-mirror-session", "Tags": tags}],
        )
    )["TrafficMirrorSession"]
    assert (created["SessionNumber"], created["PacketLength"], created["VirtualNetworkId"]) == (
        32766,
        8500,
        2**24 - 1,
    )
    assert len(created["Tags"]) == 50


def test_virtual_network_id_is_chosen_when_absent(ec2: Any, lab: Lab) -> None:
    vnis = {
        ec2.create_traffic_mirror_session(**session_args(lab, eni=i))["TrafficMirrorSession"][
            "VirtualNetworkId"
        ]
        for i in range(4)
    }
    assert len(vnis) == 4
    assert all(0 < v < 2**24 for v in vnis)


def test_three_sessions_per_interface_then_limit(ec2: Any, lab: Lab) -> None:
    for number in (1, 2, 3):
        ec2.create_traffic_mirror_session(**session_args(lab, SessionNumber=number))
    code, status = error_of(ec2.create_traffic_mirror_session, **session_args(lab, SessionNumber=4))
    assert (code, status) == ("TrafficMirrorSessionsPerInterfaceLimitExceeded", 400)
    assert len(sessions(ec2, network_interface_id=lab["eni_ids"][0])) == 3


def test_session_number_in_use_on_the_interface_is_refused(ec2: Any, lab: Lab) -> None:
    ec2.create_traffic_mirror_session(**session_args(lab, SessionNumber=5))
    code, _ = error_of(
        ec2.create_traffic_mirror_session,
        **session_args(lab, SessionNumber=5, TrafficMirrorTargetId=lab["target_ids"]["nlb"]),
    )
    assert code == "InvalidParameterValue"
    # The same number on another interface is fine.
    ec2.create_traffic_mirror_session(**session_args(lab, eni=1, SessionNumber=5))


def test_a_mirror_target_interface_cannot_be_a_source(ec2: Any, lab: Lab) -> None:
    code, _ = error_of(
        ec2.create_traffic_mirror_session,
        **session_args(lab, NetworkInterfaceId=lab["sensor_eni_id"]),
    )
    assert code == "InvalidParameterValue"


# DryRun -----------------------------------------------------------------------------------


def test_dry_run_answers_dry_run_operation_and_creates_nothing(ec2: Any, lab: Lab) -> None:
    assert error_of(ec2.create_traffic_mirror_session, **session_args(lab, DryRun=True)) == (
        "DryRunOperation",
        412,
    )
    assert sessions(ec2) == []


def test_dry_run_of_a_bad_request_gets_the_real_error(ec2: Any, lab: Lab) -> None:
    code, _ = error_of(
        ec2.create_traffic_mirror_session,
        **session_args(lab, DryRun=True, NetworkInterfaceId="eni-0000000000000000f"),
    )
    assert code == "InvalidNetworkInterfaceID.NotFound"


# Throttling and faults ------------------------------------------------------------------


def test_throttling_answers_request_limit_exceeded_with_503(
    emulator: EmulatorProcess, ec2: Any, lab: Lab
) -> None:
    emulator.set_faults(throttle_rate=0.5, throttle_burst=3)
    for eni in range(3):
        ec2.create_traffic_mirror_session(**session_args(lab, eni=eni))
    assert error_of(ec2.create_traffic_mirror_session, **session_args(lab, eni=3)) == (
        "RequestLimitExceeded",
        503,
    )
    # Describe calls are never throttled: they are how tests count what exists.
    for _ in range(10):
        ec2.describe_traffic_mirror_sessions()
    calls = emulator.stats()["CreateTrafficMirrorSession"]
    assert calls == {"ok": 3, "RequestLimitExceeded": 1}


def test_injected_5xx_creates_nothing(emulator: EmulatorProcess, ec2: Any, lab: Lab) -> None:
    emulator.set_faults(error_rate=1.0)
    codes = {error_of(ec2.create_traffic_mirror_session, **session_args(lab)) for _ in range(12)}
    assert codes == {("InternalError", 500), ("Unavailable", 503)}
    assert sessions(ec2) == []


def test_dropped_response_still_creates_the_session(
    emulator: EmulatorProcess, ec2: Any, lab: Lab
) -> None:
    emulator.set_faults(drop_rate=1.0)
    with pytest.raises(ConnectionClosedError):
        ec2.create_traffic_mirror_session(**session_args(lab, ClientToken="dropped-1"))
    assert len(sessions(ec2)) == 1
    assert emulator.stats()["CreateTrafficMirrorSession"] == {"dropped": 1}


def test_latency_is_added_to_creates(emulator: EmulatorProcess, ec2: Any, lab: Lab) -> None:
    import time

    emulator.set_faults(latency_ms=300)
    started = time.monotonic()
    ec2.create_traffic_mirror_session(**session_args(lab))
    assert time.monotonic() - started >= 0.3


def test_faults_can_be_read_and_bad_settings_are_refused(emulator: EmulatorProcess) -> None:
    assert emulator.set_faults(drop_rate=0.25)["drop_rate"] == 0.25
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as raised:
        emulator.set_faults(drop_rate=2)
    assert raised.value.code == 400
    with pytest.raises(urllib.error.HTTPError):
        emulator.set_faults(explode=1)


# Why the product must fix the ClientToken ------------------------------------------------


def send_until_answered(ec2: Any, args: dict[str, Any], sends: int) -> list[Any]:
    """The same create sent `sends` times, as a naive retry loop would; returns each outcome."""
    outcomes: list[Any] = []
    for _ in range(sends):
        try:
            outcomes.append(ec2.create_traffic_mirror_session(**args)["TrafficMirrorSession"])
        except ConnectionClosedError as lost:
            outcomes.append(lost)
        except ClientError as refused:
            outcomes.append(refused.response["Error"]["Code"])
    return outcomes


def test_fixed_token_under_drops_yields_exactly_one_session(
    emulator: EmulatorProcess, ec2: Any, lab: Lab
) -> None:
    emulator.set_faults(drop_rate=0.5)
    outcomes = send_until_answered(ec2, session_args(lab, ClientToken="job-42"), 50)
    answered = [o for o in outcomes if isinstance(o, dict)]
    assert len(sessions(ec2)) == 1
    assert {o["TrafficMirrorSessionId"] for o in answered} == {
        sessions(ec2)[0]["TrafficMirrorSessionId"]
    }
    stats = emulator.stats()["CreateTrafficMirrorSession"]
    assert stats["dropped"] > 0
    assert stats["dropped"] + stats.get("replayed", 0) + stats.get("ok", 0) == 50


def test_without_a_fixed_token_dropped_responses_turn_into_duplicates(
    emulator: EmulatorProcess, ec2: Any, lab: Lab
) -> None:
    """botocore invents a token per call, so every resend is a new request to EC2.

    A resend of the identical request is refused (its SessionNumber is taken), so the caller
    believes it failed although the session exists; a caller that resends with the next free
    SessionNumber (as the usual Lambdas do) mirrors the same ENI to the same target twice.
    """
    emulator.set_faults(drop_rate=0.5)
    same = send_until_answered(ec2, session_args(lab), 50)
    assert "InvalidParameterValue" in same  # a success reported to the caller as a failure

    for eni in range(1, 6):
        for number in range(1, 50):
            try:
                ec2.create_traffic_mirror_session(
                    **session_args(lab, eni=eni, SessionNumber=number)
                )
                break
            except ConnectionClosedError:
                continue
            except ClientError:
                break
    per_eni = [len(sessions(ec2, network_interface_id=lab["eni_ids"][e])) for e in range(1, 6)]
    assert max(per_eni) > 1, per_eni


def test_aiobotocore_reaches_the_emulator_with_fixed_tokens(
    emulator: EmulatorProcess, lab: Lab
) -> None:
    emulator.set_faults(drop_rate=0.5)

    async def run() -> int:
        async with aio_lab_client(emulator.url) as client:

            async def one(eni: int) -> None:
                args = session_args(lab, eni=eni, ClientToken=f"job-{eni}")
                for _ in range(50):
                    try:
                        await client.create_traffic_mirror_session(**args)
                        return
                    except (ConnectionClosedError, Exception) as error:  # aiohttp's own errors too
                        if isinstance(error, ClientError):
                            raise

            await asyncio.gather(*(one(e) for e in range(6)))
            pages = client.get_paginator("describe_traffic_mirror_sessions").paginate()
            return sum([len(p["TrafficMirrorSessions"]) async for p in pages])

    assert asyncio.run(run()) == 6


# Describe calls stay correct -------------------------------------------------------------


def test_describe_network_interfaces_paginates_and_filters(emulator: EmulatorProcess) -> None:
    from emulator.lab import lab_client

    lab = seed_lab(emulator.url, 40)
    ec2 = lab_client(emulator.url)
    first = ec2.describe_network_interfaces(MaxResults=10)
    assert len(first["NetworkInterfaces"]) == 10
    assert first["NextToken"]
    pages = ec2.get_paginator("describe_network_interfaces").paginate(
        Filters=[{"Name": "vpc-id", "Values": [lab["vpc_id"]]}], PaginationConfig={"PageSize": 7}
    )
    ids = [e["NetworkInterfaceId"] for p in pages for e in p["NetworkInterfaces"]]
    assert sorted(ids) == sorted([*lab["eni_ids"], lab["sensor_eni_id"]])
    tagged = ec2.describe_network_interfaces(Filters=[{"Name": "tag:Env", "Values": ["prod"]}])
    assert 0 < len(tagged["NetworkInterfaces"]) < 40


def test_describe_sessions_paginates(ec2: Any, lab: Lab) -> None:
    for eni in range(6):
        for number in (1, 2):
            ec2.create_traffic_mirror_session(**session_args(lab, eni=eni, SessionNumber=number))
    page = ec2.describe_traffic_mirror_sessions(MaxResults=5)
    assert len(page["TrafficMirrorSessions"]) == 5
    assert page["NextToken"]
    assert len(sessions(ec2)) == 12
    assert len(sessions(ec2, session_number="2")) == 6


def test_stats_count_calls_per_action_and_outcome(
    emulator: EmulatorProcess, ec2: Any, lab: Lab
) -> None:
    ec2.create_traffic_mirror_session(**session_args(lab, ClientToken="t"))
    ec2.create_traffic_mirror_session(**session_args(lab, ClientToken="t"))
    error_of(ec2.create_traffic_mirror_session, **session_args(lab, eni=1, SessionNumber=0))
    assert emulator.stats()["CreateTrafficMirrorSession"] == {
        "ok": 1,
        "replayed": 1,
        "InvalidParameterValue": 1,
    }


# Deleting and modifying sessions (issue 18) -----------------------------------------------


def test_delete_and_modify_answer_as_ec2_with_the_same_faults(
    emulator: EmulatorProcess, ec2: Any, lab: Lab
) -> None:
    mine = ec2.create_traffic_mirror_session(**session_args(lab, PacketLength=100, Description="d"))
    sid = mine["TrafficMirrorSession"]["TrafficMirrorSessionId"]
    other = ec2.create_traffic_mirror_session(
        **session_args(lab, TrafficMirrorTargetId=lab["target_ids"]["nlb"], SessionNumber=2)
    )["TrafficMirrorSession"]
    unknown = "tms-0123456789abcdef0"
    for call, kwargs, code in (
        (ec2.delete_traffic_mirror_session, {"TrafficMirrorSessionId": unknown}, None),
        (
            ec2.modify_traffic_mirror_session,
            {"TrafficMirrorSessionId": unknown, "SessionNumber": 5},
            None,
        ),
        (
            ec2.modify_traffic_mirror_session,
            {"TrafficMirrorSessionId": sid, "SessionNumber": 2},
            "InvalidParameterValue",
        ),
        (
            ec2.modify_traffic_mirror_session,
            {"TrafficMirrorSessionId": sid, "PacketLength": 8501},
            "InvalidParameterValue",
        ),
        (
            ec2.modify_traffic_mirror_session,
            {"TrafficMirrorSessionId": sid, "TrafficMirrorTargetId": "tmt-0123456789abcdef0"},
            "InvalidTrafficMirrorTargetNoFound",
        ),
        (
            ec2.modify_traffic_mirror_session,
            {"TrafficMirrorSessionId": sid, "TrafficMirrorFilterId": "tmf-0123456789abcdef0"},
            "InvalidTrafficMirrorFilterNotFound",
        ),
        (
            ec2.modify_traffic_mirror_session,
            {"TrafficMirrorSessionId": sid, "Description": "x", "DryRun": True},
            "DryRunOperation",
        ),
        (
            ec2.delete_traffic_mirror_session,
            {"TrafficMirrorSessionId": sid, "DryRun": True},
            "DryRunOperation",
        ),
    ):
        assert error_of(call, **kwargs)[0] == (code or "InvalidTrafficMirrorSessionId.NotFound")
    # RemoveFields sets each back to its default; the rest as asked; its own number is fine.
    modified = ec2.modify_traffic_mirror_session(
        TrafficMirrorSessionId=sid,
        SessionNumber=1,
        RemoveFields=["packet-length", "description"],
        TrafficMirrorTargetId=lab["target_ids"]["nlb"],
    )["TrafficMirrorSession"]
    assert "PacketLength" not in modified
    assert "Description" not in modified
    assert modified["TrafficMirrorTargetId"] == lab["target_ids"]["nlb"]
    assert {s["TrafficMirrorSessionId"] for s in sessions(ec2)} == {
        sid,
        other["TrafficMirrorSessionId"],
    }
    # A dropped delete did its work: the retry meets NotFound.
    emulator.set_faults(drop_rate=1.0)
    with pytest.raises(ConnectionClosedError):
        ec2.delete_traffic_mirror_session(TrafficMirrorSessionId=sid)
    emulator.set_faults(drop_rate=0.0)
    assert error_of(ec2.delete_traffic_mirror_session, TrafficMirrorSessionId=sid)[0] == (
        "InvalidTrafficMirrorSessionId.NotFound"
    )
    assert emulator.stats()["DeleteTrafficMirrorSession"]["dropped"] == 1
    assert [s["TrafficMirrorSessionId"] for s in sessions(ec2)] == [other["TrafficMirrorSessionId"]]
