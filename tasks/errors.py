"""mirrorq's own errors, the whole hierarchy. Each class declares, once, its code (in EC2's
style), the HTTP status the API answers it with and the status the CLI exits with:

    MirrorqError                    code                 HTTP  exit
    ├── InvalidJobError             InvalidJob           422   2    (400: a body not JSON)
    │   └── BatchFileError          InvalidJob           422   2
    ├── IdempotencyConflictError    IdempotencyConflict  409   2
    ├── JobNotFoundError            JobNotFound          404   2
    ├── BatchNotFoundError          BatchNotFound        404   2
    ├── PolicyError                 InvalidPolicy        400   2
    ├── NotAnEventError             InvalidEvent         400   2
    ├── UnknownResourceError        UnknownResource      400   2
    ├── QueueError                  QueueUnusable        502   1    (2: found at start)
    ├── NotReplicatedError          NotReplicated        503   1    (retried in a worker)
    │   what a job meets in a worker, recorded as its outcome's code:
    ├── JobExpiredError             Expired              400   1
    ├── JobRevokedError             Revoked              400   1
    ├── WrongScopeError             WrongScope           400   1
    ├── AlreadyMirroredError        AlreadyMirrored      400   1
    ├── LeaseLostError              LeaseLost            400   1    (retried)
    └── SupersededError             Superseded           400   1    (the worker yields)

Exit statuses are the SPEC's: 0 success, 1 a job or batch ended with failures (or something
outside the input failed: a queue, a role STS refused), 2 usage or input error.

The CLI prints one and exits with its status (`mirrorq/cli/base.py`, `fail`); the HTTP API
answers with its status, code, message and fields (`mirrorq/api/errors.py`, `from_mirrorq`);
a job refused by a worker records its code (`worker/errors.py`, `classify`). AWS's and
Redis's own exceptions are never wrapped in these: `worker/errors.py` classifies them as
they are. This module imports nothing heavy: producers, workers and the CLI all load it.
"""

from __future__ import annotations

from typing import ClassVar, NotRequired, TypedDict

EXIT_FAILED = 1  # a job or batch ended with failures; something outside the input failed
EXIT_USAGE = 2  # usage or input error (click uses 2 for usage errors too)

MAX_LISTED = 100  # errors listed in one answer; a file of a million bad lines names 100
_IN_MESSAGE = 10


class FieldError(TypedDict):
    field: str  # "SessionNumber", "TagSpecifications.0.Tags.2.Key", "(job)", "(line)"...
    message: str
    line: NotRequired[int]  # in a job file or a JSON Lines body


class MirrorqError(Exception):
    """A failure of mirrorq's own making. Its class declares its `code`, `http_status` and
    `exit_status`; the API and the CLI ask an error for its `status_code` and `exit_code`,
    which are its class's unless the error knows better (a body that is not JSON, a queue
    refused at start)."""

    code: ClassVar[str]
    http_status: ClassVar[int]
    exit_status: ClassVar[int]
    retryable: ClassVar[bool] = False  # a worker retries the job's attempt

    @property
    def status_code(self) -> int:
        """The HTTP status the API answers this error with."""
        return self.http_status

    @property
    def exit_code(self) -> int:
        """The status the CLI exits with on this error."""
        return self.exit_status

    @property
    def fields(self) -> list[FieldError]:
        """The fields it names (at most MAX_LISTED): the API's answer lists them, the CLI
        prints one a line."""
        return []

    @property
    def fields_total(self) -> int:
        """How many fields it found wrong in all, listed or not."""
        return len(self.fields)


class InvalidJobError(MirrorqError):
    """Input that is not a valid job (or file of jobs); names the offending fields: all of
    them, or the first MAX_LISTED with `total` counting every one."""

    code = "InvalidJob"
    http_status = 422
    not_json_status: ClassVar[int] = 400  # the body (or a job in it) is not JSON at all
    exit_status = EXIT_USAGE

    def __init__(self, errors: list[FieldError], total: int | None = None) -> None:
        self.errors = errors[:MAX_LISTED]
        self.total = max(total or 0, len(errors))
        message = "; ".join(describe(e) for e in errors[:_IN_MESSAGE])
        if self.total > _IN_MESSAGE:
            message += f"; ... {self.total} errors in all"
        super().__init__(message)

    @property
    def not_json(self) -> bool:
        """The body, or a job of it, is not JSON (or not UTF-8): not a job that is wrong."""
        return any(
            e["field"] == "(body)" or (e["field"] == "(job)" and "JSON" in e["message"])
            for e in self.errors
        )

    @property
    def status_code(self) -> int:
        return self.not_json_status if self.not_json else self.http_status

    @property
    def fields(self) -> list[FieldError]:
        return self.errors

    @property
    def fields_total(self) -> int:
        return self.total


class BatchFileError(InvalidJobError):
    """A job file with bad lines, each named with its line number (the first MAX_LISTED, and
    how many in all)."""


class IdempotencyConflictError(MirrorqError):
    """The idempotency key was already used for a different request."""

    code = "IdempotencyConflict"
    http_status = 409
    exit_status = EXIT_USAGE


