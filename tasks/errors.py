"""mirrorq's own errors: one hierarchy, each with a code in EC2's style.

The CLI prints the code and the fields; the HTTP API answers with the same code; a job
refused by a worker records it. AWS's and Redis's own exceptions are never wrapped in these:
`worker/errors.py` classifies them as they are.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class FieldError(TypedDict):
    field: str  # "SessionNumber", "TagSpecifications.0.Tags.2.Key", "(job)", "(line)"...
    message: str
    line: NotRequired[int]  # in a job file or a JSON Lines body


class MirrorqError(Exception):
    """A failure of mirrorq's own making, with a code like EC2's."""

    code = "MirrorqError"
    retryable = False


MAX_LISTED = 100  # errors listed in one answer; a file of a million bad lines names 100
_IN_MESSAGE = 10


class InvalidJobError(MirrorqError):
    """Input that is not a valid job (or file of jobs); names the offending fields: all of
    them, or the first MAX_LISTED with `total` counting every one."""

    code = "InvalidJob"

    def __init__(self, errors: list[FieldError], total: int | None = None) -> None:
        self.errors = errors[:MAX_LISTED]
        self.total = max(total or 0, len(errors))
        message = "; ".join(describe(e) for e in errors[:_IN_MESSAGE])
        if self.total > _IN_MESSAGE:
            message += f"; ... {self.total} errors in all"
        super().__init__(message)


class JobExpiredError(MirrorqError):
    """The message's `expires` (Celery's option) passed before a worker ran the job."""

    code = "Expired"


class JobRevokedError(MirrorqError):
    """The job's id was revoked (`celery control revoke`) before a worker ran it."""

    code = "Revoked"


class WrongScopeError(MirrorqError):
    """The job was accepted for another account or Region than the worker it reached serves,
    and no other queue is that scope's (fleets of one account in two Regions, the account
    unset, share the queue `mirrorq`): it is never run here."""

    code = "WrongScope"


class IdempotencyConflictError(MirrorqError):
    """The idempotency key was already used for a different request."""

    code = "IdempotencyConflict"


def describe(error: FieldError) -> str:
    where = f"line {error['line']}: " if "line" in error else ""
    return f"{where}{error['field']}: {error['message']}"
