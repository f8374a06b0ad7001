"""One error shape for every answer that is not a success, with the CLI's codes:
`{"error": {"code", "message", "fields": [{"field", "message", "line"?}]}}`.

mirrorq's own errors are answered as their classes say (tasks/errors.py); ApiError is the
answer itself, raised as it is for what only HTTP has (a token, a path, readiness)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from tasks.errors import FieldError, MirrorqError
from worker.errors import classify

STATUS_CODES = {401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 413: "TooLarge"}


class ApiError(Exception):
    """An answer that is not a success: its HTTP status, code, message and fields."""

    def __init__(
        self, status: int, code: str, message: str, fields: list[FieldError] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or []


def error_body(code: str, message: str, fields: list[FieldError] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or []}}


def answer(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(error.code, error.message, error.fields), error.status, headers=headers
    )


def from_mirrorq(error: MirrorqError) -> ApiError:
    """One of mirrorq's own errors, answered with its status, its code (the CLI's), its
    message and the fields it names."""
    return ApiError(error.status_code, error.code, str(error), error.fields)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, error: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return answer(error, headers)

    @app.exception_handler(MirrorqError)
    async def _mirrorq(_: Request, error: MirrorqError) -> JSONResponse:
        return answer(from_mirrorq(error))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        fields: list[FieldError] = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in error.errors()
        ]
        return answer(ApiError(422, "InvalidRequest", "the request is not valid", fields))

    @app.exception_handler(RedisError)
    async def _redis(_: Request, error: RedisError) -> JSONResponse:
        return answer(
            ApiError(
                503,
                "RedisUnavailable",
                f"Redis does not answer ({type(error).__name__}); try again",
            )
        )

    @app.exception_handler(BotoCoreError)
    async def _aws(_: Request, error: BotoCoreError) -> JSONResponse:
        return answer(
            ApiError(
                503, "Ec2Unavailable", f"EC2 could not be read ({type(error).__name__}); try again"
            )
        )

    @app.exception_handler(ClientError)
    async def _ec2(_: Request, error: ClientError) -> JSONResponse:
        failure = classify(error)
        status = 503 if failure.retryable else 502
        said = f"{failure.service} answered {failure.code}"
        if failure.operation:
            said += f" to {failure.operation}"
        return answer(ApiError(status, failure.code, said))

    @app.exception_handler(Exception)
    async def _bug(_: Request, error: Exception) -> JSONResponse:
        # Logged by uvicorn with its traceback; the client gets the shape, not the insides.
        return answer(ApiError(500, "InternalError", "the API failed to answer; see its log"))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        code = STATUS_CODES.get(error.status_code, "HttpError")
        # Starlette's own headers stand (a 405's Allow lists the methods the path takes).
        return answer(ApiError(error.status_code, code, str(error.detail)), error.headers)
