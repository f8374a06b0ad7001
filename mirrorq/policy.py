"""Policy files: which ENIs go to which sensor, as rules in TOML, validated with the file, the
rule and the field named in every error.

```toml
[[rules]]
name = "prod-web"                 # unique; recorded with every job the rule makes
vpc = ["vpc-0a1b2c3d"]            # selectors: vpc, subnet, tag ("K=V"), instance, eni
tag = ["Env=prod"]
target = "tmt-07f75d8feeEXAMPLE"  # or targets = [...] with choose = "same-az" | "least-loaded"
filter = "tmf-04812ff784EXAMPLE"
packet_length = 128               # optional: packet_length, virtual_network_id,
description = "prod web"          #   description, session_tags ("K=V")
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mirrorq.rules import Choose, Rule, Selectors, SessionOptions
from tasks.contract import FILTER_ID, TARGET_ID, parse_request
from tasks.errors import FieldError, InvalidJobError, MirrorqError

_Strict = ConfigDict(extra="forbid", frozen=True, strict=True)
KeyValue = Annotated[str, Field(pattern=r"^[^=]+=.*$")]
# The request syntax's names of a rule's session options, for errors the contract finds.
_OPTION_FIELDS = {
    "PacketLength": "packet_length",
    "VirtualNetworkId": "virtual_network_id",
    "Description": "description",
    "TagSpecifications": "session_tags",
}


class PolicyError(MirrorqError):
    """A policy file that cannot be used; names the file, and each rule and field."""

    code = "InvalidPolicy"

    def __init__(self, path: str, errors: list[FieldError]) -> None:
        self.path = path
        self.errors = errors
        super().__init__("\n".join(f"{path}: {e['field']}: {e['message']}" for e in errors))


class RuleSpec(BaseModel):
    """A rule as written in the file (the CLI's option names)."""

    model_config = _Strict

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/+-]+$")]
    vpc: list[Annotated[str, Field(pattern=r"^vpc-[0-9a-f]{8,17}$")]] = []
    subnet: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = []
    tag: list[KeyValue] = []
    instance: list[Annotated[str, Field(pattern=r"^i-[0-9a-f]{8,17}$")]] = []
    eni: list[Annotated[str, Field(pattern=r"^eni-[0-9a-f]{8,17}$")]] = []
    target: Annotated[str, Field(pattern=TARGET_ID)] | None = None
    targets: (
        Annotated[list[Annotated[str, Field(pattern=TARGET_ID)]], Field(min_length=1)] | None
    ) = None
    choose: Literal["same-az", "least-loaded"] | None = None
    filter: Annotated[str, Field(pattern=FILTER_ID)]
    packet_length: int | None = None
    virtual_network_id: int | None = None
    description: str | None = None
    session_tags: list[KeyValue] = []

    @model_validator(mode="after")
    def _coherent(self) -> RuleSpec:
        problem = _incoherence(self.model_dump())
        if problem:
            raise ValueError(problem)
        return self

    def to_rule(self) -> Rule:
        return Rule(
            name=self.name,
            selectors=Selectors(
                tuple(self.vpc),
                tuple(self.subnet),
                tuple(_pair(t) for t in self.tag),
                tuple(self.instance),
                tuple(self.eni),
            ),
            targets=tuple(self.targets or [self.target or ""]),
            filter_id=self.filter,
            choose=Choose(self.choose) if self.choose else None,
            options=SessionOptions(
                self.packet_length,
                self.virtual_network_id,
                self.description,
                tuple(_pair(t) for t in self.session_tags),
            ),
        )


def _incoherence(spec: dict[str, Any]) -> str | None:
    """What is wrong with how a rule's fields go together (not with any one field)."""
    if not any(spec.get(kind) for kind in ("vpc", "subnet", "tag", "instance", "eni")):
        return "name the ENIs: vpc, subnet, tag, instance or eni"
    target, targets, choose = spec.get("target"), spec.get("targets"), spec.get("choose")
    if (target is None) == (targets is None):
        return "give either target or targets (with choose)"
    if targets is not None and choose is None:
        return 'targets needs choose = "same-az" or "least-loaded"'
    if target is not None and choose is not None:
        return "choose only applies to targets"
    if isinstance(targets, list) and len(set(map(str, targets))) != len(targets):
        return "targets lists a target twice"
    return None


def _pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def load_policy(path: Path) -> list[Rule]:
    """The rules of a policy file, or PolicyError naming every problem."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise PolicyError(str(path), [{"field": "(file)", "message": str(error)}]) from None
    return read_policy(content, str(path))


def read_policy(content: bytes, path: str) -> list[Rule]:
    """The rules of a policy file's content (as read, to be hashed: policy_watch.py)."""
    try:
        raw = tomllib.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PolicyError(path, [{"field": "(file)", "message": str(error)}]) from None
    return parse_policy(raw, path)


def parse_policy(raw: dict[str, Any], path: str = "policy") -> list[Rule]:
    unknown = sorted(set(raw) - {"rules"})
    errors: list[FieldError] = [
        {"field": k, "message": "unknown key; a policy holds [[rules]]"} for k in unknown
    ]
    specs = raw.get("rules")
    if not isinstance(specs, list) or not specs:
        errors.append({"field": "rules", "message": "no [[rules]]"})
        raise PolicyError(path, errors)
    rules: list[Rule] = []
    names: set[str] = set()
    for n, spec in enumerate(specs, start=1):
        label = _label(n, spec)
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str):
            if name in names:
                errors.append({"field": f"{label}.name", "message": "another rule has this name"})
            names.add(name)
        rule, found = check_rule(spec)
        errors += [{**e, "field": f"{label}.{e['field']}"} for e in found]
        if rule is not None:
            rules.append(rule)
    if errors:
        raise PolicyError(path, errors)
    return rules


def check_rule(spec: Any) -> tuple[Rule | None, list[FieldError]]:
    """A rule as the file (or `mirrorq mirror`'s options) gives it, and what is wrong with it,
    each field named as written ("packet_length", "vpc.0", "(rule)")."""
    try:
        rule = RuleSpec.model_validate(spec).to_rule()
    except ValidationError as error:
        found: list[FieldError] = [
            {
                "field": ".".join(map(str, e["loc"])) or "(rule)",
                "message": e["msg"].removeprefix("Value error, "),
            }
            for e in error.errors(include_url=False)
        ]
        # A bad field stops pydantic before the rule as a whole is checked: check it here too,
        # so one run names every problem.
        problem = _incoherence(spec) if isinstance(spec, dict) else None
        if problem and all(e["field"] != "(rule)" for e in found):
            found.append({"field": "(rule)", "message": problem})
        return None, found
    found = _option_errors(rule)
    return (None if found else rule), found


def _label(n: int, spec: Any) -> str:
    name = spec.get("name") if isinstance(spec, dict) else None
    return f"rules[{n}] ({name})" if isinstance(name, str) else f"rules[{n}]"


def _option_errors(rule: Rule) -> list[FieldError]:
    """The session options checked by the job contract itself, as a job would carry them."""
    sample = {
        "NetworkInterfaceId": "eni-00000000",
        "TrafficMirrorTargetId": rule.targets[0],
        "TrafficMirrorFilterId": rule.filter_id,
        "SessionNumber": "auto",
        **rule.options.request_fields(),
    }
    try:
        parse_request(sample)
    except InvalidJobError as error:
        return [
            {
                "field": _OPTION_FIELDS.get(e["field"].split(".")[0], e["field"]),
                "message": e["message"],
            }
            for e in error.errors
        ]
    return []
