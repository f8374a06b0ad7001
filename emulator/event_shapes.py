"""The EventBridge events EC2 sends after a successful call, built from the call and its answer:
pure builders whose output has the shape of the samples in tests/events/.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

from moto.utilities.utils import get_partition

STATE_CHANGE = "EC2 Instance State-change Notification"
API_CALL = "AWS API Call via CloudTrail"
EMITTING_ACTIONS = frozenset(
    {
        "RunInstances",
        "StartInstances",
        "StopInstances",
        "TerminateInstances",
        "CreateNetworkInterface",
        "AttachNetworkInterface",
        "DeleteVpcEndpoints",
    }
)
# moto's instances stop and terminate at once; EC2 sends both steps of each.
_LEAVING = {
    "StopInstances": ("stopping", "stopped"),
    "TerminateInstances": ("shutting-down", "terminated"),
}
CLOUDTRAIL_EVENT_VERSION = "1.09"
EC2_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
# CloudTrail writes these response fields as numbers; every other leaf stays a string.
_INTEGER_FIELDS = frozenset({"deviceIndex", "networkCardIndex"})


def event_time(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(
    detail_type: str,
    account: str,
    region: str,
    resources: list[str],
    detail: dict[str, Any],
    time: str,
    source: str = "aws.ec2",
) -> dict[str, Any]:
    """An EventBridge event from `source` (EC2's unless said), as a rule's target receives it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": account,
        "time": time,
        "region": region,
        "resources": resources,
        "detail": detail,
    }


def instance_state_change(
    account: str, region: str, instance_id: str, state: str, time: str
) -> dict[str, Any]:
    arn = f"arn:{get_partition(region)}:ec2:{region}:{account}:instance/{instance_id}"
    return envelope(
        STATE_CHANGE, account, region, [arn], {"instance-id": instance_id, "state": state}, time
    )


def api_call(
    event_name: str,
    account: str,
    region: str,
    request_parameters: dict[str, Any],
    response_elements: dict[str, Any] | None,
    *,
    time: str,
    source_ip: str,
    user_agent: str,
    service: str = "ec2",
    nested: bool = False,
) -> dict[str, Any]:
    """An `AWS API Call via CloudTrail` event for a successful call of `service` (EC2's
    unless said; `elasticloadbalancing` for ELB's). `response_elements` None: the call
    answers none (CloudTrail writes null). `nested`: CloudTrail writes this EC2 call as it
    writes EC2's newer ones, its answer under `<eventName>Response` with the request id and
    EC2's XML namespace (the caller nests the request under `<eventName>Request` itself)."""
    request_id = str(uuid.uuid4())
    if response_elements is None:
        response: dict[str, Any] | None = None
    elif nested:
        response = {
            f"{event_name}Response": {
                "requestId": request_id,
                **response_elements,
                "xmlns": EC2_NAMESPACE,
            }
        }
    else:
        response = {"requestId": request_id, **response_elements}
    detail = {
        "eventVersion": CLOUDTRAIL_EVENT_VERSION,
        "userIdentity": {"type": "IAMUser", "accountId": account},
        "eventTime": time,
        "eventSource": f"{service}.amazonaws.com",
        "eventName": event_name,
        "awsRegion": region,
        "sourceIPAddress": source_ip,
        "userAgent": user_agent,
        "requestParameters": request_parameters,
        "responseElements": response,
        "requestID": request_id,
        "eventID": str(uuid.uuid4()),
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": account,
    }
    return envelope(API_CALL, account, region, [], detail, time, f"aws.{service}")


def load_balancer_deleted(
    account: str, region: str, arn: str, *, source_ip: str, user_agent: str
) -> dict[str, Any]:
    """CloudTrail's record of an Elastic Load Balancing v2 DeleteLoadBalancer, as EventBridge
    sends it (`aws.elasticloadbalancing`; the request's ARN, no response elements)."""
    return api_call(
        "DeleteLoadBalancer",
        account,
        region,
        {"loadBalancerArn": arn},
        None,
        time=event_time(),
        source_ip=source_ip,
        user_agent=user_agent,
        service="elasticloadbalancing",
    )


# From the EC2 call to its events ----------------------------------------------------------


def eni_created(account: str, region: str, eni_id: str, *, user_agent: str) -> dict[str, Any]:
    """CloudTrail's record of a CreateNetworkInterface in `account`, `region` (labs, benches)."""
    return api_call(
        "CreateNetworkInterface",
        account,
        region,
        {},
        {"networkInterface": {"networkInterfaceId": eni_id}},
        time=event_time(),
        source_ip="10.0.0.1",
        user_agent=user_agent,
    )


def _tag(node: ElementTree.Element) -> str:
    return node.tag.rpartition("}")[2]


def _child(node: ElementTree.Element, *path: str) -> ElementTree.Element | None:
    for name in path:
        found = next((c for c in node if _tag(c) == name), None)
        if found is None:
            return None
        node = found
    return node


def _children(node: ElementTree.Element, *path: str) -> list[ElementTree.Element]:
    found = _child(node, *path)
    return list(found) if found is not None else []


def _text(node: ElementTree.Element, *path: str) -> str:
    found = _child(node, *path)
    return (found.text or "") if found is not None else ""


def cloudtrail_elements(node: ElementTree.Element) -> dict[str, Any]:
    """An EC2 response element as CloudTrail writes it: sets as {"items": [...]}, typed leaves.

    Empty elements are left out, except sets, which CloudTrail writes as {}.
    """
    out: dict[str, Any] = {}
    for child in node:
        name = _tag(child)
        if len(child):
            if all(_tag(c) == "item" for c in child):
                out[name] = {"items": [cloudtrail_elements(c) for c in child]}
            else:
                out[name] = cloudtrail_elements(child)
        elif child.text:
            out[name] = _leaf(name, child.text)
        elif name.endswith("Set"):
            out[name] = {}
    return out


