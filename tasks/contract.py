"""The job contract: the seed's request syntax, validated, and the result record.

AWS shapes stay verbatim (PascalCase); mirrorq's envelope is snake_case.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

TASK_NAME = "mirrorq.create_traffic_mirror_session"
# How batches travel: several jobs to a message (see Settings.jobs_per_message).
BATCH_TASK_NAME = "mirrorq.create_traffic_mirror_sessions"
QUEUE = "mirrorq"

SESSION_NUMBER_MAX = 32766
PACKET_LENGTH_MAX = 8500
VIRTUAL_NETWORK_ID_MAX = 2**24 - 1  # VXLAN network identifiers are 24 bits
CLIENT_TOKEN_MAX = 64
# mirrorq's one extension to the request syntax: the worker picks the lowest SessionNumber
# free on the ENI when the job runs, under a per-ENI lease, and records it before calling EC2.
AUTO = "auto"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    CREATED = "created"
    FAILED = "failed"
    DRY_RUN_OK = "dry_run_ok"


TERMINAL_STATUSES = frozenset({JobStatus.CREATED, JobStatus.FAILED, JobStatus.DRY_RUN_OK})


class JobError(TypedDict):
    code: str  # EC2's error code, or mirrorq's own (InvalidJob, DeadlineExceeded, ...)
    message: str
    retryable: bool


class JobResult(TypedDict):
    """What `mirrorq status` prints and the result backend holds for every job."""

    job_id: str
    batch_id: str | None
    status: str  # a JobStatus value
    attempts: int  # CreateTrafficMirrorSession calls made, across retries and redeliveries
    client_token: str | None
    request: dict[str, Any] | None  # the request syntax as executed
    response: dict[str, Any] | None  # EC2's answer, verbatim
    error: JobError | None
    submitted_at: str | None
    started_at: str | None
    finished_at: str | None


class FieldError(TypedDict):
    field: str
    message: str


class InvalidJobError(ValueError):
    """A job that does not satisfy the request syntax; names every offending field."""

    code = "InvalidJob"

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


# The request syntax --------------------------------------------------------------------------

_Strict = ConfigDict(extra="forbid", frozen=True)


class Tag(BaseModel):
    model_config = _Strict

    Key: Annotated[str, Field(min_length=1, max_length=127)]
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
    Tags: Annotated[list[Tag], Field(max_length=50)] = []


class SessionRequest(BaseModel):
    """CreateTrafficMirrorSession's keyword arguments, with the seed's constraints."""

    model_config = _Strict

    NetworkInterfaceId: Annotated[str, Field(pattern=r"^eni-[0-9a-f]{8,17}$")]
    TrafficMirrorTargetId: Annotated[str, Field(pattern=r"^tmt-[0-9a-f]{8,17}$")]
    TrafficMirrorFilterId: Annotated[str, Field(pattern=r"^tmf-[0-9a-f]{8,17}$")]
    SessionNumber: Annotated[int, Field(ge=1, le=SESSION_NUMBER_MAX)] | Literal["auto"]
    PacketLength: Annotated[int, Field(ge=1, le=PACKET_LENGTH_MAX)] | None = None
    VirtualNetworkId: Annotated[int, Field(ge=0, le=VIRTUAL_NETWORK_ID_MAX)] | None = None
    Description: Annotated[str, Field(max_length=255)] | None = None
    TagSpecifications: list[TagSpecification] | None = None
    DryRun: StrictBool | None = None
    ClientToken: Annotated[str, Field(min_length=1, max_length=CLIENT_TOKEN_MAX)] | None = None

    @field_validator("ClientToken")
    @classmethod
    def _ascii(cls, token: str | None) -> str | None:
        if token is not None and not token.isascii():
            raise ValueError("must be ASCII")
        return token

    @property
    def auto_session_number(self) -> bool:
        return self.SessionNumber == AUTO

    def to_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `create_traffic_mirror_session`, unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


def _field_errors(error: ValidationError) -> list[FieldError]:
    """One error per field; a union's alternatives ("an integer" or "auto") joined by "or"."""
    by_field: dict[str, list[str]] = {}
    for e in error.errors(include_url=False):
        # Keep field names and list indexes; drop pydantic's union-member tags.
        path = [str(p) for p in e["loc"] if isinstance(p, int) or str(p).isidentifier()]
        by_field.setdefault(".".join(path) or "(job)", []).append(e["msg"])
    return [{"field": f, "message": " or ".join(m)} for f, m in by_field.items()]


def parse_request(raw: Any) -> SessionRequest:
    """Validate a job's request (a dict, or JSON text of one); raise InvalidJobError."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as error:
            raise InvalidJobError([{"field": "(job)", "message": f"not JSON: {error}"}]) from None
    if not isinstance(raw, dict):
        raise InvalidJobError(
            [{"field": "(job)", "message": f"expected a JSON object, got {type(raw).__name__}"}]
        )
    try:
        return SessionRequest.model_validate(raw)
    except ValidationError as error:
        raise InvalidJobError(_field_errors(error)) from None


def utcnow() -> str:
    """Timestamps in results: UTC, ISO 8601, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_result(
    job_id: str,
    request: dict[str, Any] | None,
    *,
    batch_id: str | None = None,
    client_token: str | None = None,
    submitted_at: str | None = None,
) -> JobResult:
    return {
        "job_id": job_id,
        "batch_id": batch_id,
        "status": JobStatus.QUEUED.value,
        "attempts": 0,
        "client_token": client_token,
        "request": request,
        "response": None,
        "error": None,
        "submitted_at": submitted_at,
        "started_at": None,
        "finished_at": None,
    }
