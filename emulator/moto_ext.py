"""Adjustments to moto 5.2.5's EC2 so it reads like the real thing to clients.

- Traffic Mirroring ids carry EC2's prefixes (`tms-`, `tmt-`, `tmf-`), not moto's.
- DescribeNetworkInterfaces and DescribeTrafficMirrorSessions honour MaxResults/NextToken,
  so clients that forget to paginate miss ENIs here as they would on EC2.
- CreateNetworkInterface keeps its InterfaceType (efa, trunk...), which moto drops.

`install()` is idempotent and is called before the emulator serves its first request.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, TypeVar

from moto.core.responses import ActionResult
from moto.ec2 import utils as ec2_utils
from moto.ec2.exceptions import EC2ClientError, InvalidNextToken
from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces
from moto.ec2.responses.traffic_mirrors import TrafficMirrors

EC2_PREFIXES = {
    "traffic-mirror-session": "tms",
    "traffic-mirror-target": "tmt",
    "traffic-mirror-filter": "tmf",
}
MAX_RESULTS = (5, 1000)  # EC2's bounds for both paginated Describe calls

T = TypeVar("T")


def _encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode(token: str) -> int:
    try:
        kind, _, offset = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "offset":
            return int(offset)
    except ValueError:
        pass
    raise InvalidNextToken(token)


def paginate(response: Any, items: Sequence[T]) -> tuple[list[T], str | None]:
    """One page of `items` as EC2 would return it, and the NextToken for the rest."""
    start = _decode(response._get_param("NextToken")) if response._get_param("NextToken") else 0
    max_results = response._get_int_param("MaxResults")
    if max_results is None:
        return list(items[start:]), None
    low, high = MAX_RESULTS
    if not low <= max_results <= high:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"Value ({max_results}) for parameter maxResults is invalid. "
            f"Expecting a value between {low} and {high}.",
        )
    end = start + max_results
    return list(items[start:end]), (_encode(end) if end < len(items) else None)


def _describe_network_interfaces(self: Any) -> ActionResult:
    eni_ids = self._get_param("NetworkInterfaceIds", [])
    filters = self._filters_from_querystring()
    self.error_on_dryrun()
    enis = self.ec2_backend.get_all_network_interfaces(eni_ids, filters)
    page, token = paginate(self, enis)
    result: dict[str, Any] = {"NetworkInterfaces": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _describe_traffic_mirror_sessions(self: Any) -> ActionResult:
    filters = dict(self._filters_from_querystring() or {})
    # moto compares the integer attribute with the filter's strings and never matches.
    try:
        numbers = {int(n) for n in filters.pop("session-number", [])}
    except ValueError:
        raise EC2ClientError(
            "InvalidParameterValue", "The filter session-number takes integers."
        ) from None
    sessions = self.ec2_backend.describe_traffic_mirror_sessions(
        traffic_mirror_session_ids=self._get_param("TrafficMirrorSessionIds"),
        filters=filters or None,
    )
    if numbers:
        sessions = [s for s in sessions if s.session_number in numbers]
    page, token = paginate(self, sessions)
    result: dict[str, Any] = {"TrafficMirrorSessions": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


_create_network_interface = ElasticNetworkInterfaces.create_network_interface


def _create_typed_network_interface(self: Any) -> ActionResult:
    result = _create_network_interface(self)
    interface_type = self._get_param("InterfaceType")
    if interface_type:
        result.result["NetworkInterface"].interface_type = interface_type  # type: ignore[index]
    return result


def install() -> None:
    for resource, prefix in EC2_PREFIXES.items():
        ec2_utils.EC2_RESOURCE_TO_PREFIX[resource] = prefix
        ec2_utils.EC2_PREFIX_TO_RESOURCE[prefix] = resource
    ElasticNetworkInterfaces.describe_network_interfaces = _describe_network_interfaces  # type: ignore[method-assign]
    TrafficMirrors.describe_traffic_mirror_sessions = _describe_traffic_mirror_sessions  # type: ignore[method-assign]
    ElasticNetworkInterfaces.create_network_interface = _create_typed_network_interface  # type: ignore[method-assign]
