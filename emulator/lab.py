"""A ready-made Traffic Mirroring lab in the emulator: VPC, subnets, instances, ENIs, targets."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import boto3
from aiobotocore.config import AioConfig
from aiobotocore.session import ClientCreatorContext, get_session
from botocore.config import Config

if TYPE_CHECKING:  # stubs only: a development dependency
    from types_aiobotocore_ec2 import EC2Client

LAB_CIDR = "10.0.0.0/16"
SUBNET_COUNT = 4
# moto launches any AMI id; listing its 1,300 real ones would cost more than the whole lab.
LAB_IMAGE_ID = "ami-0a1b2c3d4e5f60718"
EXTRA_ENI_EVERY = 5  # every 5th instance gets a second ENI, as multi-homed hosts do
LAB_NLB_NAME = "mirrorq-lab"
# Lab credentials are not secrets: the emulator accepts any.
LAB_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def lab_client(endpoint_url: str, region: str = "us-east-1", service: str = "ec2") -> Any:
    """A plain boto3 client (EC2 unless `service` says) for the emulator, botocore retries off."""
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"total_max_attempts": 1}),
        aws_access_key_id=LAB_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=LAB_CREDENTIALS["aws_secret_access_key"],
    )


def sessions(endpoint_url: str, region: str = "us-east-1") -> list[dict[str, Any]]:
    """Every Traffic Mirror session that exists there, every page."""
    pages = lab_client(endpoint_url, region).get_paginator("describe_traffic_mirror_sessions")
    return [s for page in pages.paginate() for s in page["TrafficMirrorSessions"]]


def lab_sqs_client(endpoint_url: str, region: str = "us-east-1") -> Any:
    """The same for the emulator's SQS (botocore's read timeout, 60 s, outlasts a 20 s poll)."""
    return lab_client(endpoint_url, region, "sqs")


TAG_VARIANTS = 6  # Env x Role combinations


def create_gwlb_endpoint(
    endpoint_url: str, vpc_id: str, subnet_ids: list[str], name: str, region: str = "us-east-1"
) -> str:
    """A Gateway Load Balancer, its endpoint service and a GatewayLoadBalancer endpoint in
    `vpc_id`, made in moto through the emulator: the endpoint's id (`vpce-…`), what a
    gateway-load-balancer-endpoint traffic mirror target names."""
    ec2, elbv2 = lab_client(endpoint_url, region), lab_client(endpoint_url, region, "elbv2")
    gwlb = elbv2.create_load_balancer(Name=name, Subnets=subnet_ids[:1], Type="gateway")
    service = ec2.create_vpc_endpoint_service_configuration(
        GatewayLoadBalancerArns=[gwlb["LoadBalancers"][0]["LoadBalancerArn"]]
    )
    endpoint = ec2.create_vpc_endpoint(
        VpcEndpointType="GatewayLoadBalancer",
        VpcId=vpc_id,
        ServiceName=service["ServiceConfiguration"]["ServiceName"],
        SubnetIds=subnet_ids[:1],
    )
    return str(endpoint["VpcEndpoint"]["VpcEndpointId"])


def create_nlb(elbv2: Any, name: str, subnet_ids: list[str]) -> str:
    """A Network Load Balancer (internal) in these subnets, made in moto's elbv2 through the
    emulator, as a sensor fleet's front: its ARN (`.../loadbalancer/net/NAME/...`)."""
    created = elbv2.create_load_balancer(
        Name=name, Subnets=subnet_ids, Type="network", Scheme="internal"
    )
    arn: str = created["LoadBalancers"][0]["LoadBalancerArn"]
    return arn


def aio_lab_client(
    endpoint_url: str,
    *,
    concurrency: int = 10,
    retries: dict[str, Any] | None = None,
    region: str = "us-east-1",
) -> ClientCreatorContext[EC2Client]:
    """The same for aiobotocore (`async with`): botocore retries off unless `retries` says."""
    return get_session().create_client(
        "ec2",
        endpoint_url=endpoint_url,
        region_name=region,
        config=AioConfig(
            retries=retries or {"total_max_attempts": 1}, max_pool_connections=concurrency
        ),
        aws_access_key_id=LAB_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=LAB_CREDENTIALS["aws_secret_access_key"],
    )


def eni_tags(i: int) -> list[dict[str, str]]:
    return [
        {"Key": "Env", "Value": "prod" if i % 2 == 0 else "staging"},
        {"Key": "Role", "Value": ("web", "db", "cache")[i % 3]},
        {"Key": "mirrorq-lab", "Value": "1"},
    ]


