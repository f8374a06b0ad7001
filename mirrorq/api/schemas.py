"""What the API's answers look like, declared once for FastAPI and the OpenAPI document; the
request syntax itself is the contract's model (tasks/contract.py), not a copy of it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tasks.contract import (
    EXTERNAL_ID_PATTERN,
    PARTITIONS,
    ROLE_ARN_MAX,
    ROLE_ARN_PATTERN,
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


class ErrorField(BaseModel):
    field: str
    message: str
    line: int | None = Field(default=None, description="in a JSON Lines or array body")


class ErrorDetail(BaseModel):
    code: str = Field(description="the CLI's codes: InvalidJob, IdempotencyConflict, ...")
    message: str
    fields: list[ErrorField]


class ErrorBody(BaseModel):
    error: ErrorDetail


def request_syntax_components() -> dict[str, Any]:
    """The request syntax's JSON Schema, as OpenAPI components (SessionRequest and its parts),
    and the envelope that places a job (JobEnvelope)."""
    schema = SessionRequest.model_json_schema(ref_template=REF)
    components = dict(schema.pop("$defs", {}))
    components["SessionRequest"] = schema
    components["JobEnvelope"] = job_envelope_schema()
    return components


def job_envelope_schema() -> dict[str, Any]:
    """A job with its placement: the contract's rules (tasks/contract.py Placement), said in
    JSON Schema."""
    partitions = ", ".join(PARTITIONS)
    return {
        "type": "object",
        "title": "JobEnvelope",
        "description": "A job placed beside its request: in `region` (default: the fleet's "
        "MIRRORQ_REGION), in the account of `role_arn`, assumed by the workers (default: the "
        f"fleet's own credentials), with `external_id` (only with a role_arn). Partition "
        f"{partitions} only; a bad value is refused (422) naming the field.",
        "required": ["request"],
        "additionalProperties": False,
        "properties": {
            "request": {"$ref": REF.format(model="SessionRequest")},
            "region": {
                "type": "string",
                "enum": sorted(r for p in PARTITIONS for r in ec2_regions(p)),
                "description": "a Region EC2 has (botocore's endpoint data)",
            },
            "role_arn": {
                "type": "string",
                "maxLength": ROLE_ARN_MAX,
                "pattern": ROLE_ARN_PATTERN,
                "description": "an IAM role ARN; the job runs in its account",
            },
            "external_id": {
                "type": "string",
                "minLength": 2,
                "maxLength": 1224,
                "pattern": EXTERNAL_ID_PATTERN,
                "description": "STS's ExternalId for the role; only with role_arn",
            },
        },
    }


def job_body_schema() -> dict[str, Any]:
    return {
        "oneOf": [
            {"$ref": REF.format(model="SessionRequest")},
            {"$ref": REF.format(model="JobEnvelope")},
        ]
    }


def body(content: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself (to answer in mirrorq's error
    shape, with mirrorq's field names): what the body is, by media type."""
    return {"requestBody": {"required": True, "content": content}}


def body_of(model: str) -> dict[str, Any]:
    return body({"application/json": {"schema": {"$ref": REF.format(model=model)}}})


JOB_BODY = body({"application/json": {"schema": job_body_schema()}})


BATCH_BODY = body(
    {
        "application/json": {"schema": {"type": "array", "items": job_body_schema()}},
        "application/x-ndjson": {
            "schema": {
                "type": "string",
                "description": "one job a line: a SessionRequest or a JobEnvelope",
            }
        },
    }
)
EVENT_BODY = body(
    {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["id", "detail-type", "detail"],
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "detail-type": {"type": "string"},
                    "source": {"type": "string"},
                    "region": {"type": "string"},
                    "detail": {"type": "object"},
                },
                "description": "an EventBridge event, as an API destination sends it",
            }
        }
    }
)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody} for s in statuses}
