"""What the API's answers look like, declared once for FastAPI and the OpenAPI document; the
request syntax itself is the contract's model (tasks/contract.py), not a copy of it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tasks.contract import SessionRequest

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
    """The request syntax's JSON Schema, as OpenAPI components (SessionRequest and its parts)."""
    schema = SessionRequest.model_json_schema(ref_template=REF)
    components = dict(schema.pop("$defs", {}))
    components["SessionRequest"] = schema
    return components


def body(content: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself (to answer in mirrorq's error
    shape, with mirrorq's field names): what the body is, by media type."""
    return {"requestBody": {"required": True, "content": content}}


def body_of(model: str) -> dict[str, Any]:
    return body({"application/json": {"schema": {"$ref": REF.format(model=model)}}})


BATCH_BODY = body(
    {
        "application/json": {
            "schema": {"type": "array", "items": {"$ref": REF.format(model="SessionRequest")}}
        },
        "application/x-ndjson": {"schema": {"type": "string", "description": "one job a line"}},
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