def launch_across(ec2: Any, subnet_ids: list[str], count: int) -> list[dict[str, Any]]:
    """`count` instances spread evenly over the subnets, one RunInstances a subnet."""
    instances: list[dict[str, Any]] = []
    for i, subnet_id in enumerate(subnet_ids):
        n = count // len(subnet_ids) + (1 if i < count % len(subnet_ids) else 0)
        if n:
            instances += ec2.run_instances(
                ImageId=LAB_IMAGE_ID,
                MinCount=n,
                MaxCount=n,
                SubnetId=subnet_id,
                InstanceType="c5.large",
            )["Instances"]
    return instances


def tag_variants(ec2: Any, eni_ids: list[str]) -> None:
    """Every ENI tagged with one of the TAG_VARIANTS Env x Role combinations, in turn."""
    for variant in range(TAG_VARIANTS):
        tagged = eni_ids[variant::TAG_VARIANTS]
        for chunk in range(0, len(tagged), 500):
            ec2.create_tags(Resources=tagged[chunk : chunk + 500], Tags=eni_tags(variant))


def seed_lab(endpoint_url: str, enis: int, region: str = "us-east-1") -> dict[str, Any]:
    """Create a lab with exactly `enis` source ENIs attached to instances; return its ids."""
    if enis < 1:
        raise ValueError("a lab needs at least one ENI")
    ec2 = lab_client(endpoint_url, region)
    vpc_id = ec2.create_vpc(CidrBlock=LAB_CIDR)["Vpc"]["VpcId"]
    azs = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    subnet_ids = [
        ec2.create_subnet(
            VpcId=vpc_id, CidrBlock=f"10.0.{16 * i}.0/20", AvailabilityZone=azs[i % len(azs)]
        )["Subnet"]["SubnetId"]
        for i in range(SUBNET_COUNT)
    ]

    # k instances with one primary ENI each, plus one extra ENI on every 5th: k + ceil(k/5) >= n.
    instances = math.ceil(enis * EXTRA_ENI_EVERY / (EXTRA_ENI_EVERY + 1))
    extras = enis - instances
    launched = launch_across(ec2, subnet_ids, instances)
    instance_ids = [i["InstanceId"] for i in launched]
    # Each instance's ENI and subnet as RunInstances answered them (describing every instance
    # again cost the emulator about as much as launching them).
    eni_ids = [eni["NetworkInterfaceId"] for i in launched for eni in i["NetworkInterfaces"]]
    subnet_of = {i["InstanceId"]: i["SubnetId"] for i in launched}
    for instance_id in instance_ids[::EXTRA_ENI_EVERY][:extras]:
        eni_id = ec2.create_network_interface(SubnetId=subnet_of[instance_id])["NetworkInterface"][
            "NetworkInterfaceId"
        ]
        ec2.attach_network_interface(
            NetworkInterfaceId=eni_id, InstanceId=instance_id, DeviceIndex=1
        )
        eni_ids.append(eni_id)
    tag_variants(ec2, eni_ids)

    sensor = ec2.run_instances(
        ImageId=LAB_IMAGE_ID,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet_ids[0],
        InstanceType="c5.large",
    )["Instances"][0]
    sensor_eni = sensor["NetworkInterfaces"][0]["NetworkInterfaceId"]
    eni_target = ec2.create_traffic_mirror_target(
        NetworkInterfaceId=sensor_eni, Description="mirrorq lab sensor"
    )["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
    nlb_arn = create_nlb(lab_client(endpoint_url, region, "elbv2"), LAB_NLB_NAME, subnet_ids)
    nlb_target = ec2.create_traffic_mirror_target(
        NetworkLoadBalancerArn=nlb_arn, Description="mirrorq lab NLB"
    )["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
    filter_id = ec2.create_traffic_mirror_filter(Description="mirrorq lab: all traffic")[
        "TrafficMirrorFilter"
    ]["TrafficMirrorFilterId"]
    return {
        "region": region,
        "vpc_id": vpc_id,
        "subnet_ids": subnet_ids,
        "instance_ids": instance_ids,
        "eni_ids": eni_ids,
        "sensor_eni_id": sensor_eni,
        "target_ids": {"eni": eni_target, "nlb": nlb_target},
        "nlb_arn": nlb_arn,
        "filter_id": filter_id,
    }
