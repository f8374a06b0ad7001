"""What the API's answers look like, declared once for FastAPI and the OpenAPI document; the
request syntax itself is the contract's model (tasks/contract.py), not a copy of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from mirrorq.events import (
    API_CALL,
    INSTANCE_ID_PATTERN,
    JOB,
    LEAVING,
    MAX_EVENT_BYTES,
    NETWORK_INTERFACE_ID_PATTERN,
    STATE_CHANGE,
)
from mirrorq.lifecycle import Selection
from mirrorq.rules import Selectors
from tasks.contract import (
    ENI_ID,
    EXTERNAL_ID_PATTERN,
    FILTER_ID,
    INSTANCE_ID,
    PARTITIONS,
    ROLE_ARN_MAX,
    ROLE_ARN_PATTERN,
    RULE_NAME_MAX,
    SESSION_ID,
    SUBNET_ID,
    TARGET_ID,
    VPC_ID,
    DeleteSessionRequest,
    JobKind,
    ModifySessionRequest,
    SessionRequest,
    ec2_regions,
)

REF = "#/components/schemas/{model}"


class JobAccepted(BaseModel):
    job_id: str


class BatchAccepted(BaseModel):
    batch_id: str
    jobs: int


class BatchStatus(BaseModel):
    batch_id: str
    total: int
    done: int
    counts: dict[str, int] = Field(description="the batch's jobs by status")
    submitted_at: str
    finished_at: str | None
    source: str | None
    plan: dict[str, Any] = Field(description="what a bulk run or reconcile pass planned")
    by_placement: list[PlacedCounts] | None = Field(
        default=None,
        description="a batch spanning several accounts or Regions: its counts by each",
    )


class PlacedCounts(BaseModel):
    account_id: str | None = Field(description="null: the fleet's own credentials' account")
    region: str
    total: int
    counts: dict[str, int]


class EventOutcome(BaseModel):
    event_id: str
    job_ids: list[str] = Field(description="the jobs this event made now")
    duplicates: int = Field(description="jobs this event had made before (a redelivery)")
    ignored: str = Field(description="why it made no job, if it made none")


class CoverageTotals(BaseModel):
    matched: int = Field(description="ENIs some rule matches (each rule's count, summed)")
    eligible: int = Field(description="of those, the ENIs that can be mirrored")
    live: int = Field(description="mirrored to a live target")
    dark: int = Field(description="mirrored to a dead target: EC2 mirrors nothing")
    repairing: int = Field(description="of the dark ones, those a pending modify is moving")
    missing: int = Field(description="not mirrored")
    unsupported: int = Field(description="cannot be a source (listed, not counted)")
    unwanted: int = Field(description="managed sessions no rule wants")


class CoverageEni(BaseModel):
    eni: str
    instance_id: str | None
    zone: str | None
    state: Literal["live", "dark", "missing", "unsupported"]
    reason: str = Field(
        description="dark: why its target is dead (eni_gone, instance_stopped, "
        "load_balancer_gone, load_balancer_failed, endpoint_gone, endpoint_deleted, ...); live: "
        "empty for a target verified live, else what was not judged (load_balancer_provisioning, "
        "endpoint_pending, shared from another account: not checked, ...); missing: "
        "not_mirrored, pending, session_limit, targets_full, no_target_in_zone, no_target; "
        "unsupported: unsupported_instance_type, is_mirror_target, not_interface_type"
    )
    session_id: str | None = Field(description="live, dark: the rule's session")
    target: str | None = Field(description="live, dark: its target")
    repair_job: str | None = Field(
        default=None,
        description="dark: the id of the queued or running modify moving its session to a "
        "live target, if any (the ENI stays dark until it lands)",
    )


class CoverageRule(BaseModel):
    rule: str
    account_id: str | None = Field(description="null: the fleet's own credentials' account")
    region: str | None
    matched: int
    eligible: int
    live: int
    dark: int
    repairing: int = Field(description="of the dark ones, those a pending modify is moving")
    missing: dict[str, int] = Field(description="ENIs not mirrored, by reason")
    unsupported: int
    percent: float = Field(ge=0, le=100, description="live over eligible (100 with none)")
    enis: list[CoverageEni]


class CoverageUnwanted(BaseModel):
    session_id: str
    eni: str
    rule: str = Field(description="its mirrorq:rule tag")
    reason: str = Field(
        description="rule_gone (no rule of the policy has its name here), eni_not_matched, "
        "filter_not_rules, target_not_rules (as prune says: mirrorq/prune.py)"
    )


class Coverage(BaseModel):
    generated_at: str = Field(description="when EC2 was read (UTC, ISO 8601)")
    percent: float = Field(ge=0, le=100, description="live over eligible, every rule")
    totals: CoverageTotals
    rules: list[CoverageRule] = Field(description="one per rule and account-Region")
    unwanted: list[CoverageUnwanted]
    notes: list[str] = Field(description="places not read, rules with no target there")
    complete: bool = Field(description="every place was read")


class ErrorField(BaseModel):
    field: str = Field(description="the field, parameter or header, or (body), (job), (line)")
    message: str
    line: int | SkipJsonSchema[None] = Field(
        default=None,
        description="in a batch: the job's line (JSON Lines) or item (JSON array), from 1; "
        "0 for the body as a whole",
    )


class ErrorDetail(BaseModel):
    code: str = Field(
        description="the CLI's codes (InvalidJob, InvalidRequest, IdempotencyConflict, "
        "Unauthorized, JobNotFound, BatchNotFound, TooLarge, InvalidEvent, NoPolicy, "
        "RedisUnavailable, Ec2Unavailable, NotReady, InvalidPolicy, InternalError), or "
        "EC2's and STS's own error codes (502, 503)"
    )
    message: str
    fields: list[ErrorField] = Field(description="each bad field; empty when none is to blame")


class ErrorBody(BaseModel):
    """Every answer that is not a success has this shape."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class PolicyInUse(BaseModel):
    path: str = Field(description="the policy file (--policy)")
    rules: int = Field(description="its rules in use")


