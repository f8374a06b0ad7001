"""What moto lacks for Traffic Mirroring: EC2's validation and ClientToken idempotency.

The checks run against moto's in-memory EC2 backend, under the emulator's lock, before
the call is handed to moto to create the resource.
"""

from __future__ import annotations

import functools
import random
import re
import threading
from dataclasses import dataclass
from typing import Any

from moto.ec2.models import ec2_backends
from moto.ec2.models.instance_types import INSTANCE_TYPES

from emulator.errors import EC2Error, invalid_value
from emulator.session_index import indexed
from emulator.sharing import SHARES
from emulator.sources import UNSUPPORTED_SOURCE_CODE, why_not_a_source

MAX_CLIENT_TOKEN = 64
SESSIONS_PER_INTERFACE = 3  # EC2 quota "sessions per source network interface"
# EC2 quota "sources per target" for a network-interface target: 100 on the largest size of
# an instance family, 10 on the rest. NLB and Gateway Load Balancer endpoint targets: no limit.
SOURCES_PER_TARGET = 10
SOURCES_PER_LARGEST_TARGET = 100
SESSION_NUMBER = (1, 32766)
PACKET_LENGTH = (1, 8500)
VIRTUAL_NETWORK_ID = (0, 2**24 - 1)  # a VXLAN network identifier is 24 bits
MAX_TAGS = 50
MAX_TAG_KEY = 127
MAX_TAG_VALUE = 256
# Parameters that do not take part in "same token, same request?".
NOT_FINGERPRINTED = frozenset({"Action", "Version", "ClientToken", "DryRun"})
IDEMPOTENT_ACTIONS = frozenset(
    {"CreateTrafficMirrorSession", "CreateTrafficMirrorTarget", "CreateTrafficMirrorFilter"}
)
# A session's other mutating calls: no ClientToken, but EC2's checks and the same faults.
SESSION_ACTIONS = frozenset({"DeleteTrafficMirrorSession", "ModifyTrafficMirrorSession"})
MIRRORING_ACTIONS = IDEMPOTENT_ACTIONS | SESSION_ACTIONS
# ModifyTrafficMirrorSession's RemoveField.N values, each with the session attribute it resets.
REMOVABLE = {
    "packet-length": "packet_length",
    "description": "description",
    "virtual-network-id": "virtual_network_id",
}
_REMOVE_FIELD = re.compile(r"RemoveField\.\d+$")

_TAG_SPEC = re.compile(r"TagSpecification\.(\d+)\.(ResourceType|Tag\.(\d+)\.(Key|Value))$")


@dataclass(frozen=True)
class Recorded:
    """The answer first given to a ClientToken, replayed for every retry of it."""

    fingerprint: tuple[tuple[str, str], ...]
    status: str
    headers: list[tuple[str, str]]
    body: bytes


def fingerprint(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in params.items() if k not in NOT_FINGERPRINTED))


def is_dry_run(params: dict[str, str]) -> bool:
    return params.get("DryRun", "false").lower() == "true"


def tag_specifications(params: dict[str, str]) -> list[dict[str, Any]]:
    """`TagSpecification.N.*` query parameters back into the request-syntax list."""
    specs: dict[int, dict[str, Any]] = {}
    for key, value in params.items():
        match = _TAG_SPEC.match(key)
        if not match:
            continue
        spec = specs.setdefault(int(match[1]), {"ResourceType": None, "Tags": {}})
        if match[2] == "ResourceType":
            spec["ResourceType"] = value
        else:
            spec["Tags"].setdefault(int(match[3]), {})[match[4]] = value
    return [
        {"ResourceType": s["ResourceType"], "Tags": [s["Tags"][i] for i in sorted(s["Tags"])]}
        for _, s in sorted(specs.items())
    ]


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise EC2Error("MissingParameter", f"The request must contain the parameter {name}")
    return value


def _int_in(params: dict[str, str], name: str, bounds: tuple[int, int]) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise invalid_value(f"Value ({raw}) for parameter {name} is invalid.") from None
    low, high = bounds
    if not low <= value <= high:
        raise invalid_value(
            f"Value ({value}) for parameter {name} is invalid. Valid values are {low}-{high}."
        )
    return value


