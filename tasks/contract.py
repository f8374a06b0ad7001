"""The job contract: the seed's request syntax, validated strictly, and the message envelope.

AWS shapes stay verbatim (PascalCase); mirrorq's envelope is snake_case. Every input, however
hostile, becomes a valid request or an InvalidJobError that names each offending field.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.errors import FieldError, InvalidJobError

if TYPE_CHECKING:
    from config import Settings

TASK_NAME = "mirrorq.create_traffic_mirror_session"
# The single-job tasks of the other kinds (JobKind), documented for other services' send_task.
DELETE_TASK_NAME = "mirrorq.delete_traffic_mirror_session"
MODIFY_TASK_NAME = "mirrorq.modify_traffic_mirror_session"
# How batches travel: several jobs to a message (see Settings.jobs_per_message), of any kinds
# (each job's envelope names its `kind`).
BATCH_TASK_NAME = "mirrorq.create_traffic_mirror_sessions"
# The queue of the default scope (MIRRORQ_AWS_ACCOUNT_ID unset): the single-fleet deployment,
# and where other services' `send_task` calls go. A named account's fleet has its own.
QUEUE = "mirrorq"
# MIRRORQ_AWS_ACCOUNT_ID's value when it is unset: the default credentials' account, unnamed.
DEFAULT_ACCOUNT = "default"

SESSION_NUMBER_MAX = 32766
PACKET_LENGTH_MAX = 8500
VIRTUAL_NETWORK_ID_MAX = 2**24 - 1  # VXLAN network identifiers are 24 bits
CLIENT_TOKEN_MAX = 64
# The longest job id a worker records a refusal under (mirrorq's own ids are uuid4s); a message
# naming a longer one is logged and dropped. Job ids over CLIENT_TOKEN_MAX run only with a
# ClientToken of their own (see client_token).
JOB_ID_MAX = 128
MAX_TAGS = 50
# mirrorq's one extension to the request syntax: the worker picks the lowest SessionNumber
# free on the ENI when the job runs, under a per-ENI lease, and records it before calling EC2.
AUTO = "auto"

# EC2's ids, and the ones plain moto and LocalStack issue for targets and filters
# (`traf-mir-tar-…`, `traf-mir-fil-…`), so teams can point mirrorq at the stand-in their CI
# already runs. Each prefix still belongs to one kind: a filter id in the target field, or a
# typo'd prefix, is refused.
ENI_ID = r"^eni-[0-9a-f]{8,17}$"
TARGET_ID = r"^(tmt|traf-mir-tar)-[0-9a-f]{8,17}$"
FILTER_ID = r"^(tmf|traf-mir-fil)-[0-9a-f]{8,17}$"
SESSION_ID = r"^tms-[0-9a-f]{8,17}$"
VPC_ID = r"^vpc-[0-9a-f]{8,17}$"
SUBNET_ID = r"^subnet-[0-9a-f]{8,17}$"
INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"
# A rule's name as a selector (its sessions' mirrorq:rule tag value): 1 to 256 characters,
# EC2's limit for a tag's value.
RULE_NAME_MAX = 256


class JobKind(StrEnum):
    """What a job does to EC2: one Traffic Mirroring action each. A job's request is that
    action's own request syntax (`SessionRequest`, `DeleteSessionRequest`,
    `ModifySessionRequest`); an envelope that names no kind is a create, as every job was
    before kinds."""

    CREATE = "create"
    DELETE = "delete"
    MODIFY = "modify"

    @property
    def action(self) -> str:
        """The EC2 action the job's attempts call (and the limiter they are paid at)."""
        return _ACTIONS[self]

    @property
    def task_name(self) -> str:
        """The documented single-job task of the kind (batches travel as BATCH_TASK_NAME)."""
        return _TASK_NAMES[self]


_ACTIONS = {
    JobKind.CREATE: "CreateTrafficMirrorSession",
    JobKind.DELETE: "DeleteTrafficMirrorSession",
    JobKind.MODIFY: "ModifyTrafficMirrorSession",
}
_TASK_NAMES = {
    JobKind.CREATE: TASK_NAME,
    JobKind.DELETE: DELETE_TASK_NAME,
    JobKind.MODIFY: MODIFY_TASK_NAME,
}
# The single-job task names, each with the kind of job it carries.
KIND_OF_TASK = {name: kind for kind, name in _TASK_NAMES.items()}


@dataclass(frozen=True)
class Scope:
    """The account and Region a job runs in, and a fleet serves: (MIRRORQ_AWS_ACCOUNT_ID,
    MIRRORQ_REGION). Each scope has its queue, so fleets sharing one Redis never take each
    other's jobs; a job's record keeps the scope it was accepted for."""

    account_id: str | None  # None: MIRRORQ_AWS_ACCOUNT_ID unset (the default credentials')
    region: str

    @property
    def queue(self) -> str:
        return queue_for(self.account_id, self.region)

    def describe(self) -> str:
        account = (
            f"account {self.account_id}"
            if self.account_id
            else "the default account (MIRRORQ_AWS_ACCOUNT_ID unset)"
        )
        return f"{account} in {self.region}"


