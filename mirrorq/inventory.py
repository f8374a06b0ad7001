"""EC2's state, read for planning: ENIs, sessions, and targets with their zones and limits.

Every Describe call goes the one way every EC2 call goes (worker/ec2.py): paginated (a client
that forgets to misses ENIs), paid for at the fleet's shared limiter for its action, retried
as a job's calls are, each throttle told to that limiter and every call counted in the
metrics, so a burst of events or a reconcile cannot spend a bucket EC2 is refusing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from botocore.exceptions import ClientError

from mirrorq.planning import Target
from mirrorq.rules import Rule
from tasks.errors import UnknownResourceError
from worker.ec2 import Ec2Road
from worker.errors import classify

PAGE_SIZE = 1000  # EC2's maximum for the paginated Describe calls
FILTER_VALUES = 200  # values per filter in one call: more go in several calls
# Instances per DescribeInstances call: an instance's description is long (a hundred fields),
# so a call of 200 can take seconds to answer (moto's emulator: 2 s unloaded); 50 keep each
# answer well inside a read timeout.
INSTANCES_PER_CALL = 50
SOURCES_PER_TARGET = 10  # EC2: a network-interface target takes 10 sources...
SOURCES_PER_LARGEST_TARGET = 100  # ...or 100 on the largest size of its instance family
ALL_ZONES = frozenset({"network-load-balancer", "gateway-load-balancer-endpoint"})


class Inventory:
    def __init__(self, road: Ec2Road) -> None:
        self._road = road
        # Per instance family, its largest sizes: instance types change only with EC2 itself.
        self._largest: dict[str, frozenset[str]] = {}

    # ENIs and sessions -----------------------------------------------------------------------

    async def enis(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self._road.paginate(
            "DescribeNetworkInterfaces",
            "NetworkInterfaces",
            Filters=filters,
            MaxResults=PAGE_SIZE,
        )

    async def enis_for(self, rules: Iterable[Rule]) -> list[dict[str, Any]]:
        """Every ENI some rule's selectors match (one filtered listing per rule)."""
        found: dict[str, dict[str, Any]] = {}
        for rule in rules:
            for eni in await self.enis(rule.selectors.filters()):
                found.setdefault(eni["NetworkInterfaceId"], eni)
        return list(found.values())

    async def enis_named(
        self, *, eni_ids: Iterable[str] = (), instance_ids: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """These ENIs, and every ENI attached to these instances (not only the primary)."""
        filters = [("network-interface-id", eni_ids), ("attachment.instance-id", instance_ids)]
        return await _union(self.enis, filters, "NetworkInterfaceId")

    async def instance_types(self, enis: Iterable[dict[str, Any]]) -> dict[str, str]:
        """The instance type of each of these ENIs attached to an instance, by ENI id (which
        ones can be mirror sources: mirrorq/eligibility.py). An instance gone since is left
        out: filtered by id, not named (a named one that is gone fails the whole call)."""
        instance_of = {
            e["NetworkInterfaceId"]: instance
            for e in enis
            if (instance := (e.get("Attachment") or {}).get("InstanceId"))
        }
        ids = sorted(set(instance_of.values()))
        types: dict[str, str] = {}
        for start in range(0, len(ids), INSTANCES_PER_CALL):
            chunk = ids[start : start + INSTANCES_PER_CALL]
            reservations = await self._road.paginate(
                "DescribeInstances",
                "Reservations",
                Filters=[{"Name": "instance-id", "Values": chunk}],
                MaxResults=PAGE_SIZE,
            )
            types |= {
                i["InstanceId"]: i["InstanceType"] for r in reservations for i in r["Instances"]
            }
        return {eni: types[i] for eni, i in instance_of.items() if i in types}

    async def sessions(self, filters: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"MaxResults": PAGE_SIZE}
        if filters:
            kwargs["Filters"] = filters
        return await self._road.paginate(
            "DescribeTrafficMirrorSessions", "TrafficMirrorSessions", **kwargs
        )

    async def sessions_touching(
        self, eni_ids: Iterable[str], target_ids: Iterable[str]
    ) -> list[dict[str, Any]]:
        """The sessions on these ENIs, and those to these targets (their load)."""
        filters = [("network-interface-id", eni_ids), ("traffic-mirror-target-id", target_ids)]
        return await _union(self.sessions, filters, "TrafficMirrorSessionId")

    # Targets and filters ---------------------------------------------------------------------

    async def targets(
        self, target_ids: Iterable[str], *, missing_ok: bool = False
    ) -> dict[str, Target]:
        """These targets with the zone each serves and the sources it takes. One that does not
        exist is refused, named (or, with `missing_ok`, left out)."""
        wanted = sorted(set(target_ids))
        described = await self._road.paginate(
            "DescribeTrafficMirrorTargets", "TrafficMirrorTargets"
        )
        found = {
            t["TrafficMirrorTargetId"]: t for t in described if t["TrafficMirrorTargetId"] in wanted
        }
        missing = [t for t in wanted if t not in found]
        if missing and not missing_ok:
            raise UnknownResourceError("target", missing)
        eni_ids = [t["NetworkInterfaceId"] for t in found.values() if t.get("NetworkInterfaceId")]
        enis = {e["NetworkInterfaceId"]: e for e in await self.enis_named(eni_ids=eni_ids)}
        sizes = await self._instance_types(
            [(e.get("Attachment") or {}).get("InstanceId") for e in enis.values()]
        )
        largest = await self._largest_types({t.partition(".")[0] for t in sizes.values()})
        targets = {}
        for target_id, t in found.items():
            eni = enis.get(t.get("NetworkInterfaceId") or "")
            if t.get("Type") in ALL_ZONES or not t.get("NetworkInterfaceId"):
                targets[target_id] = Target(target_id)
                continue
            if eni is None:
                # Another account's sensor ENI, shared with this one (RAM): its zone and
                # instance are not this account's to describe. It takes sources all the same;
                # counted as a small size's, the fewer (its owner's view, when the pass
                # reads it, says more: planning.plan_places).
                targets[target_id] = Target(
                    target_id, t["NetworkInterfaceId"], source_limit=SOURCES_PER_TARGET
                )
                continue
            instance = str((eni.get("Attachment") or {}).get("InstanceId"))
            largest_size = sizes.get(instance, "") in largest
            limit = SOURCES_PER_LARGEST_TARGET if largest_size else SOURCES_PER_TARGET
            targets[target_id] = Target(
                target_id, eni["NetworkInterfaceId"], eni.get("AvailabilityZone"), limit
            )
        return targets

    async def all_target_enis(self) -> set[str]:
        """Every ENI that is some target's (a target cannot be a source)."""
        described = await self._road.paginate(
            "DescribeTrafficMirrorTargets", "TrafficMirrorTargets"
        )
        return {t["NetworkInterfaceId"] for t in described if t.get("NetworkInterfaceId")}

    async def require_filters(self, filter_ids: Iterable[str]) -> None:
        wanted = sorted(set(filter_ids))
        missing = [f for f in wanted if f not in await self.existing_filters(wanted)]
        if missing:
            raise UnknownResourceError("filter", missing[:1])

    async def existing_filters(self, filter_ids: Iterable[str]) -> set[str]:
        """Those of these filters that exist here (a filter is its account-Region's own)."""
        found: set[str] = set()
        for filter_id in sorted(set(filter_ids)):
            try:
                described = await self._road.paginate(
                    "DescribeTrafficMirrorFilters",
                    "TrafficMirrorFilters",
                    TrafficMirrorFilterIds=[filter_id],
                )
            except ClientError as error:
                if not classify(error).not_found:
                    raise
                described = []
            if described:
                found.add(filter_id)
        return found

    async def tagged_filters(
        self, tags: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], list[str]]:
        """Per tag (key, value), the ids of the filters here that have it, sorted. One listing
        of every filter, matched on its tags here: EC2 documents only `description` and
        `traffic-mirror-filter-id` as this call's filters, not `tag:<key>` (moto ignores a
        name it does not know, and so would return every filter)."""
        wanted = set(tags)
        if not wanted:
            return {}
        described = await self._road.paginate(
            "DescribeTrafficMirrorFilters", "TrafficMirrorFilters", MaxResults=PAGE_SIZE
        )
        found: dict[tuple[str, str], list[str]] = {tag: [] for tag in wanted}
        for f in described:
            for tag in {(t["Key"], t.get("Value", "")) for t in f.get("Tags") or []} & wanted:
                found[tag].append(f["TrafficMirrorFilterId"])
        return {tag: sorted(ids) for tag, ids in found.items()}

    async def _instance_types(self, instance_ids: Iterable[str | None]) -> dict[str, str]:
        ids = sorted({i for i in instance_ids if i})
        if not ids:
            return {}
        reservations = await self._road.paginate(
            "DescribeInstances", "Reservations", InstanceIds=ids
        )
        return {i["InstanceId"]: i["InstanceType"] for r in reservations for i in r["Instances"]}

    async def _largest_types(self, families: set[str]) -> frozenset[str]:
        """The largest sizes of these families (their types described by a wildcard filter:
        describing all of EC2's ~1,000 types would cost seconds)."""
        if wanted := sorted(families - set(self._largest)):
            described = await self._road.paginate(
                "DescribeInstanceTypes",
                "InstanceTypes",
                Filters=[{"Name": "instance-type", "Values": [f"{f}.*" for f in wanted]}],
            )
            largest = _largest(described)
            for family in wanted:
                self._largest[family] = frozenset(t for t in largest if t.startswith(f"{family}."))
        return frozenset().union(*(self._largest[f] for f in families))