def check_tags(params: dict[str, str], resource_type: str) -> None:
    for spec in tag_specifications(params):
        if spec["ResourceType"] != resource_type:
            raise invalid_value(
                f"'{spec['ResourceType']}' is not a valid taggable resource type for this "
                f"operation; use '{resource_type}'."
            )
        tags = spec["Tags"]
        if len(tags) > MAX_TAGS:
            raise EC2Error(
                "TagLimitExceeded", f"A resource can have at most {MAX_TAGS} tags, got {len(tags)}."
            )
        for tag in tags:
            key, value = tag.get("Key", ""), tag.get("Value", "")
            if not key or len(key) > MAX_TAG_KEY or key.lower().startswith("aws:"):
                raise invalid_value(
                    f"Tag key '{key[:40]}' is invalid: 1-{MAX_TAG_KEY} characters, "
                    "not starting with 'aws:'."
                )
            if len(value) > MAX_TAG_VALUE:
                raise invalid_value(
                    f"Tag value for key '{key}' exceeds {MAX_TAG_VALUE} characters."
                )


@functools.cache
def largest_instance_types() -> frozenset[str]:
    """Per instance family, the types with the most vCPUs in moto's data, bare metal aside.

    An approximation of EC2's list of "largest size" types, which the quota page names one by
    one: it agrees on the common families (c5.24xlarge, m5.24xlarge, r5.24xlarge...).
    """
    vcpus = {
        name: spec["VCpuInfo"]["DefaultVCpus"]
        for name, spec in INSTANCE_TYPES.items()
        if "metal" not in name.partition(".")[2] and not spec.get("BareMetal")
    }
    most: dict[str, int] = {}
    for name, count in vcpus.items():
        family = name.partition(".")[0]
        most[family] = max(most.get(family, 0), count)
    return frozenset(name for name, count in vcpus.items() if count == most[name.partition(".")[0]])


def sources_limit(backend: Any, target: Any) -> int | None:
    """How many distinct source ENIs `target` takes sessions from; None for no limit."""
    if target.type != "network-interface":
        return None
    eni = backend.enis.get(target.network_interface_id)
    instance = eni.instance if eni is not None else None
    if instance is not None and instance.instance_type in largest_instance_types():
        return SOURCES_PER_LARGEST_TARGET
    # A target ENI on no instance counts as a small one: EC2 decides by the instance.
    return SOURCES_PER_TARGET