def queue_for(account_id: str | None, region: str) -> str:
    """The queue of a scope: `mirrorq` for the default account (whatever the Region: the queue
    every deployment had before scopes), `mirrorq.<account>.<region>` for a named one."""
    return f"{QUEUE}.{account_id}.{region}" if account_id else QUEUE


def fleet_scope(settings: Settings) -> Scope:
    """The scope a process serves (workers) or accepts jobs for (producers)."""
    account = settings.aws_account_id
    return Scope(None if account == DEFAULT_ACCOUNT else account, settings.region)


def fleet_queue(settings: Settings) -> str:
    return fleet_scope(settings).queue


# A job's own placement: its Region, and the role it runs through (another account's).
#
# Partitions: `aws` only. A fleet's credentials belong to one partition and IAM roles are
# never assumed across partitions, and the `aws-cn` / `aws-us-gov` partitions have endpoints,
# ARNs and STS rules of their own that mirrorq does not drive: an ARN or a Region of another
# partition is refused at submission, saying so.
PARTITIONS = ("aws",)
# IAM's role ARN: arn:<partition>:iam::<12-digit account>:role/<path/><name>. A path is
# `/`-separated segments; a role name is 1-64 of [\w+=,.@-] (IAM's own rules).
ROLE_ARN_SHAPE = r"^arn:{partition}:iam::[0-9]{{12}}:role/(?:[!-~]+/)*[A-Za-z0-9_+=,.@-]{{1,64}}$"
ROLE_ARN = re.compile(ROLE_ARN_SHAPE.format(partition="[a-z][a-z0-9-]*"))
ROLE_ARN_PATTERN = ROLE_ARN_SHAPE.format(partition="|".join(PARTITIONS))  # as documented
ROLE_ARN_RULE = "an IAM role ARN: arn:aws:iam::<12-digit account>:role/<path/><name>"
ROLE_ARN_MAX = 2048  # STS's RoleArn
# STS's ExternalId: 2-1,224 characters of [\w+=,.@:/-].
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9_+=,.@:/-]{2,1224}$"
EXTERNAL_ID = re.compile(EXTERNAL_ID_PATTERN)
EXTERNAL_ID_RULE = "2 to 1,224 characters of letters, digits and _ + = , . @ : / -"


_REGIONS_READ = threading.Lock()
# EC2's endpoint prefix in botocore's model (`metadata.endpointPrefix`): the name its Regions
# are listed under in botocore's endpoint data.
EC2_ENDPOINT_PREFIX = "ec2"

if TYPE_CHECKING:
    from botocore.regions import EndpointResolver


@functools.cache
def ec2_regions(partition: str) -> frozenset[str]:
    """The Regions EC2 has in `partition`, from botocore's endpoint data (the same data its
    clients resolve endpoints from), so a new Region comes with a botocore upgrade.

    Read once per process, under a lock, from the endpoint data alone: botocore's
    `get_available_regions` also loads the EC2 model (a large gzipped JSON, a fifth of a CPU
    second) only to learn EC2's endpoint prefix, in every process that checks a Region."""
    with _REGIONS_READ:
        return _read_regions(partition)


@functools.cache
def _read_regions(partition: str) -> frozenset[str]:
    return frozenset(_endpoints().get_available_endpoints(EC2_ENDPOINT_PREFIX, partition))


@functools.cache
def _endpoints() -> EndpointResolver:
    """botocore's endpoint data, as a session's loader finds it (AWS_DATA_PATH too)."""
    import botocore.session
    from botocore.regions import EndpointResolver

    loader = botocore.session.get_session().get_component("data_loader")
    return EndpointResolver(loader.load_data("endpoints"))


def partition_of_region(region: str) -> str | None:
    """The partition whose EC2 has `region`, among those botocore knows; None for none."""
    for partition in _endpoints().get_available_partitions():
        if region in ec2_regions(partition):
            return partition
    return None


def _region(region: str) -> str:
    if region in ec2_regions("aws"):
        return region
    partition = partition_of_region(region)
    if partition is not None:
        raise ValueError(
            f"{region} is a Region of the {partition} partition; mirrorq serves the "
            f"{', '.join(PARTITIONS)} partition only"
        )
    raise ValueError(f"not a Region EC2 has: {region!r} (e.g. us-east-1, eu-west-1)")


