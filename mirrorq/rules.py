"""What to mirror: a rule's selectors, targets and session options, shared by `mirrorq mirror`
(one rule from the command line) and policy files (rules from TOML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tasks.contract import Placement


class Choose(StrEnum):
    """How a rule with several targets picks one for each ENI."""

    SAME_AZ = "same-az"  # a target in the ENI's zone (NLB and GWLB targets serve every zone)
    LEAST_LOADED = "least-loaded"  # the target with the fewest sessions


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

    def matches(self, eni: dict[str, Any]) -> bool:
        """Does this ENI (as DescribeNetworkInterfaces returns it) match, as EC2's filters would?"""
        tags: dict[str, set[str]] = {}
        for key, value in self.tags:
            tags.setdefault(key, set()).add(value)
        eni_tags = {t["Key"]: t.get("Value", "") for t in eni.get("TagSet", [])}
        instance = (eni.get("Attachment") or {}).get("InstanceId")
        return (
            (not self.vpc_ids or eni.get("VpcId") in self.vpc_ids)
            and (not self.subnet_ids or eni.get("SubnetId") in self.subnet_ids)
            and (not self.instance_ids or instance in self.instance_ids)
            and (not self.eni_ids or eni["NetworkInterfaceId"] in self.eni_ids)
            and all(eni_tags.get(key) in values for key, values in tags.items())
        )


@dataclass(frozen=True)
class SessionOptions:
    """What every session of a rule is created with besides its ENI, target, filter and
    number: the seed's optional parameters, under the CLI's names."""

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
class Rule:
    """Mirror the ENIs the selectors match to one of the targets, through the filter."""

    name: str
    selectors: Selectors
    targets: tuple[str, ...]
    filter_id: str
    choose: Choose | None = None  # None: a single target
    options: SessionOptions = field(default_factory=SessionOptions)
    session_number: int | str = "auto"
    # Every filter the rule may use, each where it exists (a filter is its account-Region's
    # own); () is filter_id alone.
    filter_choices: tuple[str, ...] = ()
    # The account-Regions the rule applies to (a policy's [[accounts]]); () is the fleet's
    # default place only (a policy without [[accounts]], `mirrorq mirror`).
    places: tuple[Placement, ...] = ()
    # A tag (key, value) that finds the rule's filter in a place where none of its filter ids
    # exists (each account-Region tags its own); None: the ids alone.
    filter_tag: tuple[str, str] | None = None
    # Its sessions no longer wanted (their ENI no longer matches, their filter or target not
    # the rule's) are deleted by every reconcile pass, as with `--prune` (mirrorq/prune.py).
    prune: bool = False

    @property
    def filter_ids(self) -> tuple[str, ...]:
        """The filter ids the rule names ((): it finds its filter by `filter_tag` only)."""
        return self.filter_choices or ((self.filter_id,) if self.filter_id else ())

    def filter_words(self) -> tuple[str, ...]:
        """How the rule names its filters, for people: the ids, and `tagged K=V`."""
        tag = (f"tagged {self.filter_tag[0]}={self.filter_tag[1]}",) if self.filter_tag else ()
        return (*self.filter_ids, *tag)