class Ready(BaseModel):
    status: Literal["ready"]
    policy: PolicyInUse | SkipJsonSchema[None] = Field(
        default=None, description="with --policy: the file and its rules in use"
    )


# Each kind's request syntax, by the component that says it (tasks/contract.py JobKind).
REQUEST_COMPONENTS = {
    JobKind.CREATE: "SessionRequest",
    JobKind.DELETE: "DeleteSessionRequest",
    JobKind.MODIFY: "ModifySessionRequest",
}


def request_syntax_components(fleet_region: str) -> dict[str, Any]:
    """Each kind's request syntax as OpenAPI components (SessionRequest and its parts,
    DeleteSessionRequest, ModifySessionRequest), the envelope that names a job's kind and
    places it (JobEnvelope) and the event POST /v1/events takes (its rules depend on the
    fleet's Region: `fleet_region`)."""
    components: dict[str, Any] = {}
    for model, name in (
        (SessionRequest, "SessionRequest"),
        (DeleteSessionRequest, "DeleteSessionRequest"),
        (ModifySessionRequest, "ModifySessionRequest"),
    ):
        schema = model.model_json_schema(ref_template=REF)
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    components["JobEnvelope"] = job_envelope_schema()
    components["EventBridgeEvent"] = event_schema(fleet_region)
    return components


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A string's schema, null taken too (string keywords leave null alone; an enum lists it)."""
    nullable = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _kind_rules() -> list[dict[str, Any]]:
    """The envelope's request is its kind's request syntax; a create's names its ENI itself."""
    create = {
        "if": {"properties": {"kind": {"enum": [JobKind.CREATE.value, None]}}},
        "then": {
            "properties": {
                "request": {"$ref": REF.format(model=REQUEST_COMPONENTS[JobKind.CREATE])},
                "network_interface_id": {"type": "null"},
            }
        },
    }
    others = [
        {
            "if": {"required": ["kind"], "properties": {"kind": {"const": kind.value}}},
            "then": {"properties": {"request": {"$ref": REF.format(model=component)}}},
        }
        for kind, component in REQUEST_COMPONENTS.items()
        if kind is not JobKind.CREATE
    ]
    return [create, *others]


