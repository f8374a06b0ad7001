"""Bulk mirroring: resolve ENIs through paginated, filtered Describe calls, then plan.

The plan is computed from EC2's state at run time, so running the same command twice
creates nothing new, and a session deleted since is planned again (with a new job, hence
a new ClientToken: an old token is never reused for a new session).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from config import Settings
from tasks.contract import AUTO
from worker.errors import classify
from worker.sessions import same_mirror

PAGE_SIZE = 1000  # EC2's maximum for both Describe calls
SESSIONS_PER_INTERFACE = 3


class Outcome(StrEnum):
    CREATE = "create"
    ALREADY_MIRRORED = "already_mirrored"
    SESSION_LIMIT = "session_limit"  # already 3 sessions, EC2's per-ENI limit
    IS_MIRROR_TARGET = "is_mirror_target"  # a target cannot be a source
    NOT_INTERFACE = "not_interface_type"  # efa, trunk, ... ENIs are not mirrored


@dataclass(frozen=True)
class Selectors:
    vpc_ids: tuple[str, ...] = ()
    subnet_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    instance_ids: tuple[str, ...] = ()
    eni_ids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any((self.vpc_ids, self.subnet_ids, self.tags, self.instance_ids, self.eni_ids))

    def filters(self) -> list[dict[str, Any]]:
        """EC2 filters: different names must all match, values of one name are alternatives."""
        by_name: dict[str, list[str]] = {}
        for name, values in (
            ("vpc-id", self.vpc_ids),
            ("subnet-id", self.subnet_ids),
            ("attachment.instance-id", self.instance_ids),
            ("network-interface-id", self.eni_ids),
        ):
            if values:
                by_name[name] = list(values)
        for key, value in self.tags:
            by_name.setdefault(f"tag:{key}", []).append(value)
        return [{"Name": name, "Values": values} for name, values in by_name.items()]


@dataclass(frozen=True)
class SessionOptions:
    """What every session of a bulk run (or a policy rule) is created with, besides its ENI,
    target, filter and number: the seed's optional parameters, under the CLI's names."""

    packet_length: int | None = None
    virtual_network_id: int | None = None
    description: str | None = None
    session_tags: tuple[tuple[str, str], ...] = ()

    def request_fields(self) -> dict[str, Any]:
        """The same, in the request syntax (PascalCase, unset ones left out)."""
        fields: dict[str, Any] = {
            "PacketLength": self.packet_length,
            "VirtualNetworkId": self.virtual_network_id,
            "Description": self.description,
        }
        if self.session_tags:
            fields["TagSpecifications"] = [
                {
                    "ResourceType": "traffic-mirror-session",
                    "Tags": [{"Key": k, "Value": v} for k, v in self.session_tags],
                }
            ]
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class PlanItem:
    eni_id: str
    outcome: Outcome
    detail: str = ""


@dataclass
class Plan:
    target_id: str
    filter_id: str
    items: list[PlanItem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counted = Counter(item.outcome.value for item in self.items)
        return {o.value: counted[o.value] for o in Outcome if counted[o.value]}

    def to_create(self) -> list[str]:
        return [i.eni_id for i in self.items if i.outcome is Outcome.CREATE]

    def summary(self) -> dict[str, Any]:
        """What the batch keeps as its record of the plan."""
        skipped: dict[str, list[str]] = {}
        for item in self.items:
            if item.outcome is not Outcome.CREATE:
                skipped.setdefault(item.outcome.value, []).append(item.eni_id)
        return {
            "target": self.target_id,
            "filter": self.filter_id,
            "counts": self.counts(),
            "skipped": skipped,
        }


def plan_mirroring(
    enis: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    target_id: str,
    filter_id: str,
) -> Plan:
    """Decide, for each ENI, whether to create a session or why not. Pure."""
    target_enis = {t["NetworkInterfaceId"] for t in targets if t.get("NetworkInterfaceId")}
    on_eni: dict[str, list[dict[str, Any]]] = {}
    for s in sessions:
        on_eni.setdefault(s["NetworkInterfaceId"], []).append(s)
    plan = Plan(target_id, filter_id)
    for eni in enis:
        eni_id = eni["NetworkInterfaceId"]
        existing = on_eni.get(eni_id, [])
        same = same_mirror(existing, [target_id], filter_id)
        if same:
            item = PlanItem(eni_id, Outcome.ALREADY_MIRRORED, same[0]["TrafficMirrorSessionId"])
        elif eni_id in target_enis:
            item = PlanItem(eni_id, Outcome.IS_MIRROR_TARGET)
        elif eni.get("InterfaceType", "interface") != "interface":
            item = PlanItem(eni_id, Outcome.NOT_INTERFACE, eni["InterfaceType"])
        elif len(existing) >= SESSIONS_PER_INTERFACE:
            item = PlanItem(eni_id, Outcome.SESSION_LIMIT, f"{len(existing)} sessions")
        else:
            item = PlanItem(eni_id, Outcome.CREATE)
        plan.items.append(item)
    return plan


def job_requests(
    plan: Plan,
    options: SessionOptions = SessionOptions(),
    *,
    session_number: int | str = AUTO,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """One job per ENI to mirror, each with the session options."""
    extra = options.request_fields()
    return [
        {
            "NetworkInterfaceId": eni_id,
            "TrafficMirrorTargetId": plan.target_id,
            "TrafficMirrorFilterId": plan.filter_id,
            "SessionNumber": session_number,
            **extra,
            **({"DryRun": True} if dry_run else {}),
        }
        for eni_id in plan.to_create()
    ]


class Ec2Inventory:
    """The Describe side of bulk mirroring, every call paginated."""

    def __init__(self, settings: Settings) -> None:
        self.ec2: Any = boto3.client(
            "ec2",
            region_name=settings.region,
            endpoint_url=settings.ec2_endpoint_url,
            config=Config(retries={"mode": "adaptive", "max_attempts": 10}),
        )

    def _all(self, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        pages = self.ec2.get_paginator(operation).paginate(
            **kwargs, PaginationConfig={"PageSize": PAGE_SIZE}
        )
        return [item for page in pages for item in page[key]]

    def network_interfaces(self, selectors: Selectors) -> list[dict[str, Any]]:
        return self._all(
            "describe_network_interfaces", "NetworkInterfaces", Filters=selectors.filters()
        )

    def sessions(self) -> list[dict[str, Any]]:
        return self._all("describe_traffic_mirror_sessions", "TrafficMirrorSessions")

    def targets(self) -> list[dict[str, Any]]:
        return self._all("describe_traffic_mirror_targets", "TrafficMirrorTargets")

    def has_filter(self, filter_id: str) -> bool:
        try:
            found = self._all(
                "describe_traffic_mirror_filters",
                "TrafficMirrorFilters",
                TrafficMirrorFilterIds=[filter_id],
            )
        except ClientError as error:
            if classify(error).not_found:
                return False
            raise
        return bool(found)

    def plan(self, selectors: Selectors, target_id: str, filter_id: str) -> Plan:
        targets = self.targets()
        if target_id not in {t["TrafficMirrorTargetId"] for t in targets}:
            raise LookupError(f"--target: no traffic mirror target {target_id}")
        if not self.has_filter(filter_id):
            raise LookupError(f"--filter: no traffic mirror filter {filter_id}")
        return plan_mirroring(
            self.network_interfaces(selectors), self.sessions(), targets, target_id, filter_id
        )