class TrafficMirroring:
    """Validation and ClientToken records for the Traffic Mirroring create calls."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._records: dict[tuple[str, str, str, str], Recorded] = {}
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    # ClientToken idempotency ------------------------------------------------------------

    def replay(
        self, account: str, region: str, action: str, params: dict[str, str]
    ) -> Recorded | None:
        """The recorded answer for this token, or None when the token is new.

        Raises IdempotentParameterMismatch when the token was used with other parameters.
        """
        token = params.get("ClientToken")
        if token is None:
            return None
        if len(token) > MAX_CLIENT_TOKEN:
            raise invalid_value(
                f"ClientToken must be at most {MAX_CLIENT_TOKEN} characters, got {len(token)}."
            )
        with self._lock:
            recorded = self._records.get((account, region, action, token))
        if recorded is not None and recorded.fingerprint != fingerprint(params):
            raise EC2Error(
                "IdempotentParameterMismatch",
                f"The client token '{token}' has already been used with different parameters.",
            )
        return recorded

    def remember(
        self, account: str, region: str, action: str, params: dict[str, str], answer: Recorded
    ) -> None:
        token = params.get("ClientToken")
        if token is not None:
            with self._lock:
                self._records[(account, region, action, token)] = answer

    # Validation -------------------------------------------------------------------------

    def check(self, action: str, backend: Any, params: dict[str, str]) -> dict[str, str]:
        """Raise the EC2Error EC2 would send; return parameters to add before creating."""
        if action == "CreateTrafficMirrorSession":
            return self._check_session(backend, params)
        if action == "DeleteTrafficMirrorSession":
            _session(backend, params)
        elif action == "ModifyTrafficMirrorSession":
            self._check_modify(backend, params)
        if action == "CreateTrafficMirrorTarget":
            check_tags(params, "traffic-mirror-target")
            eni_id = params.get("NetworkInterfaceId")
            if eni_id and eni_id not in backend.enis:
                raise _eni_not_found(eni_id)
        elif action == "CreateTrafficMirrorFilter":
            check_tags(params, "traffic-mirror-filter")
        return {}

    def _check_session(self, backend: Any, params: dict[str, str]) -> dict[str, str]:
        eni_id = _required(params, "NetworkInterfaceId")
        target_id = _required(params, "TrafficMirrorTargetId")
        filter_id = _required(params, "TrafficMirrorFilterId")
        _required(params, "SessionNumber")
        session_number = _int_in(params, "SessionNumber", SESSION_NUMBER)
        _int_in(params, "PacketLength", PACKET_LENGTH)
        vni = _int_in(params, "VirtualNetworkId", VIRTUAL_NETWORK_ID)
        check_tags(params, "traffic-mirror-session")
        if params.get("Description") is not None and len(params["Description"]) > 255:
            raise invalid_value("Description must be at most 255 characters.")

        if eni_id not in backend.enis:
            raise _eni_not_found(eni_id)
        _check_source_type(backend.enis[eni_id])
        owner, target = _target_for(backend, target_id)
        if filter_id not in backend.traffic_mirror_filters:
            # A shared target's filter is not shared: the creator's own filter or none.
            raise EC2Error(
                "InvalidTrafficMirrorFilterNotFound",
                f"The traffic mirror filter '{filter_id}' does not exist.",
            )
        if any(t.network_interface_id == eni_id for t in backend.traffic_mirror_targets.values()):
            raise invalid_value(
                f"Network interface {eni_id} is a traffic mirror target and cannot be a source."
            )
        sessions = indexed(backend)
        on_eni = sessions.on_eni(eni_id)
        if len(on_eni) >= SESSIONS_PER_INTERFACE:
            raise EC2Error(
                "TrafficMirrorSessionsPerInterfaceLimitExceeded",
                f"Network interface {eni_id} already has {SESSIONS_PER_INTERFACE} traffic "
                "mirror sessions.",
            )
        if any(s.session_number == session_number for s in on_eni):
            raise invalid_value(
                f"Session number {session_number} is already in use on network interface {eni_id}."
            )
        _check_sources(backend.region_name, owner, target, eni_id)
        if vni is not None:
            return {}
        # Like EC2: no VirtualNetworkId given means an account-wide unique one chosen at random.
        while sessions.vni_in_use(vni := self._rng.randint(1, VIRTUAL_NETWORK_ID[1])):
            pass
        return {"VirtualNetworkId": str(vni)}

    def _check_modify(self, backend: Any, params: dict[str, str]) -> None:
        """ModifyTrafficMirrorSession: the session, then each value as a create checks it, and
        what it points at (target, filter, a number free on the ENI) as a create does."""
        session = _session(backend, params)
        number = _int_in(params, "SessionNumber", SESSION_NUMBER)
        _int_in(params, "PacketLength", PACKET_LENGTH)
        _int_in(params, "VirtualNetworkId", VIRTUAL_NETWORK_ID)
        if params.get("Description") is not None and len(params["Description"]) > 255:
            raise invalid_value("Description must be at most 255 characters.")
        for field in removed_fields(params):
            if field not in REMOVABLE:
                raise invalid_value(
                    f"Value ({field}) for parameter RemoveField is invalid. Valid values are "
                    f"{', '.join(REMOVABLE)}."
                )
        target_id = params.get("TrafficMirrorTargetId")
        if target_id and target_id != session.traffic_mirror_target_id:
            owner, target = _target_for(backend, target_id)
            if target.network_interface_id == session.network_interface_id:
                raise invalid_value(
                    f"Network interface {session.network_interface_id} is the source of "
                    f"traffic mirror session {session.id} and cannot be its target."
                )
            _check_sources(backend.region_name, owner, target, session.network_interface_id)
        filter_id = params.get("TrafficMirrorFilterId")
        if filter_id and filter_id not in backend.traffic_mirror_filters:
            raise EC2Error(
                "InvalidTrafficMirrorFilterNotFound",
                f"The traffic mirror filter '{filter_id}' does not exist.",
            )
        if number is not None and any(
            s.session_number == number and s.id != session.id
            for s in indexed(backend).on_eni(session.network_interface_id)
        ):
            raise invalid_value(
                f"Session number {number} is already in use on network interface "
                f"{session.network_interface_id}."
            )

    def remove_fields(self, backend: Any, params: dict[str, str]) -> None:
        """ModifyTrafficMirrorSession's RemoveField.N, which moto ignores: each property set
        back to its default (no packet length: whole packets; no description; a VXLAN id
        chosen as a create without one gets). Called once the checks passed, before moto
        applies the rest (a field is never both set and removed: EC2 refuses that)."""
        removed = removed_fields(params)
        if not removed:
            return
        session = _session(backend, params)
        for field in removed:
            value = None
            if field == "virtual-network-id":
                sessions = indexed(backend)
                while sessions.vni_in_use(value := self._rng.randint(1, VIRTUAL_NETWORK_ID[1])):
                    pass
            setattr(session, REMOVABLE[field], value)
        indexed(backend).reindex(session.id)


def removed_fields(params: dict[str, str]) -> list[str]:
    return [v for k, v in sorted(params.items()) if _REMOVE_FIELD.match(k)]


def _session(backend: Any, params: dict[str, str]) -> Any:
    """The session a delete or a modify names, or EC2's NotFound."""
    session_id = _required(params, "TrafficMirrorSessionId")
    session = backend.traffic_mirror_sessions.get(session_id)
    if session is None:
        raise EC2Error(
            "InvalidTrafficMirrorSessionId.NotFound",
            f"The traffic mirror session '{session_id}' does not exist.",
        )
    return session