def job_envelope_schema() -> dict[str, Any]:
    """A job with its kind and placement: the contract's rules (tasks/contract.py JobKind,
    Placement), said in JSON Schema. A field sent as null is as if absent (tasks/contract.py
    parse_job_entry)."""
    partitions = ", ".join(PARTITIONS)
    return {
        "type": "object",
        "title": "JobEnvelope",
        "description": "A job beside its request: what it does (`kind`: create, the default, "
        "delete or modify; `request` is that action's request syntax, SessionRequest, "
        "DeleteSessionRequest or ModifySessionRequest), for a delete or a modify the "
        "session's source ENI if known (`network_interface_id`, for the ENI's lease; without "
        "it the worker reads the session), and where it runs: in `region` (default: the "
        "fleet's MIRRORQ_REGION), in the account of `role_arn`, assumed by the workers "
        f"(default: the fleet's own credentials), with `external_id` (only with a role_arn). "
        f"Partition {partitions} only; a bad value is refused (422) naming the field. A null "
        "field is as if absent.",
        "required": ["request"],
        "additionalProperties": False,
        "properties": {
            "request": {
                "type": "object",
                "description": "the request syntax of the job's kind (see kind)",
            },
            "kind": _nullable(
                {
                    "type": "string",
                    "enum": [k.value for k in JobKind],
                    "description": "create (CreateTrafficMirrorSession, the default), delete "
                    "(DeleteTrafficMirrorSession) or modify (ModifyTrafficMirrorSession)",
                }
            ),
            "network_interface_id": _nullable(
                {
                    "type": "string",
                    "pattern": ENI_ID,
                    "description": "a delete's or a modify's session source ENI (never a "
                    "create's: its request names it)",
                }
            ),
            "region": _nullable(
                {
                    "type": "string",
                    "enum": sorted(r for p in PARTITIONS for r in ec2_regions(p)),
                    "description": "a Region EC2 has (botocore's endpoint data)",
                }
            ),
            "role_arn": _nullable(
                {
                    "type": "string",
                    "maxLength": ROLE_ARN_MAX,
                    "pattern": ROLE_ARN_PATTERN,
                    "description": "an IAM role ARN; the job runs in its account",
                }
            ),
            "external_id": _nullable(
                {
                    "type": "string",
                    "minLength": 2,
                    "maxLength": 1224,
                    "pattern": EXTERNAL_ID_PATTERN,
                    "description": "STS's ExternalId for the role; only with role_arn",
                }
            ),
        },
        "allOf": [
            # An external_id (not null) only beside a role_arn (not null).
            {
                "if": {
                    "required": ["external_id"],
                    "properties": {"external_id": {"type": "string"}},
                },
                "then": {"required": ["role_arn"], "properties": {"role_arn": {"type": "string"}}},
            },
            *_kind_rules(),
        ],
    }


def job_body_schema() -> dict[str, Any]:
    return {
        "oneOf": [
            {"$ref": REF.format(model="SessionRequest")},
            {"$ref": REF.format(model="JobEnvelope")},
        ]
    }


# Python's falsy JSON values: a CloudTrail record whose errorCode is one of these did not fail.
_FALSY: list[Any] = [None, False, 0, "", [], {}]


def _eni_at(event_name: str, *path: str) -> dict[str, Any]:
    """A CloudTrail record of `event_name` naming its ENI at `path` (an object at each step)."""
    leaf: dict[str, Any] = {"type": "string", "pattern": NETWORK_INTERFACE_ID_PATTERN}
    for key in reversed(path):
        leaf = {"type": "object", "required": [key], "properties": {key: leaf}}
    return {
        "title": f"{event_name}: its ENI",
        "required": [path[0]],
        "properties": {"eventName": {"const": event_name}, path[0]: leaf["properties"][path[0]]},
    }


def _kind(
    detail_type: str, title: str, detail: dict[str, Any] | None = None, **rules: Any
) -> dict[str, Any]:
    """The events of one detail-type: what their detail must hold, and other `rules`."""
    properties: dict[str, Any] = {"detail-type": {"const": detail_type}}
    if detail is not None:
        properties["detail"] = detail
    return {"title": title, "properties": properties, **rules}