def _role_arn(arn: str) -> str:
    match = ROLE_ARN.fullmatch(arn) if len(arn) <= ROLE_ARN_MAX else None
    if match is None:
        raise ValueError(f"not {ROLE_ARN_RULE}")
    partition = arn.split(":")[1]
    if partition not in PARTITIONS:
        raise ValueError(
            f"partition {partition} is not served: mirrorq assumes roles in the "
            f"{', '.join(PARTITIONS)} partition only (roles are not assumed across partitions)"
        )
    return arn


def _external_id(external_id: str) -> str:
    if EXTERNAL_ID.fullmatch(external_id) is None:
        raise ValueError(f"STS takes an ExternalId of {EXTERNAL_ID_RULE}")
    return external_id


RegionName = Annotated[str, AfterValidator(_region)]
RoleArn = Annotated[str, AfterValidator(_role_arn)]
ExternalId = Annotated[str, AfterValidator(_external_id)]
PLACEMENT_FIELDS = ("region", "role_arn", "external_id")


class _Placed(BaseModel):
    """The placement fields, on a job's Placement and on its message's Envelope alike."""

    region: RegionName | None = None
    role_arn: RoleArn | None = None
    external_id: ExternalId | None = None

    @model_validator(mode="after")
    def _external_id_with_a_role(self) -> Any:
        if self.external_id is not None and self.role_arn is None:
            raise _AtField("external_id", "an external_id is sent with a role_arn only")
        return self

    @property
    def placement(self) -> Placement:
        return Placement(region=self.region, role_arn=self.role_arn, external_id=self.external_id)


class Placement(_Placed):
    """Where a job runs, beside its request (never inside it): the Region (None: the
    accepting fleet's MIRRORQ_REGION) and the role it runs through (None: the fleet's own
    credentials), with the role's ExternalId if its trust policy asks for one."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @property
    def account_id(self) -> str | None:
        """The role's account, read from its ARN; None without a role."""
        return self.role_arn.split(":")[4] if self.role_arn else None

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in PLACEMENT_FIELDS)


NOWHERE = Placement()  # a job that names no placement: the fleet's account and Region


def parse_placement(raw: Any = None, **fields: Any) -> Placement:
    """A job's placement from a mapping (or keyword arguments; None values are absent), or
    InvalidJobError naming each bad field (`region`, `role_arn`, `external_id`)."""
    given = {**(raw or {}), **fields}
    given = {k: v for k, v in given.items() if v is not None}
    try:
        return Placement.model_validate(given)
    except ValidationError as error:
        raise InvalidJobError(_field_errors_envelope(error)) from None


# The request syntax --------------------------------------------------------------------------


def _printable_ascii(token: str) -> str:
    # No control characters either: a CR or a NUL in a token ends up in logs and exports.
    if not all(" " <= c <= "~" for c in token):
        raise ValueError("must be printable ASCII (no control characters)")
    return token


# EC2's ClientToken: up to 64 ASCII characters (printable ones: see _printable_ascii). The
# pattern is what the validator checks, said for the OpenAPI document (not checked twice).
PRINTABLE_ASCII_PATTERN = r"^[ -~]*$"
ClientTokenText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=CLIENT_TOKEN_MAX,
        json_schema_extra={"pattern": PRINTABLE_ASCII_PATTERN},
        description=f"EC2's idempotency token: 1 to {CLIENT_TOKEN_MAX} printable ASCII "
        "characters (space to ~). Without one, the job id is the job's ClientToken.",
    ),
    AfterValidator(_printable_ascii),
]
_CLIENT_TOKEN: TypeAdapter[str] = TypeAdapter(ClientTokenText)

# Strict: EC2's integers are integers and its booleans booleans. `true`, `"7"`, `" 7 "`,
# `"1_0"` and `1.0` are refused, naming the field, rather than quietly turned into numbers.
_Strict = ConfigDict(extra="forbid", frozen=True, strict=True)


# What _not_aws refuses, said in JSON Schema for the OpenAPI document: only ASCII letters
# lower-case to a, w and s, so the case-insensitive prefix is this pattern.
AWS_PREFIX_PATTERN = "^[aA][wW][sS]:"


class Tag(BaseModel):
    model_config = _Strict

    Key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=127,
            json_schema_extra={"not": {"pattern": AWS_PREFIX_PATTERN}},
            description="1 to 127 characters, not beginning with `aws:` (in any case); "
            "unique within its specification's Tags",
        ),
    ]
    Value: Annotated[str, Field(max_length=256)] = ""

    @field_validator("Key")
    @classmethod
    def _not_aws(cls, key: str) -> str:
        if key.lower().startswith("aws:"):
            raise ValueError("tag keys may not begin with 'aws:'")
        return key