def _check_source_type(eni: Any) -> None:
    """An ENI on an instance type that cannot be a source (emulator/sources.py) is refused."""
    instance = getattr(eni, "instance", None)
    instance_type = getattr(instance, "instance_type", None)
    why = why_not_a_source(instance_type) if instance_type else None
    if why is not None:
        raise EC2Error(
            UNSUPPORTED_SOURCE_CODE,
            f"Network interface {eni.id} is attached to an instance of type {instance_type} "
            f"and cannot be a traffic mirror source: {why}.",
        )


def _target_for(backend: Any, target_id: str) -> tuple[str, Any]:
    """(owner account, target): the caller's own, or one shared with it in this Region."""
    target = backend.traffic_mirror_targets.get(target_id)
    if target is not None:
        return backend.account_id, target
    shared = SHARES.shared_target(backend.account_id, backend.region_name, target_id)
    if shared is None:
        # Sic: "NoFound" is the spelling EC2 documents and sends for targets.
        raise EC2Error(
            "InvalidTrafficMirrorTargetNoFound",
            f"The traffic mirror target '{target_id}' does not exist.",
        )
    return shared


def _check_sources(region: str, owner: str, target: Any, eni_id: str) -> None:
    """The target's limit counts the sources of every account's sessions on it (a shared
    target takes sessions from the accounts it is shared with, not only its owner's)."""
    limit = sources_limit(ec2_backends[owner][region], target)
    if limit is None:
        return
    sources: set[str] = set()
    for account in SHARES.accounts_on(region, target.id, owner):
        sources |= indexed(ec2_backends[account][region]).sources_of(target.id)
    # A second session from a source already counted is not a new source.
    if eni_id not in sources and len(sources) >= limit:
        raise EC2Error(
            "TrafficMirrorSourcesPerTargetLimitExceeded",
            f"Sources per interface-target limit reached ({len(sources) + 1}): traffic mirror "
            f"target {target.id} takes sessions from at most {limit} network interfaces.",
        )


def _eni_not_found(eni_id: str) -> EC2Error:
    return EC2Error(
        "InvalidNetworkInterfaceID.NotFound",
        f"The networkInterface ID '{eni_id}' does not exist",
    )
