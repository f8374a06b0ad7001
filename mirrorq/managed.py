"""Which sessions mirrorq manages: those it made from a rule carry the tag `mirrorq:rule` = the
rule's name (in EC2 itself, so ownership survives the loss of Redis and shows in the console).

Prune, unmirror and retarget touch only sessions with that tag, unless an operator names a
session by its id. `mirrorq mirror` (no policy) tags its sessions with MIRROR_RULE, a name no
policy rule can have (rule names allow no `@`: mirrorq/policy.py), so a policy's prune never
takes them for the sessions of a rule it no longer has. `@` is among the characters every AWS
service allows in tags (letters, digits, spaces and `+ - = . _ : / @`; EC2 itself takes any).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrorq.rules import Rule

RULE_TAG = "mirrorq:rule"
MIRROR_RULE = "@mirror"  # the rule name of `mirrorq mirror`'s sessions


def rule_tag(rule: str) -> dict[str, str]:
    """The tag a session made by `rule` carries."""
    return {"Key": RULE_TAG, "Value": rule or MIRROR_RULE}


def rule_of(session: Mapping[str, Any]) -> str | None:
    """The rule that made a session, as DescribeTrafficMirrorSessions lists it; None for a
    session mirrorq does not manage."""
    for tag in session.get("Tags") or ():
        if tag.get("Key") == RULE_TAG:
            return str(tag.get("Value", ""))
    return None


def is_managed(session: Mapping[str, Any]) -> bool:
    return rule_of(session) is not None


def managed_fields(rule: Rule) -> dict[str, Any]:
    """The rule's session options in the request syntax, its session tags with the tag that
    marks a session as the rule's (a tag of the rule's own under that key is replaced)."""
    fields = rule.options.request_fields()
    specs = fields.pop("TagSpecifications", [])
    tags = [t for spec in specs for t in spec["Tags"] if t["Key"] != RULE_TAG]
    tags.append(rule_tag(rule.name))
    fields["TagSpecifications"] = [{"ResourceType": "traffic-mirror-session", "Tags": tags}]
    return fields
