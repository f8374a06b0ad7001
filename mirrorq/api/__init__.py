"""`mirrorq api`: the HTTP API for services that don't speak Celery: jobs, batches and events
with the CLI's contract, guarantees and records; health and the fleet's metrics; and the
read-only dashboard at /ui/ (mirrorq/api/ui/).

One ASGI app (FastAPI); the producer, contract, policy, intake and export code are the CLI's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from config import Settings
from mirrorq.api import errors, ui
from mirrorq.api.auth import Tokens
from mirrorq.api.limits import BodyLimit
from mirrorq.api.metrics import FleetCollector
from mirrorq.api.routes import Services, probes, v1
from mirrorq.api.schemas import REF, request_syntax_components
from mirrorq.api.ui import CoverageSource, Dashboard
from mirrorq.coverage import CoverageCache
from mirrorq.policy_watch import PolicyCollector, RulesSource, WatchedPolicy
from mirrorq.rules import Rule
from tasks.producer import Producer
from worker.redaction import REDACTOR

__all__ = ["create_app"]
COVERAGE_FRESH_S = 5.0  # GET /v1/coverage reads EC2 at most this often (a dashboard polls)


def create_app(settings: Settings, policy: WatchedPolicy | Sequence[Rule] = ()) -> FastAPI:
    """The API; with a policy, POST /v1/events turns events into jobs. A watched policy file
    is read again when it changes, and /readyz says when it is invalid."""
    tokens = settings.api_token_values()
    REDACTOR.remember(*tokens)  # never in a log line, whatever logs it
    producer = Producer(settings=settings)
    registry = CollectorRegistry()
    registry.register(FleetCollector(producer))
    services = Services(producer, Tokens(tokens), registry)
    rules: RulesSource = list(policy) if isinstance(policy, Sequence) else policy.current
    if isinstance(policy, WatchedPolicy):
        services.policy = policy
        registry.register(PolicyCollector(policy))
    dashboard = Dashboard(
        settings,
        producer,
        tokens,
        coverage=_coverage_source(services) if rules else None,
        has_policy=bool(rules),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if rules:
                services.intake = await _intake(stack, settings, rules, producer)
                services.coverage = CoverageCache(settings, rules, producer, COVERAGE_FRESH_S)
            await stack.enter_async_context(dashboard.running())
            yield

    app = FastAPI(
        title="mirrorq",
        summary="Create EC2 Traffic Mirror sessions through a job queue, exactly once each.",
        version="1",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.dashboard = dashboard
    app.include_router(v1)
    app.include_router(probes)
    ui.install(app)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


async def _intake(
    stack: AsyncExitStack, settings: Settings, rules: RulesSource, producer: Producer
) -> Any:
    from mirrorq.intake import Intake
    from worker.roads import planner_roads

    roads = await stack.enter_async_context(planner_roads(settings))
    return Intake(rules, settings, producer, roads)


def _coverage_source(services: Services) -> CoverageSource:
    """The dashboard's coverage: the same cached read as GET /v1/coverage (one EC2 read
    serves both), made once the app has started."""

    async def read() -> dict[str, Any]:
        if services.coverage is None:
            raise RuntimeError("the API has not started")
        return await services.coverage.get()

    return read


def _our_error_shape(operation: dict[str, Any]) -> None:
    """FastAPI's own 422 (it adds one to every route with parameters) is answered in mirrorq's
    error shape (errors.py); on a route whose only parameters are path segments, which any
    text fills, there is none to give."""
    responses = operation.get("responses", {})
    if responses.get("422", {}).get("description") != "Validation Error":
        return  # the route's own
    if all(p["in"] == "path" for p in operation.get("parameters", [])):
        del responses["422"]
        return
    responses["422"] = {
        "description": "A parameter is invalid (InvalidRequest), named in fields",
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document, with the request syntax's schemas among its components (the routes
    that read their body themselves refer to them)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_syntax_components(settings.region))
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path.startswith("/v1/"):
                    operation["security"] = [{"bearer": []}]
                _our_error_shape(operation)
        for fastapis in ("HTTPValidationError", "ValidationError"):
            components.pop(fastapis, None)
        app.openapi_schema = schema
    return app.openapi_schema