class JobNotFoundError(MirrorqError):
    """No job has this id (an unknown id, or its record expired)."""

    code = "JobNotFound"
    http_status = 404
    exit_status = EXIT_USAGE

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id} (unknown id, or its record expired)")


class BatchNotFoundError(MirrorqError):
    """No batch has this id (an unknown id, or its record expired)."""

    code = "BatchNotFound"
    http_status = 404
    exit_status = EXIT_USAGE

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id} (unknown id, or its record expired)")


class PolicyError(MirrorqError):
    """A policy file that cannot be used; names the file, and each rule and field (in its
    message, one a line)."""

    code = "InvalidPolicy"
    http_status = 400
    exit_status = EXIT_USAGE

    def __init__(self, path: str, errors: list[FieldError]) -> None:
        self.path = path
        self.errors = errors
        super().__init__("\n".join(f"{path}: {e['field']}: {e['message']}" for e in errors))


class NotAnEventError(MirrorqError):
    """The body is not an EventBridge event (a listener leaves it for the queue's dead-letter
    queue)."""

    code = "InvalidEvent"
    http_status = 400
    exit_status = EXIT_USAGE


class UnknownResourceError(MirrorqError):
    """A rule or command names a target or filter that does not exist; names which."""

    code = "UnknownResource"
    http_status = 400
    exit_status = EXIT_USAGE

    def __init__(self, kind: str, ids: list[str]) -> None:
        super().__init__(f"no traffic mirror {kind} {', '.join(ids)}")
        self.kind = kind  # "target" or "filter": the option or field that names it
        self.ids = ids


class QueueError(MirrorqError):
    """A queue the listener cannot use, for a reason retrying cannot change (SQS's code):
    one named at start is an input error; one that stops being usable later is not."""

    code = "QueueUnusable"
    http_status = 502  # SQS's answer, as the API answers EC2's permanent ones
    exit_status = EXIT_FAILED
    at_start_exit_status: ClassVar[int] = EXIT_USAGE

    def __init__(self, queue_url: str, reason_code: str, reason: str, *, at_start: bool) -> None:
        super().__init__(f"queue {queue_url}: {reason_code}: {reason}")
        self.queue_url, self.at_start = queue_url, at_start

    @property
    def exit_code(self) -> int:
        return self.at_start_exit_status if self.at_start else self.exit_status


class NotReplicatedError(MirrorqError):
    """A write that must reach MIRRORQ_REDIS_MIN_REPLICAS replicas did not within
    MIRRORQ_REDIS_REPLICA_TIMEOUT_S (a failover, a replica down or behind). A producer's
    job or batch was not accepted (its acceptance is undone; retry with the same idempotency
    key); a worker's fenced create is not sent yet, and its attempt is retried. With Sentinel
    and no replica required: an acceptance that could not be confirmed on the primary the
    sentinels name within MIRRORQ_REDIS_RETRY_S (a failover that does not settle), undone
    likewise (tasks/replication.py `OnPrimary`)."""

    code = "NotReplicated"
    http_status = 503
    exit_status = EXIT_FAILED
    retryable = True

    def __init__(
        self, what: str, acked: int, wanted: int, timeout_s: float, *, reason: str | None = None
    ) -> None:
        said = reason or (
            f"reached {acked} of the {wanted} Redis replica(s) required "
            "(MIRRORQ_REDIS_MIN_REPLICAS)"
        )
        super().__init__(
            f"{what} {said} within {timeout_s:g} s; retry with the same idempotency key"
        )
        self.acked, self.wanted = acked, wanted


class JobExpiredError(MirrorqError):
    """The message's `expires` (Celery's option) passed before a worker ran the job."""

    code = "Expired"
    http_status = 400
    exit_status = EXIT_FAILED


class JobRevokedError(MirrorqError):
    """The job's id was revoked (`celery control revoke`) before a worker ran it."""

    code = "Revoked"
    http_status = 400
    exit_status = EXIT_FAILED


class WrongScopeError(MirrorqError):
    """The job was accepted for another account or Region than the worker it reached serves,
    and no other queue is that scope's (fleets of one account in two Regions, the account
    unset, share the queue `mirrorq`): it is never run here."""

    code = "WrongScope"
    http_status = 400
    exit_status = EXIT_FAILED


class AlreadyMirroredError(MirrorqError):
    """The ENI is already mirrored to this target through this filter."""

    code = "AlreadyMirrored"
    http_status = 400
    exit_status = EXIT_FAILED


class LeaseLostError(MirrorqError):
    """The ENI's lease lapsed before the create was sent (the holder was cut off from Redis,
    or stalled): nothing was sent; the next attempt takes the lease again and reads again."""

    code = "LeaseLost"
    http_status = 400
    exit_status = EXIT_FAILED
    retryable = True


class SupersededError(MirrorqError):
    """Another worker holds the job's run lease, or finished the job: it owns the record."""

    code = "Superseded"
    http_status = 400
    exit_status = EXIT_FAILED


def describe(error: FieldError) -> str:
    where = f"line {error['line']}: " if "line" in error else ""
    return f"{where}{error['field']}: {error['message']}"