class TagSpecification(BaseModel):
    model_config = _Strict

    ResourceType: Literal["traffic-mirror-session"]
    # uniqueItems says less than the rule (two tags with one Key and different Values are
    # distinct items); JSON Schema cannot say "unique by Key", so the description does.
    Tags: Annotated[
        list[Tag],
        Field(
            max_length=MAX_TAGS,
            json_schema_extra={"uniqueItems": True},
            description=f"at most {MAX_TAGS} tags, each Key at most once (a Key repeated, "
            "whatever its Values, is refused naming the second: 422)",
        ),
    ] = []

    @field_validator("Tags")
    @classmethod
    def _unique_keys(cls, tags: list[Tag]) -> list[Tag]:
        seen: set[str] = set()
        for n, tag in enumerate(tags):
            if tag.Key in seen:
                raise _AtIndex(n, "Key", f"duplicate tag key {tag.Key!r}")
            seen.add(tag.Key)
        return tags


# Strictness JSON Schema cannot say: its "integer" takes 7.0 (a number equal to an integer).
_INTEGER = (
    'A JSON integer, written without a fraction or exponent: 7.0, 7e0, "7" and true are refused.'
)

# The session properties a create and a modify both set, constrained alike.
PacketLengthField = Annotated[
    Annotated[int, Field(ge=1, le=PACKET_LENGTH_MAX)] | None, Field(description=_INTEGER)
]
VirtualNetworkIdField = Annotated[
    Annotated[int, Field(ge=0, le=VIRTUAL_NETWORK_ID_MAX)] | None, Field(description=_INTEGER)
]
DescriptionField = Annotated[str, Field(max_length=255)] | None


class SessionRequest(BaseModel):
    """CreateTrafficMirrorSession's keyword arguments, with the seed's constraints."""

    model_config = _Strict
    kind: ClassVar[JobKind] = JobKind.CREATE

    NetworkInterfaceId: Annotated[str, Field(pattern=ENI_ID)]
    TrafficMirrorTargetId: Annotated[str, Field(pattern=TARGET_ID)]
    TrafficMirrorFilterId: Annotated[str, Field(pattern=FILTER_ID)]
    SessionNumber: Annotated[
        Annotated[int, Field(ge=1, le=SESSION_NUMBER_MAX)] | Literal["auto"],
        Field(
            description=f"1 to {SESSION_NUMBER_MAX}, or `auto`: the lowest free on the ENI "
            f"when the job runs. {_INTEGER}"
        ),
    ]
    PacketLength: PacketLengthField = None
    VirtualNetworkId: VirtualNetworkIdField = None
    Description: DescriptionField = None
    # EC2 takes one specification per resource type, and this call tags one type.
    TagSpecifications: Annotated[
        Annotated[list[TagSpecification], Field(max_length=1)] | None,
        Field(description="at most one specification, for traffic-mirror-session"),
    ] = None
    DryRun: bool | None = None
    ClientToken: ClientTokenText | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, raw: Any) -> Any:
        # Refuse a huge list before validating its items: a million tag specifications must
        # cost a length check, not a million validations.
        if isinstance(raw, dict):
            specs = raw.get("TagSpecifications")
            if isinstance(specs, list) and len(specs) > 1:
                raise _AtField(
                    "TagSpecifications",
                    f"at most one specification (for traffic-mirror-session), got {len(specs)}",
                )
        return raw

    @property
    def auto_session_number(self) -> bool:
        return self.SessionNumber == AUTO

    @property
    def network_interface_id(self) -> str | None:
        """The source ENI the job acts on, when the request names it (a create's does)."""
        return self.NetworkInterfaceId

    def to_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `create_traffic_mirror_session`, unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


MISSING_OK_DOC = (
    "mirrorq's, not EC2's (never sent to it): true when the job's goal is that the session "
    "not exist, so EC2's InvalidTrafficMirrorSessionId.NotFound on any attempt ends the job "
    "`deleted` (its response's AlreadyDeleted says so), as the planner's own deletes (prune, "
    "unmirror) ask: they have just read the session, and EC2 deletes an ENI's sessions with "
    "it. Default false: a first attempt's NotFound fails the job with EC2's code, since a "
    "session someone else deleted and an id that never existed cannot be told apart. A "
    "DryRun is never taken as deleted."
)
# A delete's request fields that are mirrorq's own: kept in the job's record, never sent.
MIRRORQ_REQUEST_FIELDS = frozenset({"missing_ok"})


def ec2_request(request: dict[str, Any]) -> dict[str, Any]:
    """A job's request as EC2 is sent it: mirrorq's own fields (`missing_ok`) left out."""
    return {k: v for k, v in request.items() if k not in MIRRORQ_REQUEST_FIELDS}


