"""An AWS Organizations lab in the emulator: workload accounts in several Regions, each with
its ENIs and its own filter, and a security account whose sensors (NLB targets) are shared
with every workload account, as RAM shares them (docs/emulator.md, "The organisation lab").

The lab is set-up, not traffic: it is built with moto's `X-Moto-Account-Id` header, never
with STS credentials, so no credential lifetime the lab configures can cut it short. The
roles it names (`arn:aws:iam::ACCOUNT:role/mirrorq`) can be assumed by anyone, as every role
in the emulator can, unless the lab says otherwise (`POST /_mirrorq/roles`).
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from typing import Any

import boto3
from botocore.config import Config

from emulator.lab import LAB_CREDENTIALS, LAB_IMAGE_ID, create_nlb, launch_across, tag_variants

SECURITY_ACCOUNT = "999999999999"
ROLE_NAME = "mirrorq"
DEFAULT_REGIONS = ("us-east-1", "eu-west-1")
FILTER_TAG = {"Key": "mirrorq-filter", "Value": "default"}
OrgLab = dict[str, Any]


def workload_account(n: int) -> str:
    """The n-th workload account (from 0): 111111111111, 222222222222, ... then 100000000010..."""
    return str(111_111_111_111 * (n + 1)) if n < 9 else f"{100_000_000_000 + n:012d}"


def role_arn(account: str) -> str:
    return f"arn:aws:iam::{account}:role/{ROLE_NAME}"


def account_client(
    endpoint_url: str, account: str, region: str = "us-east-1", service: str = "ec2"
) -> Any:
    """A boto3 client that acts in `account` through moto's account header (set-up only)."""
    client = boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"total_max_attempts": 1}),
        **LAB_CREDENTIALS,
    )

    def _in_account(request: Any, **_: Any) -> None:
        request.headers["X-Moto-Account-Id"] = account

    client.meta.events.register("before-sign", _in_account)
    return client


def assume(
    endpoint_url: str,
    account: str,
    *,
    duration: int | None = None,
    external_id: str | None = None,
    credentials: dict[str, str] | None = None,
) -> dict[str, Any]:
    """STS credentials for the account's lab role, from the lab's own (or `credentials`).

    botocore's parameter validation is off on this client, so a `duration` under AWS's
    900 s reaches the emulator (which takes it down to its `min_duration_seconds`).
    """
    given = credentials or {
        "AccessKeyId": LAB_CREDENTIALS["aws_access_key_id"],
        "SecretAccessKey": LAB_CREDENTIALS["aws_secret_access_key"],
    }
    sts = boto3.client(
        "sts",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}, parameter_validation=False),
        aws_access_key_id=given["AccessKeyId"],
        aws_secret_access_key=given["SecretAccessKey"],
        aws_session_token=given.get("SessionToken"),
    )
    args: dict[str, Any] = {"RoleArn": role_arn(account), "RoleSessionName": "mirrorq-lab"}
    if duration is not None:
        args["DurationSeconds"] = duration
    if external_id is not None:
        args["ExternalId"] = external_id
    creds: dict[str, Any] = sts.assume_role(**args)["Credentials"]
    return creds


def control(endpoint_url: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """One call to the emulator's control endpoints (`/_mirrorq/...`), its JSON answer."""
    url = f"{endpoint_url}/_mirrorq/{path}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the emulator is reached over HTTP, not {endpoint_url!r}")
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")  # noqa: S310 - checked above
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.load(response)


