"""Which EC2 failures are worth retrying: one table, consulted everywhere.

botocore's exceptions are used as they are; this module only reads them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

# Transient by EC2's own description: request throttling and server-side trouble.
THROTTLING_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
SERVER_CODES = frozenset(
    {"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout"}
)
TRANSIENT_CODES = THROTTLING_CODES | SERVER_CODES
# Everything else EC2 answers is permanent: validation, *.NotFound, quota *LimitExceeded,
# IdempotentParameterMismatch, UnauthorizedOperation... Retrying cannot change the answer.

DRY_RUN_OK = "DryRunOperation"


class MirrorqError(Exception):
    """A failure of mirrorq's own making, with a code like EC2's."""

    code = "MirrorqError"
    retryable = False


class EniBusyError(MirrorqError):
    """Another auto-numbered job holds the ENI's lease; try again shortly."""

    code = "EniBusy"
    retryable = True


class AlreadyMirroredError(MirrorqError):
    """The ENI is already mirrored to this target through this filter."""

    code = "AlreadyMirrored"


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    retryable: bool

    @property
    def throttled(self) -> bool:
        return self.code in THROTTLING_CODES


def classify(error: BaseException) -> Failure:
    """EC2's code and whether another attempt may succeed."""
    if isinstance(error, MirrorqError):
        return Failure(error.code, str(error), error.retryable)
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code") or "Unknown")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        retryable = code in TRANSIENT_CODES or (code == "Unknown" and status >= 500)
        return Failure(code, str(info.get("Message") or error), retryable)
    if isinstance(error, ConnectionError | HTTPClientError | aiohttp.ClientError):
        # The request may or may not have reached EC2; the fixed ClientToken makes a retry safe.
        return Failure("ConnectionError", type(error).__name__ + ": " + str(error), True)
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return Failure("Timeout", "no answer from EC2 in time", True)
    return Failure(type(error).__name__, str(error), False)


def is_transient(error: BaseException) -> bool:
    return classify(error).retryable