class DeleteSessionRequest(BaseModel):
    """DeleteTrafficMirrorSession's keyword arguments. EC2 takes no ClientToken for it: a
    delete is idempotent by its effect (worker/execute.py: a session already gone after an
    attempt of ours is the job's success)."""

    model_config = _Strict
    kind: ClassVar[JobKind] = JobKind.DELETE

    TrafficMirrorSessionId: Annotated[str, Field(pattern=SESSION_ID)]
    DryRun: bool | None = None
    missing_ok: bool | None = Field(
        default=None,
        description=MISSING_OK_DOC,
    )

    auto_session_number: ClassVar[bool] = False
    network_interface_id: ClassVar[str | None] = None

    def to_kwargs(self) -> dict[str, Any]:
        """The job's request as recorded, unset fields left out (`missing_ok` with them:
        mirrorq's own, never sent to EC2, see `ec2_request`)."""
        return self.model_dump(mode="json", exclude_none=True)


# ModifyTrafficMirrorSession's RemoveFields: the optional properties set back to their default.
REMOVABLE_FIELDS = {
    "packet-length": "PacketLength",
    "description": "Description",
    "virtual-network-id": "VirtualNetworkId",
}
# What a modify can change: it names at least one of these (not null).
MODIFY_CHANGES = (
    "TrafficMirrorTargetId",
    "TrafficMirrorFilterId",
    "PacketLength",
    "SessionNumber",
    "VirtualNetworkId",
    "Description",
    "RemoveFields",
)


def _modify_schema(schema: dict[str, Any]) -> None:
    """ModifySessionRequest's rules beyond each field's, said in JSON Schema for the OpenAPI
    document: something to change, and no field both set and removed."""
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
        for name in MODIFY_CHANGES
    ]
    schema["allOf"] = [
        {
            "if": {
                "required": ["RemoveFields"],
                "properties": {"RemoveFields": {"type": "array", "contains": {"const": removed}}},
            },
            "then": {"properties": {field: {"type": "null"}}},
        }
        for removed, field in REMOVABLE_FIELDS.items()
    ]


class ModifySessionRequest(BaseModel):
    """ModifyTrafficMirrorSession's keyword arguments, with the create's constraints on each
    value. EC2 takes no ClientToken for it: every attempt sends the same arguments, so a
    repeated modify sets what the first set (worker/execute.py). A modify changes something
    (names a field to set or to remove), and never sets and removes one field at once."""

    model_config = ConfigDict(**_Strict, json_schema_extra=_modify_schema)
    kind: ClassVar[JobKind] = JobKind.MODIFY

    TrafficMirrorSessionId: Annotated[str, Field(pattern=SESSION_ID)]
    TrafficMirrorTargetId: Annotated[str, Field(pattern=TARGET_ID)] | None = None
    TrafficMirrorFilterId: Annotated[str, Field(pattern=FILTER_ID)] | None = None
    PacketLength: PacketLengthField = None
    SessionNumber: Annotated[
        Annotated[int, Field(ge=1, le=SESSION_NUMBER_MAX)] | None,
        Field(description=f"1 to {SESSION_NUMBER_MAX} (no `auto`). {_INTEGER}"),
    ] = None
    VirtualNetworkId: VirtualNetworkIdField = None
    Description: DescriptionField = None
    RemoveFields: Annotated[
        Annotated[
            list[Literal["packet-length", "description", "virtual-network-id"]],
            Field(min_length=1, max_length=len(REMOVABLE_FIELDS)),
        ]
        | None,
        Field(
            description="properties set back to their default; each at most once, and "
            "never one that the request also sets",
            json_schema_extra={"uniqueItems": True},
        ),
    ] = None
    DryRun: bool | None = None

    auto_session_number: ClassVar[bool] = False
    network_interface_id: ClassVar[str | None] = None

    @model_validator(mode="after")
    def _changes_something(self) -> Any:
        removed = self.RemoveFields or []
        for n, name in enumerate(removed):
            if name in removed[:n]:
                raise _AtPath(["RemoveFields", n], f"{name!r} named twice")
            if getattr(self, REMOVABLE_FIELDS[name]) is not None:
                raise _AtField(
                    REMOVABLE_FIELDS[name],
                    f"set and removed at once (RemoveFields names {name!r})",
                )
        if all(getattr(self, name) is None for name in MODIFY_CHANGES):
            raise _AtField(
                "",
                "a modify sets or removes at least one field (TrafficMirrorTargetId, "
                "TrafficMirrorFilterId, PacketLength, SessionNumber, VirtualNetworkId, "
                "Description, RemoveFields)",
            )
        return self

    def to_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `modify_traffic_mirror_session`, unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


# A job's request, of whichever kind: each model names its `kind` (a class attribute).
JobRequest = SessionRequest | DeleteSessionRequest | ModifySessionRequest
REQUEST_MODELS: dict[JobKind, type[JobRequest]] = {
    JobKind.CREATE: SessionRequest,
    JobKind.DELETE: DeleteSessionRequest,
    JobKind.MODIFY: ModifySessionRequest,
}

