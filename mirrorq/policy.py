"""Policy files: which ENIs go to which sensor, as rules in TOML, validated with the file, the
rule and the field named in every error.

```toml
prune = false                     # optional: every rule's `prune` unless it sets its own

[[rules]]
name = "prod-web"                 # unique; recorded with every job the rule makes
vpc = ["vpc-0a1b2c3d"]            # selectors: vpc, subnet, tag ("K=V"), instance, eni
tag = ["Env=prod"]
target = "tmt-07f75d8fee0a1b2c3"  # or targets = [...] with choose = "same-az" | "least-loaded"
filter = "tmf-04812ff7840a1b2c3"  # or filters = [...]: each used where it exists
filter_tag = "mirrorq:filter=web" # and/or: where no id exists, the one filter tagged so
packet_length = 128               # optional: packet_length, virtual_network_id,
description = "prod web"          #   description, session_tags ("K=V")
accounts = ["prod"]               # optional: the [[accounts]] it applies to (default: all)
prune = true                      # optional: reconcile deletes the sessions it no longer wants

[[accounts]]                      # optional: without any, rules run at the fleet's own place
name = "prod"                     # unique, as rules name it
role_arn = "arn:aws:iam::111111111111:role/mirrorq"  # one entry per account
regions = ["us-east-1", "eu-west-1"]
external_id = "mirrorq-prod"      # optional: the ExternalId its trust policy asks for
```

A rule applies to every Region of every account it applies to: each account-Region is a
*place*, planned on its own (targets and filters are Regional, so a rule's `targets` and
`filters` may list those of several places: each place uses the ones that exist there; or
`filter_tag` finds each place's own: a place where no filter has the tag is `missing`, one
where several have it is refused, named).

`prune` (a rule's, else the policy's, default false) makes every reconcile pass delete the
rule's managed sessions it no longer wants, as `reconcile --prune` does for every rule; the
sessions of a rule no longer in the policy are deleted by `--prune`, or by a pass whose every
rule prunes (mirrorq/prune.py).
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mirrorq.managed import RULE_TAG, managed_fields
from mirrorq.rules import Choose, Rule, Selectors, SessionOptions
from tasks.contract import (
    FILTER_ID,
    TARGET_ID,
    ExternalId,
    Placement,
    RegionName,
    RoleArn,
    parse_request,
)
from tasks.errors import FieldError, InvalidJobError, PolicyError

_Strict = ConfigDict(extra="forbid", frozen=True, strict=True)
KeyValue = Annotated[str, Field(pattern=r"^[^=]+=.*$")]
# EC2's tags: a key of 1-128 characters, a value of at most 256.
TagKeyValue = Annotated[str, Field(pattern=r"^[^=]{1,128}=.{0,256}$")]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/+-]+$")]
# The request syntax's names of a rule's session options, for errors the contract finds.
_OPTION_FIELDS = {
    "PacketLength": "packet_length",
    "VirtualNetworkId": "virtual_network_id",
    "Description": "description",
    "TagSpecifications": "session_tags",
}


class RuleSpec(BaseModel):
    """A rule as written in the file (the CLI's option names)."""

    model_config = _Strict

    name: Name
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
    filter: Annotated[str, Field(pattern=FILTER_ID)] | None = None
    filters: (
        Annotated[list[Annotated[str, Field(pattern=FILTER_ID)]], Field(min_length=1)] | None
    ) = None
    filter_tag: TagKeyValue | None = None
    accounts: Annotated[list[Name], Field(min_length=1)] | None = None
    packet_length: int | None = None
    virtual_network_id: int | None = None
    description: str | None = None
    session_tags: list[KeyValue] = []
    prune: bool | None = None

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
            filter_id=(self.filters or [self.filter or ""])[0],
            filter_choices=tuple(self.filters or ()),
            filter_tag=_pair(self.filter_tag) if self.filter_tag is not None else None,
            choose=Choose(self.choose) if self.choose else None,
            options=SessionOptions(
                self.packet_length,
                self.virtual_network_id,
                self.description,
                tuple(_pair(t) for t in self.session_tags),
            ),
            prune=bool(self.prune),
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
    return _filter_incoherence(spec)


def _filter_incoherence(spec: dict[str, Any]) -> str | None:
    filter_, filters = spec.get("filter"), spec.get("filters")
    if filter_ is not None and filters is not None:
        return "give either filter or filters"
    if filter_ is None and filters is None and spec.get("filter_tag") is None:
        return "give filter, filters or filter_tag"
    if isinstance(filters, list) and len(set(map(str, filters))) != len(filters):
        return "filters lists a filter twice"
    return None


class AccountSpec(BaseModel):
    """An [[accounts]] entry: a role to assume, and the Regions to plan there."""

    model_config = _Strict

    name: Name
    role_arn: RoleArn
    regions: Annotated[list[RegionName], Field(min_length=1)]
    external_id: ExternalId | None = None

    def places(self) -> tuple[Placement, ...]:
        return tuple(
            Placement(region=r, role_arn=self.role_arn, external_id=self.external_id)
            for r in dict.fromkeys(self.regions)
        )


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
    unknown = sorted(set(raw) - {"rules", "accounts", "prune"})
    errors: list[FieldError] = [
        {"field": k, "message": "unknown key; a policy holds prune, [[rules]] and [[accounts]]"}
        for k in unknown
    ]
    prune = raw.get("prune", False)
    if not isinstance(prune, bool):
        errors.append({"field": "prune", "message": "Input should be a valid boolean"})
    accounts = _accounts(raw.get("accounts"), errors)
    specs = raw.get("rules")
    if not isinstance(specs, list) or not specs:
        errors.append({"field": "rules", "message": "no [[rules]]"})
        raise PolicyError(path, errors)
    rules: list[Rule] = []
    names: set[str] = set()
    for n, spec in enumerate(specs, start=1):
        label = _label("rules", n, spec)
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str):
            if name in names:
                errors.append({"field": f"{label}.name", "message": "another rule has this name"})
            names.add(name)
        rule, found = check_rule(spec)
        errors += [{**e, "field": f"{label}.{e['field']}"} for e in found]
        if rule is not None:
            places, found = _rule_places(spec.get("accounts"), accounts)
            errors += [{**e, "field": f"{label}.{e['field']}"} for e in found]
            own = spec.get("prune")
            rules.append(replace(rule, places=places, prune=prune is True if own is None else own))
    if errors:
        raise PolicyError(path, errors)
    return rules