def _leaf(name: str, text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if name in _INTEGER_FIELDS and text.isdigit():
        return int(text)
    return text


def _items(params: dict[str, str], prefix: str, fields: dict[str, str]) -> dict[str, Any]:
    """`Prefix.N[.Field]` query parameters as a CloudTrail set of {"items": [...]}."""
    rows: dict[int, dict[str, Any]] = {}
    for key, value in params.items():
        head, _, rest = key.partition(".")
        if head != prefix:
            continue
        number, _, field = rest.partition(".")
        if number.isdigit() and field in fields:
            rows.setdefault(int(number), {})[fields[field]] = _leaf(fields[field], value)
    return {"items": [rows[n] for n in sorted(rows)]} if rows else {}


def _create_network_interface_request(params: dict[str, str]) -> dict[str, Any]:
    request: dict[str, Any] = {"subnetId": params.get("SubnetId", "")}
    for query, field in (
        ("Description", "description"),
        ("PrivateIpAddress", "privateIpAddress"),
        ("InterfaceType", "interfaceType"),
        ("ClientToken", "clientToken"),
    ):
        if query in params:
            request[field] = params[query]
    request["groupSet"] = _items(params, "SecurityGroupId", {"": "groupId"})
    request["privateIpAddressesSet"] = _items(
        params,
        "PrivateIpAddresses",
        {"PrivateIpAddress": "privateIpAddress", "Primary": "primary"},
    )
    return request


def _attach_network_interface_request(params: dict[str, str]) -> dict[str, Any]:
    request: dict[str, Any] = {
        "networkInterfaceId": params.get("NetworkInterfaceId", ""),
        "instanceId": params.get("InstanceId", ""),
        "deviceIndex": int(params.get("DeviceIndex", "0")),
    }
    if "NetworkCardIndex" in params:
        request["networkCardIndex"] = int(params["NetworkCardIndex"])
    return request


def _tagged(params: dict[str, str], prefix: str) -> Any:
    """`Prefix.N` query parameters as CloudTrail writes a list in an EC2 `...Request`:
    `{"tag": N, "content": value}`, a list of them when there are several."""
    rows = sorted(
        (int(key.partition(".")[2]), value)
        for key, value in params.items()
        if key.partition(".")[0] == prefix and key.partition(".")[2].isdigit()
    )
    tagged = [{"tag": number, "content": value} for number, value in rows]
    return tagged[0] if len(tagged) == 1 else tagged


def vpc_endpoints_deleted(
    account: str,
    region: str,
    params: dict[str, str],
    *,
    time: str,
    source_ip: str,
    user_agent: str,
) -> dict[str, Any]:
    """CloudTrail's record of a DeleteVpcEndpoints (a Gateway Load Balancer endpoint target's
    going): its ids under `DeleteVpcEndpointsRequest.VpcEndpointId`; `unsuccessful` empty,
    as moto's answer always is (it skips an unknown id without a word)."""
    return api_call(
        "DeleteVpcEndpoints",
        account,
        region,
        {"DeleteVpcEndpointsRequest": {"VpcEndpointId": _tagged(params, "VpcEndpointId")}},
        {"unsuccessful": ""},
        time=time,
        source_ip=source_ip,
        user_agent=user_agent,
        nested=True,
    )


def events_for(
    action: str,
    params: dict[str, str],
    response: bytes,
    *,
    account: str,
    region: str,
    source_ip: str = "127.0.0.1",
    user_agent: str = "",
) -> list[dict[str, Any]]:
    """The events EC2 would send after this successful call, from its answer's new ids."""
    root = ElementTree.fromstring(response)  # noqa: S314 - moto's own answer, not user input
    time = event_time()
    if action == "RunInstances":
        ids = [_text(item, "instanceId") for item in _children(root, "instancesSet")]
        # moto's instances are running at once; EC2 sends both steps.
        return [
            instance_state_change(account, region, instance_id, state, time)
            for state in ("pending", "running")
            for instance_id in ids
        ]
    if action == "StartInstances":
        return [
            instance_state_change(account, region, _text(item, "instanceId"), "running", time)
            for item in _children(root, "instancesSet")
            # An instance that was running already does not change state: EC2 says nothing.
            if _text(item, "previousState", "name") != "running"
        ]
    if action in _LEAVING:
        return [
            instance_state_change(account, region, _text(item, "instanceId"), state, time)
            for item in _children(root, "instancesSet")
            # An instance already in the final state does not change: EC2 says nothing.
            if _text(item, "previousState", "name") != _LEAVING[action][1]
            for state in _LEAVING[action]
        ]
    if action == "DeleteVpcEndpoints":
        return [
            vpc_endpoints_deleted(
                account, region, params, time=time, source_ip=source_ip, user_agent=user_agent
            )
        ]
    if action == "CreateNetworkInterface":
        request = _create_network_interface_request(params)
    elif action == "AttachNetworkInterface":
        request = _attach_network_interface_request(params)
    else:
        return []
    elements = cloudtrail_elements(root)
    elements.pop("requestId", None)  # moto's is a constant placeholder
    return [
        api_call(
            action,
            account,
            region,
            request,
            elements,
            time=time,
            source_ip=source_ip,
            user_agent=user_agent,
        )
    ]