# The request fields, of any kind, that are booleans (DryRun, a delete's missing_ok): read from
# the models, so a text format (a CSV cell) converts each of them, and any added later.
BOOLEAN_FIELDS = frozenset(
    name
    for model in REQUEST_MODELS.values()
    for name, info in model.model_fields.items()
    if info.annotation in (bool, bool | None)
)


class _AtField(ValueError):
    """A validation error that knows the field it belongs to (raised from a model check)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _AtPath(ValueError):
    """A validation error about a field's item, by its path (a list's repeated item)."""

    def __init__(self, path: list[str | int], message: str) -> None:
        super().__init__(message)
        self.path = path


class _AtIndex(ValueError):
    """A validation error about one item of a list field (duplicate tag keys)."""

    def __init__(self, index: int, field: str, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.field = field


_FIELDS = frozenset(
    {
        *SessionRequest.model_fields,
        *DeleteSessionRequest.model_fields,
        *ModifySessionRequest.model_fields,
        *TagSpecification.model_fields,
        *Tag.model_fields,
    }
)


def _name(part: str | int) -> str:
    return part if isinstance(part, str) and part.isidentifier() else json.dumps(part)


def _field_errors(
    error: ValidationError, action: str = "CreateTrafficMirrorSession"
) -> list[FieldError]:
    """One error per field, named by its path (`TagSpecifications.0.Tags.2.Key`); an unknown
    key by itself, quoted when it is not a plain name; a union's alternatives joined by "or"."""
    by_field: dict[str, list[str]] = {}
    for e in error.errors(include_url=False):
        loc, message = list(e["loc"]), e["msg"]
        cause = (e.get("ctx") or {}).get("error")
        if e["type"] == "extra_forbidden":
            path = [*(p for p in loc[:-1] if isinstance(p, int) or p in _FIELDS), loc[-1]]
            message = f"not a parameter of {action}"
        else:
            # Keep field names and list indexes; drop pydantic's union-member tags.
            path = [p for p in loc if isinstance(p, int) or p in _FIELDS]
            if isinstance(cause, _AtField):  # a field's name, or "" for the whole job
                path, message = [cause.field] if cause.field else [], str(cause)
            elif isinstance(cause, _AtPath):
                path, message = cause.path, str(cause)
            elif isinstance(cause, _AtIndex):
                path, message = [*path, cause.index, cause.field], str(cause)
        name = ".".join(_name(p) for p in path) or "(job)"
        by_field.setdefault(name, []).append(message.removeprefix("Value error, "))
    return [{"field": f, "message": " or ".join(m)} for f, m in by_field.items()]


