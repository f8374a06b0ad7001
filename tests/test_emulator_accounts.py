"""The emulator per account and Region, over real HTTP with credentials from its own STS:
ClientToken records, limits, buckets and faults kept apart; AssumeRole's durations, chains,
ExternalId and refusals; expired credentials refused and refreshed; targets shared as RAM
shares them; and a create path that scans no session."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError
from botocore.session import get_session

from emulator.org_lab import (
    SECURITY_ACCOUNT,
    account_client,
    assume,
    control,
    role_arn,
    seed_org_lab,
    share_sensor_eni,
    workload_account,
)
from mirrorq.processes import EmulatorProcess

A, B = workload_account(0), workload_account(1)
EAST, WEST = "us-east-1", "eu-west-1"
Creds = dict[str, Any]


def client(url: str, creds: Creds, region: str = EAST, service: str = "ec2") -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=url,
        region_name=region,
        config=Config(retries={"total_max_attempts": 1}, parameter_validation=False),
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def code_of(call: Any, **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def org(emulator: EmulatorProcess) -> dict[str, Any]:
    return seed_org_lab(emulator.url, accounts=2, regions=(EAST, WEST), enis=12)


def session_args(org: dict[str, Any], account: str, region: str = EAST, eni: int = 0) -> Any:
    mine = org["accounts"][account]["regions"][region]
    return {
        "NetworkInterfaceId": mine["eni_ids"][eni],
        "TrafficMirrorTargetId": org["security"]["regions"][region]["target_ids"][0],
        "TrafficMirrorFilterId": mine["filter_id"],
        "SessionNumber": 1,
    }


def wait_until_expired(url: str, creds: Creds, deadline_s: float = 30) -> None:
    """Poll (an STS call, never throttled) until the emulator calls these credentials expired."""
    sts = client(url, creds, service="sts")
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            sts.get_caller_identity()
        except ClientError as error:
            code = error.response["Error"]["Code"]
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the credentials never expired")
    assert code == "ExpiredToken"


# STS -----------------------------------------------------------------------------------


def test_assumed_credentials_act_in_the_roles_account(emulator: EmulatorProcess) -> None:
    creds = assume(emulator.url, A)
    identity = client(emulator.url, creds, service="sts").get_caller_identity()
    assert identity["Account"] == A
    assert identity["Arn"].startswith(f"arn:aws:sts::{A}:assumed-role/mirrorq/")
    vpcs = client(emulator.url, creds).describe_vpcs()["Vpcs"]
    assert [v["OwnerId"] for v in vpcs] == [A]  # its own default VPC, none of another's


def test_duration_bounds_and_the_chained_one_hour_cap(emulator: EmulatorProcess) -> None:
    assert code_of(assume, endpoint_url=emulator.url, account=A, duration=899) == (
        "ValidationError",
        400,
    )
    control(emulator.url, "sts", {"min_duration_seconds": 1})
    assert assume(emulator.url, A, duration=5)["AccessKeyId"]
    # Beyond the role's maximum session duration (AWS's default, one hour).
    assert code_of(assume, endpoint_url=emulator.url, account=A, duration=3601)[0] == (
        "ValidationError"
    )
    control(emulator.url, "roles", {"role_arn": role_arn(B), "max_session_duration": 43200})
    assert assume(emulator.url, B, duration=7200)["AccessKeyId"]
    # Chained: A's assumed-role credentials assume B; AWS caps that session at one hour.
    first = assume(emulator.url, A)
    chained = assume(emulator.url, B, credentials=first, duration=3600)
    identity = client(emulator.url, chained, service="sts").get_caller_identity()
    assert identity["Account"] == B
    with pytest.raises(ClientError) as raised:
        assume(emulator.url, B, credentials=first, duration=3601)
    assert "role chaining" in raised.value.response["Error"]["Message"]


def test_external_id_and_roles_not_assumable(emulator: EmulatorProcess) -> None:
    control(emulator.url, "roles", {"role_arn": role_arn(A), "external_id": "org-7f3a"})
    control(emulator.url, "roles", {"role_arn": role_arn(B), "assumable": False})
    assert code_of(assume, endpoint_url=emulator.url, account=A) == ("AccessDenied", 403)
    assert code_of(assume, endpoint_url=emulator.url, account=A, external_id="wrong-id") == (
        "AccessDenied",
        403,
    )
    assert assume(emulator.url, A, external_id="org-7f3a")["AccessKeyId"]
    assert code_of(assume, endpoint_url=emulator.url, account=B) == ("AccessDenied", 403)
    assert code_of(assume, endpoint_url=emulator.url, account=A, external_id="x")[0] == (
        "ValidationError"  # under STS's 2 characters
    )
    calls = emulator.stats()["AssumeRole"]
    assert calls == {"ok": 1, "AccessDenied": 3, "ValidationError": 1}


def test_expired_credentials_are_refused_as_aws_refuses_them(emulator: EmulatorProcess) -> None:
    control(emulator.url, "sts", {"min_duration_seconds": 1})
    creds = assume(emulator.url, A, duration=2)
    client(emulator.url, creds).describe_vpcs()
    wait_until_expired(emulator.url, creds)
    assert code_of(client(emulator.url, creds).describe_vpcs) == ("RequestExpired", 400)
    assert code_of(client(emulator.url, creds, service="sqs").list_queues) == (
        "ExpiredToken",
        403,
    )
    assert code_of(assume, endpoint_url=emulator.url, account=B, credentials=creds) == (
        "ExpiredToken",
        403,
    )
    fresh = assume(emulator.url, A, duration=2)
    assert client(emulator.url, fresh).describe_vpcs()["Vpcs"][0]["OwnerId"] == A


def test_elbv2_refuses_expired_credentials_in_its_own_error_shape(
    emulator: EmulatorProcess,
) -> None:
    """Elastic Load Balancing v2 answers a call signed with an expired set `ExpiredToken`
    (403) in its Query API's `ErrorResponse` (not EC2's `Response/Errors`), as STS does."""
    control(emulator.url, "sts", {"min_duration_seconds": 1})
    creds = assume(emulator.url, A, duration=2)
    elbv2 = client(emulator.url, creds, service="elbv2")
    bodies: list[bytes] = []
    elbv2.meta.events.register(
        "before-parse.elastic-load-balancing-v2",
        lambda response_dict, **_: bodies.append(response_dict["body"]),
    )
    assert elbv2.describe_load_balancers()["LoadBalancers"] == []
    wait_until_expired(emulator.url, creds)
    assert code_of(elbv2.describe_load_balancers) == ("ExpiredToken", 403)
    refused = bodies[-1]
    assert refused.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns=')
    assert b'xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"' in refused
    assert b"<Type>Sender</Type><Code>ExpiredToken</Code>" in refused
    fresh = client(emulator.url, assume(emulator.url, A, duration=2), service="elbv2")
    assert fresh.describe_load_balancers()["LoadBalancers"] == []
    assert emulator.stats()["DescribeLoadBalancers"] == {"ok": 2, "ExpiredToken": 1}


def test_botocore_refreshes_credentials_the_lifetime_cuts_short(emulator: EmulatorProcess) -> None:
    """With `lifetime_seconds`, a client asking AWS's 900 s gets 2 s: botocore's own refresh
    machinery reads the short Expiration and assumes the role again, call after call."""
    control(emulator.url, "sts", {"lifetime_seconds": 2})
    assumed = 0

    def refresh() -> dict[str, str]:
        nonlocal assumed
        assumed += 1
        creds = assume(emulator.url, A, duration=900)
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    session = get_session()
    session._credentials = RefreshableCredentials.create_from_metadata(  # type: ignore[attr-defined]
        refresh(), refresh, "assume-role"
    )
    ec2 = boto3.Session(botocore_session=session).client(
        "ec2", endpoint_url=emulator.url, region_name=EAST
    )
    started = time.monotonic()
    while assumed < 4:  # lived through at least three expiries
        assert ec2.describe_vpcs()["Vpcs"][0]["OwnerId"] == A
        assert time.monotonic() - started < 60, "credentials were never refreshed"
        time.sleep(0.2)
    assert "RequestExpired" not in emulator.stats()["DescribeVpcs"]


# Per account and Region ---------------------------------------------------------------


def test_client_tokens_and_limits_are_per_account(
    emulator: EmulatorProcess, org: dict[str, Any]
) -> None:
    a = client(emulator.url, assume(emulator.url, A))
    b = client(emulator.url, assume(emulator.url, B))
    first = a.create_traffic_mirror_session(**session_args(org, A), ClientToken="job-1")
    # The same token in another account is another request, even with other parameters.
    other = b.create_traffic_mirror_session(**session_args(org, B, eni=3), ClientToken="job-1")
    assert other["TrafficMirrorSession"]["OwnerId"] == B
    assert (
        other["TrafficMirrorSession"]["TrafficMirrorSessionId"]
        != first["TrafficMirrorSession"]["TrafficMirrorSessionId"]
    )
    again = a.create_traffic_mirror_session(**session_args(org, A), ClientToken="job-1")
    assert again["TrafficMirrorSession"] == first["TrafficMirrorSession"]
    # And in another Region of the same account.
    west = client(emulator.url, assume(emulator.url, A), region=WEST)
    west.create_traffic_mirror_session(**session_args(org, A, region=WEST), ClientToken="job-1")
    # An ENI is its account's: another account cannot name it.
    assert code_of(b.create_traffic_mirror_session, **session_args(org, A, eni=1))[0] == (
        "InvalidNetworkInterfaceID.NotFound"
    )
    assert emulator.stats()["CreateTrafficMirrorSession"] == {
        "ok": 3,
        "replayed": 1,
        "InvalidNetworkInterfaceID.NotFound": 1,
    }


def test_throttle_buckets_are_per_account_region_and_action(emulator: EmulatorProcess) -> None:
    emulator.set_faults(throttle_rate=0.01, throttle_burst=2)
    clients = {
        (account, region): client(emulator.url, assume(emulator.url, account), region)
        for account in (A, B)
        for region in (EAST, WEST)
    }
    for ec2 in clients.values():
        for _ in range(2):
            ec2.create_traffic_mirror_filter()
        assert code_of(ec2.create_traffic_mirror_filter) == ("RequestLimitExceeded", 503)
        ec2.create_traffic_mirror_target(NetworkLoadBalancerArn="arn:aws:x")  # its own bucket
    scopes = control(emulator.url, "stats")["scopes"]
    for account, region in clients:
        filters = scopes[f"{account}/{region}"]["CreateTrafficMirrorFilter"]
        assert filters == {"ok": 2, "RequestLimitExceeded": 1}


def test_a_fault_plan_scoped_to_one_account_leaves_the_others_alone(
    emulator: EmulatorProcess, org: dict[str, Any]
) -> None:
    control(emulator.url, "faults", {"account": A, "error_rate": 1.0})
    control(
        emulator.url,
        "faults",
        {"account": B, "region": WEST, "throttle_rate": 0.01, "throttle_burst": 1},
    )
    assert control(emulator.url, f"faults?account={A}&region={EAST}")["error_rate"] == 1.0
    a = client(emulator.url, assume(emulator.url, A))
    b = client(emulator.url, assume(emulator.url, B))
    b_west = client(emulator.url, assume(emulator.url, B), region=WEST)
    assert code_of(a.create_traffic_mirror_session, **session_args(org, A))[0] in (
        "InternalError",
        "Unavailable",
    )
    b.create_traffic_mirror_session(**session_args(org, B))
    b.create_traffic_mirror_session(**session_args(org, B, eni=1))
    b_west.create_traffic_mirror_session(**session_args(org, B, region=WEST))
    assert code_of(b_west.create_traffic_mirror_session, **session_args(org, B, WEST, 1))[0] == (
        "RequestLimitExceeded"
    )
    assert len(control(emulator.url, "faults/scopes")["scopes"]) == 2


# Sharing --------------------------------------------------------------------------------


def test_a_shared_target_is_visible_and_usable_in_its_region_only(
    emulator: EmulatorProcess, org: dict[str, Any]
) -> None:
    target = org["security"]["regions"][EAST]["target_ids"][0]
    b = client(emulator.url, assume(emulator.url, B))
    seen = b.describe_traffic_mirror_targets()["TrafficMirrorTargets"]
    assert [(t["TrafficMirrorTargetId"], t["OwnerId"]) for t in seen] == [
        (target, SECURITY_ACCOUNT)
    ]
    made = b.create_traffic_mirror_session(**session_args(org, B))["TrafficMirrorSession"]
    assert made["OwnerId"] == B
    # A target is Regional: the east target is not B's in the west.
    b_west = client(emulator.url, assume(emulator.url, B), region=WEST)
    west_args = {**session_args(org, B, region=WEST), "TrafficMirrorTargetId": target}
    assert code_of(b_west.create_traffic_mirror_session, **west_args)[0] == (
        "InvalidTrafficMirrorTargetNoFound"
    )
    # Filters are not shared: another account's filter does not exist for B.
    a_filter = org["accounts"][A]["regions"][EAST]["filter_id"]
    foreign = {**session_args(org, B, eni=1), "TrafficMirrorFilterId": a_filter}
    assert code_of(b.create_traffic_mirror_session, **foreign)[0] == (
        "InvalidTrafficMirrorFilterNotFound"
    )
    # The owner sees the sessions other accounts made on its target.
    owner = account_client(emulator.url, SECURITY_ACCOUNT, EAST)
    listed = owner.describe_traffic_mirror_sessions()["TrafficMirrorSessions"]
    assert [s["TrafficMirrorSessionId"] for s in listed] == [made["TrafficMirrorSessionId"]]
    # Unshared: gone from B's view, and unusable for new sessions.
    control(emulator.url, "unshare-target", {"target_id": target, "region": EAST, "accounts": [B]})
    assert b.describe_traffic_mirror_targets()["TrafficMirrorTargets"] == []
    assert code_of(b.create_traffic_mirror_session, **session_args(org, B, eni=2))[0] == (
        "InvalidTrafficMirrorTargetNoFound"
    )


def test_sources_per_target_count_every_account_on_a_shared_target(
    emulator: EmulatorProcess, org: dict[str, Any]
) -> None:
    """A sensor ENI of a small instance takes 10 sources, whichever accounts they are in."""
    target = share_sensor_eni(emulator.url, EAST, [A, B])
    a = client(emulator.url, assume(emulator.url, A))
    b = client(emulator.url, assume(emulator.url, B))
    for n in range(5):
        a.create_traffic_mirror_session(
            **{**session_args(org, A, eni=n), "TrafficMirrorTargetId": target}
        )
        b.create_traffic_mirror_session(
            **{**session_args(org, B, eni=n), "TrafficMirrorTargetId": target}
        )
    # A second session of a source already counted is fine; an 11th source is not.
    again = {**session_args(org, A, eni=0), "TrafficMirrorTargetId": target, "SessionNumber": 2}
    a.create_traffic_mirror_session(**again)
    eleventh = {**session_args(org, B, eni=5), "TrafficMirrorTargetId": target}
    assert code_of(b.create_traffic_mirror_session, **eleventh)[0] == (
        "TrafficMirrorSourcesPerTargetLimitExceeded"
    )


def test_share_requests_are_checked(emulator: EmulatorProcess, org: dict[str, Any]) -> None:
    import urllib.error

    target = org["security"]["regions"][EAST]["target_ids"][0]
    for bad in (
        {"target_id": target, "owner_account": A, "region": EAST, "accounts": [B]},  # not A's
        {"target_id": target, "owner_account": SECURITY_ACCOUNT, "region": WEST, "accounts": [B]},
        {
            "target_id": target,
            "owner_account": SECURITY_ACCOUNT,
            "region": EAST,
            "accounts": ["12"],
        },
        {"target_id": target, "region": EAST, "accounts": [B]},
    ):
        with pytest.raises(urllib.error.HTTPError) as raised:
            control(emulator.url, "share-target", bad)
        assert raised.value.code == 400
    shares = control(emulator.url, "shares")["shares"]
    assert [s["accounts"] for s in shares if s["target_id"] == target] == [sorted([A, B])]


def test_the_org_lab_puts_each_accounts_enis_in_its_account_and_region(
    emulator: EmulatorProcess, org: dict[str, Any]
) -> None:
    for account, details in org["accounts"].items():
        for region, ids in details["regions"].items():
            ec2 = account_client(emulator.url, account, region)
            found = {
                e["NetworkInterfaceId"]
                for e in ec2.describe_network_interfaces()["NetworkInterfaces"]
            }
            assert found == set(ids["eni_ids"])
            assert len(found) == 12
            tagged = ec2.describe_traffic_mirror_filters(
                Filters=[{"Name": "tag:mirrorq-filter", "Values": ["default"]}]
            )["TrafficMirrorFilters"]
            assert [f["TrafficMirrorFilterId"] for f in tagged] == [ids["filter_id"]]


# The create path's cost ----------------------------------------------------------------


def test_the_create_checks_scan_no_session() -> None:
    """Unit: with many sessions on a backend, validating one more iterates none of them. Run
    in a process of its own: the emulator's extensions patch moto for good, and this test
    process also serves plain moto (tests/test_moto_compat.py)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        extra, scans = pool.apply(_create_check_scans)
    assert "VirtualNetworkId" in extra
    assert scans == 0


