"""Which instance types can be a traffic mirror source: the emulator's own table.

Source: the Amazon VPC Traffic Mirroring guide, "Understand traffic mirror session concepts",
section "Traffic mirror sources", "Instance types"
(https://docs.aws.amazon.com/vpc/latest/mirroring/traffic-mirroring-sessions.html), as read
on 2026-12-06:

- not the virtualized Nitro types it lists (NITRO_EXCLUDED);
- not bare metal instances;
- of the non-Nitro (Xen) types only C4, D2, G3, G3s, H1, I3, M4, P2, P3, R4, X1 and X1e, so not
  T2 (the guide says so in as many words), nor C3, M3, R3, T1 and the other previous ones.

Whether a type is Nitro or Xen comes from moto's instance type data (`Hypervisor`), bare metal
from its name (`*.metal*`) or that data (`BareMetal`). A type moto does not know is taken as
a source. EC2 documents no error code for such a create: the emulator answers
`UnsupportedOperation` (EC2's common client error for "an unsupported operation", the code it
uses for an instance type a request cannot use), see docs/emulator.md. mirrorq's own planner
keeps its table apart (the emulator imports nothing of mirrorq's but config).
"""

from __future__ import annotations

from typing import Any

from moto.ec2.models.instance_types import INSTANCE_TYPES

UNSUPPORTED_SOURCE_CODE = "UnsupportedOperation"

# The only non-Nitro families that can be sources.
NON_NITRO_SOURCES = frozenset(
    {"c4", "d2", "g3", "g3s", "h1", "i3", "m4", "p2", "p3", "r4", "x1", "x1e"}
)
# Virtualized Nitro families that cannot be sources, by the guide's groups.
NITRO_EXCLUDED = frozenset(
    {
        # General purpose
        *("m8g", "m6a", "m6i", "m6id", "m6idn", "m6in", "m7a", "m7g", "m7gd", "m7i"),
        "m7i-flex",
        # Compute optimized
        *("c8g", "c6a", "c6gd", "c6gn", "c6i", "c6id", "c6in", "c7a", "c7g", "c7gd"),
        *("c7gn", "c7i"),
        # Memory optimized
        *("r8g", "r6a", "r6i", "r6id", "r6idn", "r6in", "r7a", "r7g", "r7gd", "r7i"),
        *("r7iz", "x8g", "x2idn", "x2iedn", "x2iezn"),
        # Storage optimized
        *("i4g", "i4i", "im4gn", "is4gen"),
        # Accelerated computing
        *("inf2", "p5", "trn1", "trn1n"),
        # High-performance computing
        *("hpc6a", "hpc6id", "hpc7a", "hpc7g"),
    }
)


def why_not_a_source(instance_type: str) -> str | None:
    """Why an ENI on `instance_type` cannot be a traffic mirror source; None if it can."""
    family, _, size = instance_type.partition(".")
    spec: dict[str, Any] = INSTANCE_TYPES.get(instance_type, {})
    if "metal" in size or spec.get("BareMetal"):
        return "bare metal instances cannot be traffic mirror sources"
    if family in NITRO_EXCLUDED:
        return f"the {family} family cannot be a traffic mirror source"
    if spec.get("Hypervisor") == "xen" and family not in NON_NITRO_SOURCES:
        return (
            f"{family} is not one of the non-Nitro families that can be traffic mirror "
            f"sources ({', '.join(sorted(NON_NITRO_SOURCES))})"
        )
    return None