def parse_json(text: str | bytes, what: str = "(job)") -> Any:
    """JSON text, or InvalidJobError naming `what`: never a RecursionError or a traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidJobError([{"field": what, "message": "JSON nested too deeply"}]) from None
    except ValueError as error:
        raise InvalidJobError([{"field": what, "message": f"not JSON: {error}"}]) from None


@overload
def parse_request(raw: Any) -> SessionRequest: ...
@overload
def parse_request(raw: Any, kind: Literal[JobKind.CREATE]) -> SessionRequest: ...
@overload
def parse_request(raw: Any, kind: Literal[JobKind.DELETE]) -> DeleteSessionRequest: ...
@overload
def parse_request(raw: Any, kind: Literal[JobKind.MODIFY]) -> ModifySessionRequest: ...
@overload
def parse_request(raw: Any, kind: JobKind | str) -> JobRequest: ...
def parse_request(raw: Any, kind: JobKind | str = JobKind.CREATE) -> JobRequest:
    """Validate a job's request of `kind` (a dict, or JSON text of one): its action's request
    syntax. Raise InvalidJobError naming each bad field (`kind` itself, if it is none)."""
    try:
        model = REQUEST_MODELS[JobKind(kind)]
    except ValueError:
        raise InvalidJobError([{"field": "kind", "message": _KIND_RULE}]) from None
    if isinstance(raw, str | bytes):
        raw = parse_json(raw)
    if not isinstance(raw, dict):
        raise InvalidJobError(
            [{"field": "(job)", "message": f"expected a JSON object, got {type(raw).__name__}"}]
        )
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise InvalidJobError(_field_errors(error, model.kind.action)) from None
    except RecursionError:
        raise InvalidJobError([{"field": "(job)", "message": "nested too deeply"}]) from None


_KIND_RULE = f"one of {', '.join(k.value for k in JobKind)}"


def client_token(request: SessionRequest, job_id: str) -> str:
    """The job's ClientToken: the request's own, else its job id (a sender that fixed none),
    which must then be one: InvalidJobError naming `job_id` otherwise. Creates only: EC2
    takes no ClientToken for a delete or a modify."""
    if request.ClientToken is not None:
        return request.ClientToken
    try:
        return _CLIENT_TOKEN.validate_python(job_id, strict=True)
    except ValidationError as error:
        problem = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise InvalidJobError(
            [
                {
                    "field": "job_id",
                    "message": f"the request has no ClientToken, so the job id is its "
                    f"ClientToken, which must be 1-{CLIENT_TOKEN_MAX} ASCII characters "
                    f"({problem}); send a ClientToken or a shorter id",
                }
            ]
        ) from None


def recordable_job_id(value: Any) -> str | None:
    """A job id a refusal can be recorded under, or None (not a string, empty, too long)."""
    return value if isinstance(value, str) and 0 < len(value) <= JOB_ID_MAX else None


JOB_ENVELOPE_FIELDS = frozenset({"request", "kind", "network_interface_id", *PLACEMENT_FIELDS})
_ENI_ID = re.compile(ENI_ID)


@dataclass(frozen=True)
class Job:
    """A job as a door took it: its request (of its kind), where it runs, and for a delete or
    a modify the session's source ENI if the sender named it (for the ENI's lease; without it
    the worker reads the session to learn it)."""

    request: JobRequest
    placement: Placement = NOWHERE
    network_interface_id: str | None = None

    @property
    def kind(self) -> JobKind:
        return self.request.kind


def parse_job_entry(raw: Any, defaults: Placement = NOWHERE) -> Job:
    """A job as a door takes it (a file's line, an HTTP body): a create's request syntax
    alone, or the envelope form `{"request": {...}, "kind": ..., "network_interface_id": ...,
    "region": ..., "role_arn": ..., "external_id": ...}` (`kind` create unless named).
    Where it names no placement, `defaults` (the command's options) hold; a role named here
    comes with its own external_id, never the default's. InvalidJobError naming every bad
    field (the request's by their names, the envelope's by theirs)."""
    if isinstance(raw, str | bytes):
        raw = parse_json(raw)
    placed: dict[str, Any] = {}
    errors: list[FieldError] = []
    kind: JobKind | str = JobKind.CREATE
    eni: str | None = None
    if isinstance(raw, dict) and "request" in raw:
        errors += [
            {"field": _name(k), "message": "unknown envelope field: the request goes in request"}
            for k in raw
            if k not in JOB_ENVELOPE_FIELDS
        ]
        placed = {k: v for k, v in raw.items() if k in PLACEMENT_FIELDS and v is not None}
        kind = JobKind.CREATE if raw.get("kind") is None else raw["kind"]
        eni = raw.get("network_interface_id")
        raw = raw["request"]
    request: JobRequest | None = None
    try:
        kind = parse_kind(kind)
    except InvalidJobError as error:
        errors += error.errors
    else:
        try:
            request = parse_request(raw, kind)
        except InvalidJobError as error:
            errors += error.errors
        try:
            eni = parse_network_interface_id(eni, kind)
        except InvalidJobError as error:
            errors += error.errors
    try:
        placement = parse_placement(placed)
    except InvalidJobError as error:
        errors += error.errors
    if errors or request is None:
        raise InvalidJobError(errors)
    return Job(request, with_defaults(placement, defaults), eni or request.network_interface_id)


def parse_job(raw: Any, defaults: Placement = NOWHERE) -> tuple[JobRequest, Placement]:
    """`parse_job_entry`, as (request, placement)."""
    job = parse_job_entry(raw, defaults)
    return job.request, job.placement


def parse_kind(value: Any) -> JobKind:
    """A job's kind, or InvalidJobError naming `kind`."""
    if isinstance(value, str):
        try:
            return JobKind(value)
        except ValueError:
            pass
    raise InvalidJobError([{"field": "kind", "message": _KIND_RULE}])


def parse_network_interface_id(value: Any, kind: JobKind) -> str | None:
    """The envelope's `network_interface_id` (a delete's or a modify's session source), or
    InvalidJobError naming it: an ENI id, and never on a create (whose request names it)."""
    if value is None:
        return None
    if kind is JobKind.CREATE:
        raise InvalidJobError(
            [
                {
                    "field": "network_interface_id",
                    "message": "a create names its ENI in request.NetworkInterfaceId",
                }
            ]
        )
    if not isinstance(value, str) or _ENI_ID.fullmatch(value) is None:
        raise InvalidJobError(
            [{"field": "network_interface_id", "message": f"an ENI id matching {ENI_ID}"}]
        )
    return value


def with_defaults(placement: Placement, defaults: Placement) -> Placement:
    """A job's placement, the defaults filling what it leaves out (both already valid)."""
    if not defaults:
        return placement
    role = placement.role_arn or defaults.role_arn
    external = (
        placement.external_id
        if placement.role_arn
        else (placement.external_id or defaults.external_id)
    )
    return Placement(
        region=placement.region or defaults.region, role_arn=role, external_id=external
    )


# Idempotency keys ----------------------------------------------------------------------------

# A client's idempotency key is one key whichever door it comes through (the API's
# Idempotency-Key header, read as UTF-8; `mirrorq submit --idempotency-key`;
# `Producer.submit(idempotency_key=)`), so it is checked here, once, and counted in characters
# (Unicode code points, as Python counts them), never in the bytes of one encoding.
IDEMPOTENCY_KEY_MAX = 256
IDEMPOTENCY_KEY_RULE = (
    f"1 to {IDEMPOTENCY_KEY_MAX} characters (Unicode characters, not bytes), printable, "
    "without leading or trailing spaces"
)


def idempotency_key(key: str, field: str = "idempotency_key") -> str:
    """The key, if it follows IDEMPOTENCY_KEY_RULE; InvalidJobError naming `field` otherwise.
    Printable and unpadded because HTTP cannot carry control characters and drops the spaces
    around a header's value: a key Python took could not be sent again over HTTP."""
    if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable() or key != key.strip():
        raise InvalidJobError([{"field": field, "message": IDEMPOTENCY_KEY_RULE}])
    return key


# The message envelope ------------------------------------------------------------------------


class Envelope(_Placed):
    """What travels with a job's request: `kwargs={"request": {...}, ...}` of the task, its
    placement (`region`, `role_arn`, `external_id`) beside the request."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    request: Any
    # What the job does (JobKind); a message naming none is a create. Not strict: it arrives
    # as JSON text, the enum's value.
    kind: Annotated[JobKind, Field(strict=False)] = JobKind.CREATE
    # A delete's or a modify's session source, for the ENI's lease (worker/execute.py).
    network_interface_id: Annotated[str, Field(pattern=ENI_ID)] | None = None
    batch_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    submitted_at: Annotated[str, Field(max_length=40)] | None = None
    rule: Annotated[str, Field(max_length=128)] | None = None
    event_id: Annotated[str, Field(max_length=256)] | None = None
    # Targets a rule treats as one mirror ("any of these through this filter"), so that
    # racing planners that chose different targets still mirror the ENI once.
    alternatives: Annotated[
        list[Annotated[str, Field(pattern=TARGET_ID)]], Field(max_length=64)
    ] = []
    # Where the job runs (region, role_arn, external_id: _Placed) is beside the request, never
    # inside it; unset, the fleet's default credentials and MIRRORQ_REGION (worker/roads.py
    # reads it: place_of).

    @model_validator(mode="after")
    def _eni_of_a_session(self) -> Any:
        if self.network_interface_id is not None and self.kind is JobKind.CREATE:
            raise _AtField(
                "network_interface_id", "a create names its ENI in request.NetworkInterfaceId"
            )
        return self

    def origin(self) -> dict[str, str | None] | None:
        return (
            {"rule": self.rule, "event_id": self.event_id} if self.rule or self.event_id else None
        )


ADMIT_AT = "admit_at"  # a deferred batch message's turn at its bucket (worker/admission.py)
ADMIT_EPOCH = "admit_epoch"  # the bucket's epoch when that turn was given
DecodedJob = tuple[str, Envelope | InvalidJobError]  # a job id, and its envelope or why not


def parse_envelope(args: Any, kwargs: Any, task_kind: JobKind | None = None) -> Envelope:
    """The documented payload is `kwargs={"request": {...}}` (optional: batch_id, kind, ...).
    `task_kind`: the kind of the single-job task the message was sent to, which a `kind` in
    the envelope must not contradict (a batch's jobs name their own)."""
    if args:
        raise InvalidJobError(
            [
                {
                    "field": "(message)",
                    "message": "positional arguments are not accepted; "
                    "send kwargs={'request': {...}}",
                }
            ]
        )
    if not isinstance(kwargs, dict):
        raise InvalidJobError([{"field": "(message)", "message": "kwargs must be an object"}])
    if task_kind is not None:
        named = kwargs.get("kind", task_kind.value)
        if named != task_kind.value:
            raise InvalidJobError(
                [
                    {
                        "field": "kind",
                        "message": f"the task {task_kind.task_name} carries {task_kind} jobs; "
                        f"send a {named} job to its own task",
                    }
                ]
            )
        kwargs = {**kwargs, "kind": task_kind.value}
    try:
        return Envelope.model_validate(kwargs)
    except ValidationError as error:
        raise InvalidJobError(_field_errors_envelope(error)) from None


def _field_errors_envelope(error: ValidationError) -> list[FieldError]:
    errors: list[FieldError] = []
    for e in error.errors(include_url=False):
        name = ".".join(_name(p) for p in e["loc"]) or "(message)"
        message = "unknown envelope field" if e["type"] == "extra_forbidden" else e["msg"]
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, _AtField):
            name, message = cause.field, str(cause)
        errors.append({"field": name, "message": message.removeprefix("Value error, ")})
    return errors