def event_schema(fleet_region: str) -> dict[str, Any]:
    """What mirrorq/events.py read_event takes, and what the intake then checks, by the event's
    detail-type (one alternative each, and one for every other detail-type). The alternatives
    within one are those the code tells apart (a state, an eventName, an errorCode)."""
    kinds = [STATE_CHANGE, API_CALL, JOB]
    state_change = _kind(
        STATE_CHANGE,
        "An instance's state change: running, or leaving it, names its instance",
        detail={
            "anyOf": [
                {
                    "title": "another state",
                    "properties": {"state": {"not": {"enum": ["running", *sorted(LEAVING)]}}},
                },
                {
                    "title": "running (its ENIs mirrored), or leaving it (its place's dark "
                    "sessions repaired, should it be a sensor)",
                    "required": ["state", "instance-id"],
                    "properties": {
                        "state": {"enum": ["running", *sorted(LEAVING)]},
                        "instance-id": {"type": "string", "pattern": INSTANCE_ID_PATTERN},
                    },
                },
            ]
        },
    )
    api_call = _kind(
        API_CALL,
        "A CloudTrail record: a network interface created or attached names it",
        detail={
            "required": ["eventName"],
            "properties": {"eventName": {"type": "string"}},
            "anyOf": [
                {
                    "title": "another call",
                    "properties": {
                        "eventName": {
                            "not": {"enum": ["CreateNetworkInterface", "AttachNetworkInterface"]}
                        }
                    },
                },
                {
                    "title": "a call that failed (its errorCode is not empty)",
                    "required": ["errorCode"],
                    "properties": {"errorCode": {"not": {"enum": _FALSY}}},
                },
                _eni_at(
                    "CreateNetworkInterface",
                    "responseElements",
                    "networkInterface",
                    "networkInterfaceId",
                ),
                _eni_at("AttachNetworkInterface", "requestParameters", "networkInterfaceId"),
            ],
        },
    )
    job = _kind(
        JOB,
        "A service's own job: detail is one job in the request syntax",
        anyOf=[
            {
                "title": "of the fleet's own place: its detail is a job (422 otherwise)",
                "properties": {
                    "region": {"enum": [None, fleet_region]},
                    "detail": {"$ref": REF.format(model="SessionRequest")},
                },
            },
            {
                "title": "of another Region: planned there, or ignored",
                "required": ["region"],
                "properties": {"region": {"type": "string", "not": {"const": fleet_region}}},
            },
        ],
    )
    other = {
        "title": "Any other event: ignored",
        "properties": {"detail-type": {"not": {"enum": kinds}}},
    }
    return {
        "type": "object",
        "title": "EventBridgeEvent",
        "description": "An EventBridge event, as an API destination sends it (at most "
        f"{MAX_EVENT_BYTES // 1024} KiB, EventBridge's limit; a larger body is 400). Three "
        f"detail-types make jobs: `{STATE_CHANGE}` (state running: every ENI of its "
        f"instance), `{API_CALL}` (a CreateNetworkInterface or AttachNetworkInterface record "
        f"that did not fail: its ENI), and `{JOB}` (detail: one job in the request syntax); "
        "an instance leaving running (stopping, stopped, shutting-down, terminated) and a "
        "DeleteTrafficMirrorTarget, DeleteNetworkInterface, DeleteVpcEndpoints or (Elastic "
        "Load Balancing's) DeleteLoadBalancer record that did not fail make "
        "the modifies that repair their place's dark sessions, if any; "
        "any other event is answered 202 with why it is `ignored`. A body that is not such an "
        "event is 400 InvalidEvent. Events are planned through the policy in their place: "
        f"an event whose region is absent, null or this fleet's ({fleet_region}) is the "
        "fleet's own; with [[accounts]] in the policy, an event of an account it names runs "
        "there in the Regions named for it (a job event's detail is then a job, 422 "
        "otherwise), and an event of a place the policy does not serve is ignored without "
        "its detail being read.",
        "required": ["id", "detail-type", "detail"],
        "properties": {
            "id": {
                "type": "string",
                "minLength": 1,
                "description": "the event's id, which deduplicates it: text (a lone "
                "surrogate escape such as \\ud800 is refused)",
            },
            "detail-type": {"type": "string"},
            "detail": {"type": "object"},
            "region": {"type": ["string", "null"]},
            "account": {"type": ["string", "null"]},
            "source": {"description": "not read"},
        },
        "anyOf": [state_change, api_call, job, other],
    }