def seed_org_lab(
    endpoint_url: str,
    accounts: int = 3,
    regions: tuple[str, ...] = DEFAULT_REGIONS,
    enis: int = 200,
    sensors: int = 1,
    security_account: str = SECURITY_ACCOUNT,
) -> OrgLab:
    """`accounts` workload accounts x `regions`, `enis` source ENIs in each (on instances,
    tagged as the single-account lab tags them), one filter per account-Region (tagged
    `mirrorq-filter=default`), and `sensors` NLB targets per Region in the security account,
    each shared with every workload account there. Returns every id, by account and Region.
    """
    if accounts < 1 or enis < 1 or sensors < 1 or not regions:
        raise ValueError("an organisation lab needs accounts, Regions, ENIs and sensors")
    workloads = [workload_account(n) for n in range(accounts)]
    security: dict[str, Any] = {
        "account": security_account,
        "role_arn": role_arn(security_account),
        "regions": {},
    }
    for region in regions:
        ec2 = account_client(endpoint_url, security_account, region)
        elbv2 = account_client(endpoint_url, security_account, region, "elbv2")
        vpc_id = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.30.0.0/20")["Subnet"]["SubnetId"]
        targets = [
            ec2.create_traffic_mirror_target(
                NetworkLoadBalancerArn=create_nlb(elbv2, f"sensor-{n}", [subnet]),
                Description=f"sensor {n} ({region})",
            )["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
            for n in range(sensors)
        ]
        for target in targets:
            share_target(endpoint_url, target, region, workloads, security_account)
        security["regions"][region] = {"target_ids": targets}
    lab: OrgLab = {"security": security, "accounts": {}}
    for account in workloads:
        lab["accounts"][account] = {
            "role_arn": role_arn(account),
            "regions": {
                region: _seed_workload(endpoint_url, account, region, enis) for region in regions
            },
        }
    return lab


def share_target(
    endpoint_url: str, target_id: str, region: str, accounts: list[str], owner: str
) -> None:
    """Share `owner`'s target with `accounts` in `region`, as AWS RAM would (a control call)."""
    control(
        endpoint_url,
        "share-target",
        {"target_id": target_id, "owner_account": owner, "region": region, "accounts": accounts},
    )


def share_sensor_eni(
    endpoint_url: str,
    region: str,
    accounts: list[str],
    instance_type: str = "c5.large",
    security_account: str = SECURITY_ACCOUNT,
) -> str:
    """A sensor instance of `instance_type` in the security account, its ENI a traffic
    mirror target shared with `accounts` there: the target's id. Unlike an NLB, it takes
    sessions from a limited number of sources (10, or 100 on a family's largest size)
    whichever accounts they are in; the workload accounts cannot describe its ENI."""
    ec2 = account_client(endpoint_url, security_account, region)
    sensor = ec2.run_instances(
        ImageId=LAB_IMAGE_ID, MinCount=1, MaxCount=1, InstanceType=instance_type
    )
    eni = sensor["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
    target: str = ec2.create_traffic_mirror_target(
        NetworkInterfaceId=eni, Description=f"sensor ENI ({instance_type})"
    )["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
    share_target(endpoint_url, target, region, accounts, security_account)
    return target


def _seed_workload(endpoint_url: str, account: str, region: str, enis: int) -> dict[str, Any]:
    ec2 = account_client(endpoint_url, account, region)
    vpc_id = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:2]
    subnet_ids = [
        ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.20.{16 * i}.0/20", AvailabilityZone=zone)[
            "Subnet"
        ]["SubnetId"]
        for i, zone in enumerate(zones)
    ]
    eni_ids = [
        i["NetworkInterfaces"][0]["NetworkInterfaceId"]
        for i in launch_across(ec2, subnet_ids, enis)
    ]
    tag_variants(ec2, eni_ids)
    filter_id = ec2.create_traffic_mirror_filter(
        Description=f"mirrorq lab: all traffic ({account} {region})",
        TagSpecifications=[{"ResourceType": "traffic-mirror-filter", "Tags": [FILTER_TAG]}],
    )["TrafficMirrorFilter"]["TrafficMirrorFilterId"]
    return {
        "vpc_id": vpc_id,
        "subnet_ids": subnet_ids,
        "eni_ids": eni_ids,
        "filter_id": filter_id,
    }


def sessions_in(endpoint_url: str, account: str, region: str) -> Counter[str]:
    """How many sessions each ENI has, of those the account owns in the Region."""
    ec2 = account_client(endpoint_url, account, region)
    pages = ec2.get_paginator("describe_traffic_mirror_sessions").paginate()
    return Counter(
        s["NetworkInterfaceId"]
        for page in pages
        for s in page["TrafficMirrorSessions"]
        if s["OwnerId"] == account
    )
