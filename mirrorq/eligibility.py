"""Which instance types can be traffic mirror sources: one table, from AWS's own words.

Source: Amazon VPC Traffic Mirroring guide, "Traffic Mirroring limitations" > "Instance types"
(https://docs.aws.amazon.com/vpc/latest/mirroring/traffic-mirroring-network-limitations.html;
the same list under "Traffic mirror sources" in traffic-mirroring-sessions.html), read on
2026-12-06:

- "Traffic Mirroring is not available on the following virtualized Nitro instance types"
  (UNSUPPORTED_NITRO below, family by family as the guide lists them);
- "Traffic Mirroring is not available on bare metal instances" (a size `metal`, `metal-*`);
- "Traffic Mirroring is available only on the following non-Nitro instances types: C4, D2, G3,
  G3s, H1, I3, M4, P2, P3, R4, X1, and X1e. Note that this does not include T2 instances."
  (SUPPORTED_XEN; XEN_FAMILIES are the previous-generation Xen families outside that list,
  from the EC2 User Guide's "Instances built on the AWS Nitro System" reading: a family that
  is not Nitro there.)

A family in none of these lists (a new Nitro family) is taken as eligible: EC2 answers for it,
and that answer is a job's outcome. When the guide changes, change this table and its date.
"""

from __future__ import annotations

UNSUPPORTED_NITRO = frozenset(
    {
        # General purpose
        "m8g", "m6a", "m6i", "m6id", "m6idn", "m6in", "m7a", "m7g", "m7gd", "m7i", "m7i-flex",
        # Compute optimized
        "c8g", "c6a", "c6gd", "c6gn", "c6i", "c6id", "c6in", "c7a", "c7g", "c7gd", "c7gn",
        "c7i",
        # Memory optimized
        "r8g", "r6a", "r6i", "r6id", "r6idn", "r6in", "r7a", "r7g", "r7gd", "r7i", "r7iz",
        "x8g", "x2idn", "x2iedn", "x2iezn",
        # Storage optimized
        "i4g", "i4i", "im4gn", "is4gen",
        # Accelerated computing
        "inf2", "p5", "trn1", "trn1n",
        # High-performance computing
        "hpc6a", "hpc6id", "hpc7a", "hpc7g",
    }
)  # fmt: skip
SUPPORTED_XEN = frozenset(
    {"c4", "d2", "g3", "g3s", "h1", "i3", "m4", "p2", "p3", "r4", "x1", "x1e"}
)
XEN_FAMILIES = frozenset(
    {"t1", "t2", "m1", "m2", "m3", "c1", "c3", "cc2", "cr1", "g2", "hi1", "hs1", "i2", "r3"}
)


def unsupported(instance_type: str) -> str | None:
    """Why an instance of this type cannot be a traffic mirror source (for people: `t2 is not
    Nitro`, `bare metal`, ...), or None if it can (or is not known not to)."""
    family, _, size = instance_type.lower().partition(".")
    if size == "metal" or size.startswith("metal-"):
        return "bare metal"
    if family in UNSUPPORTED_NITRO:
        return f"{family} is not supported"
    if family in XEN_FAMILIES and family not in SUPPORTED_XEN:
        return f"{family} is not Nitro"
    return None