async def _union(
    describe: Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]],
    filters: list[tuple[str, Iterable[str]]],
    key: str,
) -> list[dict[str, Any]]:
    """What matches any value of any of these filters, each item once; a filter's values go
    FILTER_VALUES to a call."""
    found: dict[str, dict[str, Any]] = {}
    for name, values in filters:
        wanted = sorted(set(values))
        for start in range(0, len(wanted), FILTER_VALUES):
            chunk = wanted[start : start + FILTER_VALUES]
            for item in await describe([{"Name": name, "Values": chunk}]):
                found.setdefault(item[key], item)
    return list(found.values())


def _largest(described: list[dict[str, Any]]) -> frozenset[str]:
    """Per instance family, the sizes with the most vCPUs, bare metal aside: EC2's "largest
    size", whose network-interface targets take 100 sources instead of 10."""
    vcpus = {
        t["InstanceType"]: t.get("VCpuInfo", {}).get("DefaultVCpus", 0)
        for t in described
        if not t.get("BareMetal") and "metal" not in t["InstanceType"].partition(".")[2]
    }
    most: dict[str, int] = {}
    for name, count in vcpus.items():
        family = name.partition(".")[0]
        most[family] = max(most.get(family, 0), count)
    return frozenset(n for n, c in vcpus.items() if c == most[n.partition(".")[0]])
