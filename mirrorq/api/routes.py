"""The routes: /v1 (jobs, batches, events; every one behind a bearer token), health and metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from mirrorq.api.auth import Tokens
from mirrorq.api.errors import ApiError
from mirrorq.api.schemas import (
    BATCH_BODY,
    EVENT_BODY,
    JOB_BODY,
    BatchAccepted,
    BatchStatus,
    Coverage,
    EventOutcome,
    Health,
    JobAccepted,
    Ready,
    RetargetBody,
    SessionsPlanned,
    UnmirrorBody,
    errors,
)
from mirrorq.coverage import CoverageCache
from mirrorq.events import read_event
from mirrorq.export import export_lines
from mirrorq.intake import Intake
from mirrorq.jobfiles import parse_placed_jobs
from mirrorq.lifecycle import (
    DeadTargetError,
    SessionPlan,
    plan_retarget_live,
    plan_unmirror_live,
    submit_session_jobs,
)
from mirrorq.policy_watch import WatchedPolicy
from tasks.connections import answers
from tasks.contract import (
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_KEY_RULE,
    NOWHERE,
    JobKind,
    idempotency_key,
    parse_job_entry,
)
from tasks.errors import (
    BatchNotFoundError,
    InvalidJobError,
    JobNotFoundError,
    UnknownResourceError,
)
from tasks.producer import Producer
from tasks.records import JobResult, is_terminal

WAIT_POLL_S = 0.1
READY_TIMEOUT_S = 2.0  # a probe must answer; Redis commands themselves wait through a restart
MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


@dataclass
class Services:
    producer: Producer
    tokens: Tokens
    registry: CollectorRegistry
    intake: Intake | None = None  # with --policy: POST /v1/events
    coverage: CoverageCache | None = None  # with --policy: GET /v1/coverage
    policy: WatchedPolicy | None = None  # with --policy: its file, watched (for /readyz)


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def authorized(request: Request, s: Annotated[Services, Depends(services)]) -> None:
    s.tokens.check(request)


# Answers any route may give: a body over the limit (BodyLimit reads every request's), a
# failure of the API's own; and on /v1, a missing token, Redis away.
v1 = APIRouter(
    prefix="/v1",
    dependencies=[Depends(authorized)],
    responses=errors(401, 413, 500, 503),
)
probes = APIRouter(responses=errors(413, 500))
Svc = Annotated[Services, Depends(services)]


KEY_HEADER = "Idempotency-Key"
KEY_DOC = (
    f"Same key, same job (with another body: 409). Read as UTF-8: bytes that are not UTF-8 "
    f"are refused (422 naming {KEY_HEADER}). {IDEMPOTENCY_KEY_RULE[0].upper()}"
    f"{IDEMPOTENCY_KEY_RULE[1:]}: the same key, and the same job, as `mirrorq submit "
    f"--idempotency-key` or `Producer.submit(idempotency_key=...)`. The pattern says the "
    f"ASCII part of the rule; the rest is Unicode's: no format, private-use or unassigned "
    f"character, and no separator but the space."
)
# What the contract's idempotency_key checks, said in JSON Schema as far as it portably can
# (not checked twice: the length is in characters of the key read as UTF-8, not the header's
# Latin-1 reading): no control character, no white space at either end.
KEY_SCHEMA = {
    "minLength": 1,
    "maxLength": IDEMPOTENCY_KEY_MAX,
    "pattern": r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$",
}


def idempotency_key_header(
    key: Annotated[
        str | SkipJsonSchema[None],  # a header is text or absent, never null
        Header(alias=KEY_HEADER, description=KEY_DOC, json_schema_extra=KEY_SCHEMA),
    ] = None,
) -> str | None:
    """The header's key as its sender wrote it. Starlette decodes header values as Latin-1, one
    character per byte, so encoding them back gives the bytes sent, which are read as UTF-8
    (what every HTTP client sends for non-ASCII text), not as mojibake of another key."""
    if key is None:
        return None
    try:
        text = key.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"not UTF-8 (byte {error.start + 1} of the value); send the key as UTF-8"
        raise InvalidJobError([{"field": KEY_HEADER, "message": message}]) from None
    return idempotency_key(text, KEY_HEADER)


@v1.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": JobResult, "description": "finished within ?wait: its record"},
        **errors(
            400,
            409,
            422,
            s422="Invalid: each bad field named (InvalidJob: the job, or the Idempotency-Key "
            "header; InvalidRequest: ?wait)",
        ),
    },
    openapi_extra=JOB_BODY,
    summary="Submit one job: the seed's request syntax (a create), or a JobEnvelope of any kind "
    "(create, delete, modify)",
)
async def submit_job(
    request: Request,
    s: Svc,
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
    wait: Annotated[float, Query(ge=0, le=600, description="seconds to wait for the outcome")] = 0,
) -> Response:
    job = parse_job_entry(await utf8_body(request))
    accepted = await run_in_threadpool(
        s.producer.accept,
        job.request.to_kwargs(),
        idempotency_key=idempotency_key,
        placement=job.placement,
        kind=job.kind,
        network_interface_id=None if job.kind is JobKind.CREATE else job.network_interface_id,
    )
    if wait > 0:
        record = await _outcome(s.producer, accepted.job_id, wait)
        if record is not None:
            return JSONResponse(record, 200)
    return JSONResponse({"job_id": accepted.job_id}, 202)


async def _outcome(producer: Producer, job_id: str, wait: float) -> JobResult | None:
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        record = await run_in_threadpool(producer.result, job_id)
        if record is not None and is_terminal(record):
            return record
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(WAIT_POLL_S)


async def utf8_body(request: Request) -> str:
    """The body as text: JSON is UTF-8, and a byte that is not is refused, never replaced."""
    try:
        return (await request.body()).decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidJobError([{"field": "(body)", "message": f"not UTF-8: {error}"}]) from None


@v1.get(
    "/jobs/{job_id}",
    response_model=JobResult,
    responses=errors(404, s404="No such job, or its record expired (JobNotFound)"),
    summary="A job's result record",
)
async def get_job(job_id: str, s: Svc) -> JSONResponse:
    record = await run_in_threadpool(s.producer.result, job_id)
    if record is None:
        raise JobNotFoundError(job_id)
    return JSONResponse(record)


@v1.post(
    "/batches",
    status_code=202,
    response_model=BatchAccepted,
    responses=errors(
        400,
        422,
        s400="A JSON array body that is not JSON, or a body that is not UTF-8 (InvalidJob)",
        s422="A bad job, or none: each bad field named with its line (InvalidJob; the first "
        "100); the batch is refused whole",
    ),
    openapi_extra=BATCH_BODY,
    summary="Submit a batch: a JSON array or JSON Lines of jobs (requests or JobEnvelopes), "
    "refused whole if any is bad",
)
async def submit_batch(request: Request, s: Svc) -> JSONResponse:
    text = await utf8_body(request)
    fmt = "json" if text.lstrip().startswith("[") else "jsonl"
    jobs = await run_in_threadpool(parse_placed_jobs, text, fmt, "the body")
    batch_id = await run_in_threadpool(
        s.producer.submit_batch,
        jobs.requests,
        source="mirrorq api",
        placements=jobs.placements,
        network_interface_ids=jobs.network_interface_ids,
    )
    return JSONResponse({"batch_id": batch_id, "jobs": len(jobs.requests)}, 202)


@v1.get(
    "/batches/{batch_id}",
    response_model=BatchStatus,
    responses=errors(404, s404="No such batch, or its record expired (BatchNotFound)"),
    summary="A batch's counts by status, totals, plan and times",
)
async def get_batch(batch_id: str, s: Svc) -> JSONResponse:
    return JSONResponse(await _batch(s, batch_id))


async def _batch(s: Services, batch_id: str) -> dict[str, Any]:
    status = await run_in_threadpool(s.producer.batch_status, batch_id)
    if status is None:
        raise BatchNotFoundError(batch_id)
    return status


@v1.get(
    "/batches/{batch_id}/results",
    responses={
        200: {
            "content": {
                MEDIA["jsonl"]: {
                    "schema": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/JobResult"},
                        "description": "?format=jsonl: one JobResult a line",
                    }
                },
                MEDIA["csv"]: {
                    "schema": {
                        "type": "string",
                        "description": "?format=csv: a header row, then one row per job "
                        "(mirrorq export's columns)",
                    }
                },
            },
            "description": "one record (JSON Lines) or row (CSV) per job, in submission "
            "order (jobs whose record expired are left out)",
        },
        **errors(
            404,
            422,
            s404="No such batch, or its record expired (BatchNotFound)",
            s422="?format is neither jsonl nor csv (InvalidRequest)",
        ),
    },
    response_class=StreamingResponse,
    summary="The batch's results, streamed in submission order",
)
async def batch_results(
    batch_id: str,
    s: Svc,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    await _batch(s, batch_id)
    lines = export_lines(s.producer.batch_results(batch_id), format)
    return StreamingResponse(lines, media_type=MEDIA[format])


@v1.post(
    "/events",
    status_code=202,
    response_model=EventOutcome,
    responses=errors(
        400,
        422,
        502,
        503,
        s400="Not an EventBridge event (InvalidEvent): not JSON, over 256 KiB, or without "
        "what its detail-type needs",
        s422="A job event whose detail is not a valid job (InvalidJob)",
        s503="This API was started without --policy (NoPolicy: no events until it is); "
        "Redis does not answer (RedisUnavailable); EC2 does not answer or is throttling "
        "(Ec2Unavailable, or EC2's code): try again",
    ),
    openapi_extra=EVENT_BODY,
    summary="An EventBridge event, through the policy (as mirrorq listen does)",
)
async def post_event(request: Request, s: Svc) -> JSONResponse:
    if s.intake is None:
        # The request is fine; this API is not serving events: a 5xx, so that EventBridge
        # (which drops an event answered 4xx) retries until an API with a policy takes it.
        raise ApiError(503, "NoPolicy", "this API was started without --policy: no events")
    event = read_event(await request.body())  # NotAnEventError: 400, InvalidEvent
    (outcome,) = await s.intake.handle([event])
    if outcome.error:  # its detail (mirrorq.CreateTrafficMirrorSession) is not a valid job
        raise ApiError(InvalidJobError.http_status, InvalidJobError.code, outcome.error)
    return JSONResponse(
        {
            "event_id": outcome.event_id,
            "job_ids": outcome.job_ids,
            "duplicates": outcome.duplicates,
            "ignored": outcome.ignored,
        },
        202,
    )


SESSIONS_ERRORS = errors(
    400,
    422,
    502,
    503,
    s400="A body that is not JSON (HttpError)",
    s422="A body that is not valid: each bad field named (InvalidRequest)",
    s502="EC2 refused a read (its code, e.g. UnauthorizedOperation)",
    s503="Redis does not answer (RedisUnavailable); EC2 does not answer or is throttling "
    "(Ec2Unavailable, or EC2's code): try again",
)


@v1.post(
    "/unmirror",
    status_code=202,
    response_model=SessionsPlanned,
    responses=SESSIONS_ERRORS,
    summary="Delete the managed sessions the body selects (as mirrorq unmirror): planned from "
    "EC2 now, submitted as one batch of delete jobs",
)
async def unmirror(body: UnmirrorBody, s: Svc) -> JSONResponse:
    selection = body.selection(body.target, body.filter)
    plan = await plan_unmirror_live(s.producer.settings, selection)
    return await _submit_sessions(s, plan, "mirrorq api unmirror", body.dry_run)


@v1.post(
    "/retarget",
    status_code=202,
    response_model=SessionsPlanned,
    responses={
        **SESSIONS_ERRORS,
        **errors(
            404,
            409,
            s404="No traffic mirror target `to` (UnknownResource)",
            s409="Target `to` is dead: its sensor is gone (DeadTarget)",
        ),
    },
    summary="Move the managed sessions on target `from` to target `to` in place (as mirrorq "
    "retarget): one modify each, no gap in mirroring",
)
async def retarget(body: RetargetBody, s: Svc) -> JSONResponse:
    selection = body.selection(targets=[body.from_])
    try:
        plan = await plan_retarget_live(s.producer.settings, selection, body.to)
    except UnknownResourceError as error:
        raise ApiError(404, error.code, str(error)) from None
    except DeadTargetError as error:
        raise ApiError(409, "DeadTarget", str(error)) from None
    return await _submit_sessions(s, plan, "mirrorq api retarget", body.dry_run)


async def _submit_sessions(
    s: Services, plan: SessionPlan, source: str, dry_run: bool
) -> JSONResponse:
    jobs = plan.jobs(dry_run=dry_run, place=NOWHERE)
    batch_id = await run_in_threadpool(
        submit_session_jobs, s.producer, jobs, source=source, plan=plan.summary()
    )
    return JSONResponse(
        {
            "batch_id": batch_id,
            "jobs": len(jobs),
            "counts": plan.counts(),
            "sessions": [i.to_json() for i in plan.items],
        },
        202,
    )


@v1.get(
    "/coverage",
    response_model=Coverage,
    responses=errors(
        400,
        502,
        503,
        s400="A rule's target or filter exists in none of its places (UnknownResource)",
        s502="EC2 or STS refused a read of the policy's places (their code, e.g. AccessDenied)",
        s503="This API was started without --policy (NoPolicy); Redis does not answer "
        "(RedisUnavailable); EC2 does not answer or is throttling (Ec2Unavailable, or "
        "EC2's code): try again",
    ),
    summary="The policy's coverage now: per rule, ENIs mirrored live, dark, missing by "
    "reason, unsupported; managed sessions no rule wants (read from EC2, cached a few seconds)",
)
async def get_coverage(s: Svc) -> JSONResponse:
    if s.coverage is None:
        raise ApiError(503, "NoPolicy", "this API was started without --policy: no coverage")
    return JSONResponse(await s.coverage.get())


@probes.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get(
    "/readyz",
    response_model=Ready,
    responses=errors(
        503,
        s503="Not ready: Redis does not answer (NotReady), or the policy file is invalid "
        "(InvalidPolicy, naming file, rule and field; the last good policy serves events)",
    ),
    summary="Readiness: Redis answers, the policy file is valid",
)
async def readyz(s: Svc) -> JSONResponse:
    settings = s.producer.settings
    for name, url in (("broker", settings.broker_url), ("results", settings.result_backend)):
        if not await answers(url, READY_TIMEOUT_S):
            raise ApiError(503, "NotReady", f"Redis ({name}) does not answer")
    if s.policy is None:
        return JSONResponse({"status": "ready"})
    rules, error = s.policy.current(), s.policy.error
    if error is not None:
        # Events still go through the last good rules; but this file would not start again.
        message = (
            f"policy {error.path} is invalid; the last good one ({len(rules)} rules) is in use"
        )
        raise ApiError(503, error.code, message, error.errors)
    return JSONResponse(
        {"status": "ready", "policy": {"path": str(s.policy.path), "rules": len(rules)}}
    )


@probes.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": f"Prometheus's text format ({CONTENT_TYPE_LATEST})",
        },
        **errors(503, s503="Redis does not answer (RedisUnavailable)"),
    },
    summary="Prometheus metrics of the whole fleet, read from Redis",
)
async def metrics(s: Svc) -> Response:
    text = await run_in_threadpool(generate_latest, s.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