def _create_check_scans() -> tuple[dict[str, Any], int]:
    from moto.ec2.models import ec2_backends

    from emulator import moto_ext
    from emulator.mirroring import TrafficMirroring

    moto_ext.install()
    backend = ec2_backends["444444444444"][EAST]
    subnet = next(iter(backend.subnets[f"{EAST}a"].values()))
    enis = [backend.create_network_interface(subnet, []) for _ in range(60)]
    target = backend.create_traffic_mirror_target(None, "arn:aws:nlb", None, None, None, None)
    flt = backend.create_traffic_mirror_filter(None, None, None)
    for n, eni in enumerate(enis[:50]):
        for number in (1, 2):
            backend.create_traffic_mirror_session(
                eni.id, target.id, flt.id, number, None, n * 2 + number, None, None, None
            )

    scans = 0
    sessions_class = type(backend.traffic_mirror_sessions)

    class Counting(sessions_class):  # type: ignore[valid-type, misc]
        def values(self) -> Any:
            nonlocal scans
            scans += 1
            return super().values()

        def __iter__(self) -> Any:
            nonlocal scans
            scans += 1
            return super().__iter__()

        def items(self) -> Any:
            nonlocal scans
            scans += 1
            return super().items()

    counting = Counting()
    counting.update(dict.items(backend.traffic_mirror_sessions))
    backend.traffic_mirror_sessions = counting
    scans = 0
    params = {
        "NetworkInterfaceId": enis[55].id,
        "TrafficMirrorTargetId": target.id,
        "TrafficMirrorFilterId": flt.id,
        "SessionNumber": "1",
    }
    extra = TrafficMirroring().check("CreateTrafficMirrorSession", backend, params)
    return dict(extra), scans
