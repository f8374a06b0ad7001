"""A lab for policies and events: subnets in three zones, a sensor (ENI target) in two of them,
an NLB target and three filters; instances launched as a fleet grows; and what a two-rule
policy over them should mirror. The events demo, its benchmark and its tests share it."""

from __future__ import annotations

from typing import Any

from emulator.lab import LAB_IMAGE_ID, LAB_NLB_NAME, create_nlb, lab_client

ZonedLab = dict[str, Any]
Enis = dict[str, tuple[str, dict[str, str]]]  # ENI -> (zone, tags)
# The tags instances are launched with, in turn: some match a rule, some both, some none.
KINDS = ({"Env": "prod"}, {"Role": "db"}, {"Env": "prod", "Role": "db"}, {"Env": "dev"})


def seed_zoned_lab(endpoint_url: str, region: str = "us-east-1") -> ZonedLab:
    ec2 = lab_client(endpoint_url, region)
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:3]
    subnets = {
        zone: ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.7.{n}.0/24", AvailabilityZone=zone)[
            "Subnet"
        ]["SubnetId"]
        for n, zone in enumerate(zones)
    }
    sensors = {}
    for zone in zones[:2]:
        # The largest size of its family: its ENI takes 100 sources, not 10.
        sensor = ec2.run_instances(
            ImageId=LAB_IMAGE_ID,
            MinCount=1,
            MaxCount=1,
            SubnetId=subnets[zone],
            InstanceType="c5.24xlarge",
        )["Instances"][0]
        eni = sensor["NetworkInterfaces"][0]["NetworkInterfaceId"]
        target = ec2.create_traffic_mirror_target(NetworkInterfaceId=eni, Description=zone)
        sensors[zone] = target["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
    nlb_arn = create_nlb(
        lab_client(endpoint_url, region, "elbv2"), LAB_NLB_NAME, list(subnets.values())
    )
    nlb = ec2.create_traffic_mirror_target(NetworkLoadBalancerArn=nlb_arn)
    filters = [
        ec2.create_traffic_mirror_filter(Description=name)["TrafficMirrorFilter"][
            "TrafficMirrorFilterId"
        ]
        for name in ("web", "db", "own")
    ]
    return {
        "vpc_id": vpc,
        "zones": zones,
        "subnets": subnets,
        "sensors": sensors,
        "nlb": nlb["TrafficMirrorTarget"]["TrafficMirrorTargetId"],
        "nlb_arn": nlb_arn,
        "f_web": filters[0],
        "f_db": filters[1],
        "f_own": filters[2],
    }


def policy_text(lab: ZonedLab) -> str:
    """prod-web: Env=prod to the sensor in the ENI's zone; db: Role=db to the NLB."""
    a, b = (lab["sensors"][z] for z in lab["zones"][:2])
    return f"""\
[[rules]]
name = "prod-web"
tag = ["Env=prod"]
targets = ["{a}", "{b}"]
choose = "same-az"
filter = "{lab["f_web"]}"
description = "prod web"

[[rules]]
name = "db"
tag = ["Role=db"]
target = "{lab["nlb"]}"
filter = "{lab["f_db"]}"
packet_length = 128
"""


def launch_instance(endpoint_url: str, lab: ZonedLab, i: int, region: str = "us-east-1") -> Enis:
    """The `i`-th instance of the fleet: its zone and tags go in turn, and it has 1 to 3 ENIs
    (the extra ones created, then attached: each step an event of its own)."""
    ec2 = lab_client(endpoint_url, region)
    zone, tags = lab["zones"][i % 3], KINDS[i % 4]
    spec = [
        {
            "ResourceType": "network-interface",
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        }
    ]
    instance = ec2.run_instances(
        ImageId=LAB_IMAGE_ID,
        MinCount=1,
        MaxCount=1,
        # A type that can be a traffic mirror source (emulator/sources.py): moto's default,
        # m1.small, as EC2's, cannot.
        InstanceType="c5.large",
        SubnetId=lab["subnets"][zone],
        TagSpecifications=spec,
    )["Instances"][0]
    made: Enis = {instance["NetworkInterfaces"][0]["NetworkInterfaceId"]: (zone, tags)}
    for device in range(1, 1 + i % 3):
        eni = ec2.create_network_interface(SubnetId=lab["subnets"][zone], TagSpecifications=spec)[
            "NetworkInterface"
        ]["NetworkInterfaceId"]
        ec2.attach_network_interface(
            NetworkInterfaceId=eni, InstanceId=instance["InstanceId"], DeviceIndex=device
        )
        made[eni] = (zone, tags)
    return made


def launch(endpoint_url: str, lab: ZonedLab, instances: int) -> Enis:
    made: Enis = {}
    for i in range(instances):
        made |= launch_instance(endpoint_url, lab, i)
    return made


def expected_mirrors(lab: ZonedLab, enis: Enis) -> set[tuple[str, str, str]]:
    """(ENI, target, filter) for each mirror the policy asks for."""
    wanted = set()
    for eni, (zone, tags) in enis.items():
        if tags.get("Env") == "prod" and zone in lab["sensors"]:
            wanted.add((eni, lab["sensors"][zone], lab["f_web"]))
        if tags.get("Role") == "db":
            wanted.add((eni, lab["nlb"], lab["f_db"]))
    return wanted
