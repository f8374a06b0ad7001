"""mirrorq against plain moto (`moto.server.ThreadedMotoServer`), the EC2 stand-in many teams'
CI already runs, and against its ids (`traf-mir-tar-…`, `traf-mir-fil-…`), as LocalStack
issues them too. A recording proxy in front shows every seed parameter arriving intact."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from emulator.lab import LAB_IMAGE_ID, lab_client
from mirrorq.processes import WorkerProcess, free_port
from tasks.contract import parse_request
from tasks.errors import InvalidJobError
from tasks.producer import Producer
from tests.fault_proxy import Answer, FaultProxy
from tests.helpers import sessions, wait_all

VALID = {
    "NetworkInterfaceId": "eni-0123456789abcdef0",
    "TrafficMirrorTargetId": "traf-mir-tar-0123456789abcdef0",
    "TrafficMirrorFilterId": "traf-mir-fil-0123456789abcdef0",
    "SessionNumber": 1,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("TrafficMirrorTargetId", "traf-mir-fil-0123456789abcdef0"),  # a filter as the target
        ("TrafficMirrorFilterId", "traf-mir-tar-0123456789abcdef0"),
        ("TrafficMirrorTargetId", "tmf-0123456789abcdef0"),
        ("TrafficMirrorTargetId", "traf-mir-tr-0123456789abcdef0"),  # a typo'd prefix
        ("TrafficMirrorTargetId", "tmt_0123456789abcdef0"),
        ("TrafficMirrorFilterId", "traf-mir-fil-"),
    ],
)
def test_moto_style_ids_still_catch_the_mistakes(field: str, value: str) -> None:
    assert parse_request(VALID).TrafficMirrorTargetId == VALID["TrafficMirrorTargetId"]
    with pytest.raises(InvalidJobError) as raised:
        parse_request({**VALID, field: value})
    assert [e["field"] for e in raised.value.errors] == [field]


@pytest.fixture
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def moto_lab(url: str) -> dict[str, Any]:
    ec2 = lab_client(url)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]
    instances = ec2.run_instances(ImageId=LAB_IMAGE_ID, MinCount=5, MaxCount=5, SubnetId=subnet)
    enis = [i["NetworkInterfaces"][0]["NetworkInterfaceId"] for i in instances["Instances"]]
    target = ec2.create_traffic_mirror_target(NetworkInterfaceId=enis[-1])
    flt = ec2.create_traffic_mirror_filter(Description="all")
    return {
        "eni_ids": enis[:-1],
        "target_id": target["TrafficMirrorTarget"]["TrafficMirrorTargetId"],
        "filter_id": flt["TrafficMirrorFilter"]["TrafficMirrorFilterId"],
    }


def test_the_pipeline_runs_against_plain_moto_with_every_parameter_intact(
    moto_url: str,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = moto_lab(moto_url)
    assert lab["target_id"].startswith("traf-mir-tar-")
    assert lab["filter_id"].startswith("traf-mir-fil-")
    tags = [{"ResourceType": "traffic-mirror-session", "Tags": [{"Key": "team", "Value": "sec"}]}]
    mirror = {"TrafficMirrorTargetId": lab["target_id"], "TrafficMirrorFilterId": lab["filter_id"]}
    full = {
        **mirror,
        "NetworkInterfaceId": lab["eni_ids"][0],
        "SessionNumber": 7,
        "PacketLength": 128,
        "VirtualNetworkId": 4242,
        "Description": "every seed parameter",
        "TagSpecifications": tags,
        "ClientToken": "moto-compat-token-1",
    }
    auto = {**mirror, "NetworkInterfaceId": lab["eni_ids"][1], "SessionNumber": "auto"}
    # moto does not implement DryRun for this call (it creates the session); what is shown
    # here is that the parameter reaches it.
    dry = {**mirror, "NetworkInterfaceId": lab["eni_ids"][2], "SessionNumber": 1, "DryRun": True}
    seen: list[dict[str, str]] = []
    lock = threading.Lock()

    def record(action: str, params: dict[str, str], _: int) -> Answer | None:
        if action == "CreateTrafficMirrorSession":
            with lock:
                seen.append(params)
        return None

    with FaultProxy(moto_url, record) as proxy:
        start_worker(MIRRORQ_EC2_ENDPOINT_URL=proxy.url)
        results = wait_all(producer, [producer.submit(r) for r in (full, auto, dry)])
    assert [r["status"] for r in results[:2]] == ["created", "created"]

    sent = {p["NetworkInterfaceId"]: p for p in seen}
    assert sent[lab["eni_ids"][0]] == {
        "Action": "CreateTrafficMirrorSession",
        "Version": sent[lab["eni_ids"][0]]["Version"],
        "NetworkInterfaceId": lab["eni_ids"][0],
        "TrafficMirrorTargetId": lab["target_id"],
        "TrafficMirrorFilterId": lab["filter_id"],
        "SessionNumber": "7",
        "PacketLength": "128",
        "VirtualNetworkId": "4242",
        "Description": "every seed parameter",
        "TagSpecification.1.ResourceType": "traffic-mirror-session",
        "TagSpecification.1.Tag.1.Key": "team",
        "TagSpecification.1.Tag.1.Value": "sec",
        "ClientToken": "moto-compat-token-1",
    }
    assert sent[lab["eni_ids"][1]]["SessionNumber"] == "1"  # auto: the lowest free number
    assert sent[lab["eni_ids"][1]]["ClientToken"] == results[1]["client_token"]
    assert sent[lab["eni_ids"][2]]["DryRun"] == "true"

    made = {s["NetworkInterfaceId"]: s for s in sessions(moto_url)}
    first = made[lab["eni_ids"][0]]
    assert (first["SessionNumber"], first["PacketLength"], first["VirtualNetworkId"]) == (
        7,
        128,
        4242,
    )
    assert first["Description"] == "every seed parameter"
    assert first["Tags"] == [{"Key": "team", "Value": "sec"}]
    assert (
        results[0]["response"]["TrafficMirrorSession"]["TrafficMirrorSessionId"]
        == (first["TrafficMirrorSessionId"])
    )