def body(content: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself (to answer in mirrorq's error
    shape, with mirrorq's field names): what the body is, by media type."""
    return {"requestBody": {"required": True, "content": content}}


def body_of(model: str) -> dict[str, Any]:
    return body({"application/json": {"schema": {"$ref": REF.format(model=model)}}})


# Examples of each body (the fuzzing test sends them too: each must be taken).
_REQUEST = {
    "NetworkInterfaceId": "eni-0a1b2c3d4e5f60718",
    "TrafficMirrorTargetId": "tmt-07f75d8fee0a1b2c3",
    "TrafficMirrorFilterId": "tmf-04812ff784a1b2c3d",
    "SessionNumber": "auto",
}
_ENVELOPE = {
    "request": {**_REQUEST, "SessionNumber": 1, "PacketLength": 128},
    "region": "eu-west-1",
    "role_arn": "arn:aws:iam::111122223333:role/mirrorq-worker",
    "external_id": "mirrorq-7f3a",
}
_DELETE = {
    "kind": "delete",
    "request": {"TrafficMirrorSessionId": "tms-0e1d2c3b4a5968778"},
    "network_interface_id": "eni-0a1b2c3d4e5f60718",
}
_MODIFY = {
    "kind": "modify",
    "request": {
        "TrafficMirrorSessionId": "tms-0e1d2c3b4a5968778",
        "TrafficMirrorTargetId": "tmt-07f75d8fee0a1b2c4",
        "RemoveFields": ["packet-length"],
    },
}
_JOB_EXAMPLES = {
    "request": {"summary": "The request syntax (a create)", "value": _REQUEST},
    "envelope": {"summary": "A JobEnvelope: in a Region, through a role", "value": _ENVELOPE},
    "delete": {"summary": "A delete, its session's ENI named for the lease", "value": _DELETE},
    "modify": {"summary": "A modify: another target, whole packets", "value": _MODIFY},
}
_EVENT = {"version": "0", "source": "aws.ec2", "account": "111122223333", "resources": []}
_EVENT_EXAMPLES = {
    "running": {
        "summary": "An instance running: every ENI of it",
        "value": {
            **_EVENT,
            "id": "7bf73129-1428-4cd3-a780-95db273d1602",
            "detail-type": STATE_CHANGE,
            "detail": {"instance-id": "i-0abcd1111example0", "state": "running"},
        },
    },
    "eni": {
        "summary": "CloudTrail's record of a network interface created: that ENI",
        "value": {
            **_EVENT,
            "id": "6f8e2b0c-3d1a-4b7e-9c55-0a1b2c3d4e5f",
            "detail-type": API_CALL,
            "detail": {
                "eventName": "CreateNetworkInterface",
                "responseElements": {
                    "networkInterface": {"networkInterfaceId": "eni-0a1b2c3d4e5f60718"}
                },
            },
        },
    },
    "job": {
        "summary": "A service's own job",
        "value": {
            **_EVENT,
            "source": "com.example.deployer",
            "id": "b1e5a2c4-0f6d-4e8a-9b3c-2d7e1f0a9c84",
            "detail-type": JOB,
            "detail": _REQUEST,
        },
    },
}

JOB_BODY = body({"application/json": {"schema": job_body_schema(), "examples": _JOB_EXAMPLES}})

_JOBS = {"type": "array", "minItems": 1, "items": job_body_schema()}
BATCH_BODY = body(
    {
        "application/json": {
            "schema": {
                **_JOBS,
                "description": "a JSON array of jobs, each a SessionRequest or a JobEnvelope "
                "(any kind). "
                "The body is read as a JSON array when it starts with `[` (after white space), "
                "else as JSON Lines, whatever its Content-Type.",
            },
            "examples": {
                "jobs": {"summary": "Jobs of each kind", "value": [_REQUEST, _ENVELOPE, _DELETE]},
            },
        },
        "application/x-ndjson": {
            "schema": {
                **_JOBS,
                "description": "JSON Lines: the jobs, one JSON object a line (a "
                "SessionRequest or a JobEnvelope), in order; blank lines are skipped. Each "
                "item here is one line.",
            }
        },
    }
)
EVENT_BODY = body(
    {
        "application/json": {
            "schema": {"$ref": REF.format(model="EventBridgeEvent")},
            "examples": _EVENT_EXAMPLES,
        }
    }
)


# Every answer that is not a success, by status: what it means, with which codes.
ANSWERS = {
    400: "The body is not JSON, or not UTF-8 (InvalidJob); an event that is not an "
    "EventBridge event (InvalidEvent)",
    401: "No valid bearer token (Unauthorized); the same answer whatever was wrong",
    404: "No such job or batch, or its record expired (JobNotFound, BatchNotFound)",
    409: "The Idempotency-Key names a job with another body (IdempotencyConflict)",
    413: "The body is over MIRRORQ_API_MAX_BODY_BYTES (TooLarge), refused before it is read",
    422: "Invalid: each bad field named (InvalidJob; InvalidRequest for a query parameter)",
    500: "The API failed to answer (InternalError); its log has why",
    502: "EC2 or STS refused the event's planning (their error code, e.g. AccessDenied)",
    503: "Redis does not answer (RedisUnavailable), or the acceptance did not reach "
    "MIRRORQ_REDIS_MIN_REPLICAS replicas and was undone (NotReplicated): try again, with the "
    "same Idempotency-Key",
}


def errors(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """The answers `statuses` in the error shape, each described (ANSWERS, or `described`
    keyed `s<status>` for a route's own words)."""
    return {
        s: {"model": ErrorBody, "description": described.get(f"s{s}", ANSWERS[s])} for s in statuses
    }


# Unmirror and retarget (mirrorq/lifecycle.py): their bodies, as the CLI's options --------------

_IdList = Field(min_length=1, max_length=200)  # EC2 takes 200 values a filter
VpcIds = Annotated[list[Annotated[str, Field(pattern=VPC_ID)]], _IdList]
SubnetIds = Annotated[list[Annotated[str, Field(pattern=SUBNET_ID)]], _IdList]
InstanceIds = Annotated[list[Annotated[str, Field(pattern=INSTANCE_ID)]], _IdList]
EniIds = Annotated[list[Annotated[str, Field(pattern=ENI_ID)]], _IdList]
TargetIds = Annotated[list[Annotated[str, Field(pattern=TARGET_ID)]], _IdList]
FilterIds = Annotated[list[Annotated[str, Field(pattern=FILTER_ID)]], _IdList]
SessionIds = Annotated[list[Annotated[str, Field(pattern=SESSION_ID)]], _IdList]
RuleNames = Annotated[list[Annotated[str, Field(min_length=1, max_length=RULE_NAME_MAX)]], _IdList]
Tags = Annotated[
    list[Annotated[str, Field(pattern=r"^[^=]+=[\s\S]*$", description="Key=Value")]], _IdList
]
_SELECTORS = ("vpc", "subnet", "tag", "instance", "eni", "target", "filter", "rule", "session_id")


class _SessionSelection(BaseModel):
    """Which sessions: kinds given must all match, values of one kind are alternatives;
    only sessions mirrorq manages (tag mirrorq:rule), unless named by `session_id`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    vpc: VpcIds = []
    subnet: SubnetIds = []
    tag: Tags = []
    instance: InstanceIds = []
    eni: EniIds = []
    rule: RuleNames = Field(default=[], description="the sessions' mirrorq:rule tag")
    session_id: SessionIds = Field(default=[], description="these sessions, managed or not")
    dry_run: bool = Field(default=False, description="DryRun jobs: nothing is changed")

    def selection(self, targets: Sequence[str] = (), filters: Sequence[str] = ()) -> Selection:
        return Selection(
            Selectors(
                tuple(self.vpc),
                tuple(self.subnet),
                tuple((k, v) for k, _, v in (t.partition("=") for t in self.tag)),
                tuple(self.instance),
                tuple(self.eni),
            ),
            target_ids=tuple(targets),
            filter_ids=tuple(filters),
            rules=tuple(self.rule),
            session_ids=tuple(self.session_id),
        )


class UnmirrorBody(_SessionSelection):
    """`mirrorq unmirror`: at least one selector (none would select every managed session)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"anyOf": [{"required": [name]} for name in _SELECTORS]},
    )

    target: TargetIds = []
    filter: FilterIds = []

    @model_validator(mode="after")
    def _named(self) -> UnmirrorBody:
        if not any(getattr(self, name) for name in _SELECTORS):
            raise ValueError(f"name the sessions: one of {', '.join(_SELECTORS)}")
        return self


class RetargetBody(_SessionSelection):
    """`mirrorq retarget`: the managed sessions on `from` moved to `to` in place (a modify of
    each: its SessionNumber and filter kept)."""

    from_: str = Field(alias="from", pattern=TARGET_ID, description="the target they leave")
    to: str = Field(pattern=TARGET_ID, description="the target they move to")


class SessionItem(BaseModel):
    session_id: str
    network_interface_id: str
    rule: str | None = Field(description="its mirrorq:rule tag (null: not mirrorq's)")
    action: Literal["delete", "modify", "unmanaged", "already_mirrored", "target_full"]
    target_id: str
    to_target_id: str | None


class SessionsPlanned(BaseModel):
    batch_id: str
    jobs: int = Field(description="the deletes or modifies submitted")
    counts: dict[str, int] = Field(description="the sessions selected, by action")
    sessions: list[SessionItem]