def _accounts(specs: Any, errors: list[FieldError]) -> dict[str, AccountSpec] | None:
    """The [[accounts]] by name (None: the policy has none), adding what is wrong to
    `errors`: a bad field, a name or an account (the role ARN's) given twice."""
    if specs is None:
        return None
    if not isinstance(specs, list) or not specs:
        errors.append({"field": "accounts", "message": "give [[accounts]] entries, or none"})
        return {}
    accounts: dict[str, AccountSpec] = {}
    by_account: dict[str, str] = {}
    for n, spec in enumerate(specs, start=1):
        label = _label("accounts", n, spec)
        try:
            account = AccountSpec.model_validate(spec)
        except ValidationError as error:
            errors += [
                {
                    "field": f"{label}.{'.'.join(map(str, e['loc'])) or '(entry)'}",
                    "message": e["msg"].removeprefix("Value error, "),
                }
                for e in error.errors(include_url=False)
            ]
            continue
        account_id = str(Placement(role_arn=account.role_arn).account_id)
        if account.name in accounts:
            errors.append({"field": f"{label}.name", "message": "another entry has this name"})
        elif account_id in by_account:
            errors.append(
                {
                    "field": f"{label}.role_arn",
                    "message": f"account {account_id} has an entry already "
                    f"({by_account[account_id]}): give one entry per account, with its Regions",
                }
            )
        else:
            accounts[account.name] = account
            by_account[account_id] = account.name
    return accounts


def _rule_places(
    named: Any, accounts: dict[str, AccountSpec] | None
) -> tuple[tuple[Placement, ...], list[FieldError]]:
    """The places a rule applies to: those of the accounts it names, else of every account
    (none: a policy without [[accounts]] plans at the fleet's default place)."""
    if named is None:
        chosen = list((accounts or {}).values())
        return tuple(p for a in chosen for p in a.places()), []
    unknown: list[FieldError] = [
        {"field": f"accounts.{i}", "message": f"no [[accounts]] entry is named {name!r}"}
        for i, name in enumerate(named)
        if name not in (accounts or {})
    ]
    if unknown or accounts is None:
        return (), unknown
    chosen = [a for name, a in accounts.items() if name in named]
    return tuple(p for a in chosen for p in a.places()), []


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


def _label(table: str, n: int, spec: Any) -> str:
    name = spec.get("name") if isinstance(spec, dict) else None
    return f"{table}[{n}] ({name})" if isinstance(name, str) else f"{table}[{n}]"


def _option_errors(rule: Rule) -> list[FieldError]:
    """The session options checked by the job contract itself, as a job would carry them."""
    sample = {
        "NetworkInterfaceId": "eni-00000000",
        "TrafficMirrorTargetId": rule.targets[0],
        "TrafficMirrorFilterId": (*rule.filter_ids, "tmf-00000000")[0],  # or by its tag
        "SessionNumber": "auto",
        **managed_fields(rule),  # its tags, and the one that marks its sessions
    }
    if any(key == RULE_TAG for key, _ in rule.options.session_tags):
        return [{"field": "session_tags", "message": f"{RULE_TAG} is mirrorq's own tag"}]
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
