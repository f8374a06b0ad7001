"""Log lines of every mirrorq process: readable text or one JSON object a line, with the context
of what is being done (the job, the event, the rule) and nothing secret in any field.

The context travels in a contextvar: `log_context(job_id=...)` where a job starts running, an
event is handled or a rule is planned, and every line logged inside (by mirrorq, botocore,
Celery...) carries it, as do the asyncio tasks and threads (`asyncio.to_thread`) started
there. `configure()` gives the process's root logger its one handler, to stderr; Celery's,
kombu's, uvicorn's and botocore's loggers all propagate to it (the worker's Celery hands its
logging to `celery_setup_logging`, uvicorn is run with no `log_config`). JSON is formatted by
python-json-logger; every field of a line goes through the redactor (worker/redaction.py) on
the way out, extra fields and tracebacks too, not only the message.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType, TracebackType
from typing import IO, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonEncoder, JsonFormatter

from tasks.contract import TASK_NAME
from worker.redaction import EXTERNAL_ID_KEY, MASK, REDACTOR


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


# The context a line may carry, in the order text lines show it. `error_code` is EC2's (or
# STS's, SQS's) answer; `attempt` the job's CreateTrafficMirrorSession call being made (or the
# one that failed); `task` the Celery task's name.
FIELDS = (
    "job_id",
    "batch_id",
    "rule",
    "event_id",
    "account_id",
    "region",
    "attempt",
    "error_code",
    "task",
)
_context: ContextVar[Mapping[str, object]] = ContextVar(
    "mirrorq_log_context", default=MappingProxyType({})
)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Every line logged inside the block carries these fields (None ones are left out)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class WithContext(logging.Filter):
    """Puts the context on each record the handler emits (in the thread that logs it, so the
    context is the caller's); a field the call gave itself (`extra=`) is kept. Celery's lines
    about a message name its task (and, for a single job's message, whose id is the job's,
    the job) in their `data`."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        data = getattr(record, "data", None)
        if isinstance(data, Mapping) and isinstance(data.get("name"), str):
            if not hasattr(record, "task"):
                record.task = data["name"]
            if data["name"] == TASK_NAME and not hasattr(record, "job_id"):
                record.job_id = data.get("id")
        return True


def _utc_iso(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`2026-12-06T13:51:40.123+00:00 WARNING mirrorq.jobs: message [job_id=… task=…]`, a
    traceback on the lines after."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        line = f"{_utc_iso(record)} {self.formatMessage(record)}"
        context = " ".join(
            f"{key}={value}"
            for key in FIELDS
            if (value := getattr(record, key, None)) is not None and value != ""
        )
        if context:
            line += f" [{context}]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return REDACTOR.redact(line)


def _redacted(value: Any) -> Any:
    """`value` with every string in it redacted (mappings and sequences walked), and the value
    of an `ExternalId` or `external_id` key masked whatever it is."""
    if isinstance(value, str):
        return REDACTOR.redact(value)
    if isinstance(value, Mapping):
        return {
            str(k): MASK if _names_an_external_id(k) and v is not None else _redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(v) for v in value]
    return value  # numbers, None, datetimes; anything else is redacted as the encoder sees it


def _names_an_external_id(key: object) -> bool:
    return isinstance(key, str) and EXTERNAL_ID_KEY.fullmatch(key) is not None


class _RedactingEncoder(JsonEncoder):
    """python-json-logger's encoder (datetimes, exceptions, dataclasses...), whose text for an
    object it had to convert is redacted too."""

    def default(self, o: Any) -> Any:
        return _redacted(super().default(o))


class JsonLines(JsonFormatter):
    """One JSON object a line: `timestamp` (UTC, ISO 8601), `level`, `logger`, `message`, the
    context that applies (FIELDS), and any extra field a call gave; `exc_info` for a traceback.
    Every value redacted."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            # uvicorn's copy of its message with terminal colours; Python 3.12's asyncio task.
            reserved_attrs=[*RESERVED_ATTRS, "color_message", "taskName"],
            json_encoder=_RedactingEncoder,
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["timestamp"] = _utc_iso(record)  # first, for people reading the raw lines
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        redacted: dict[str, Any] = _redacted(log_data)
        return redacted


_lock = threading.Lock()
_chosen: LogFormat | None = None


def configure(
    log_format: LogFormat | str,
    level: int | str,
    stream: IO[str] | None = None,
    *,
    path: str | None = None,
) -> None:
    """The process's logging: one handler on the root logger (stderr, or the file `path`),
    lines as `log_format`, at `level` and above; every logger propagates to it (Celery's,
    kombu's, uvicorn's). Python's warnings become lines too, and in JSON an uncaught
    exception is one line, not a bare traceback. Called again (Celery sets its level), it
    replaces what it did."""
    global _chosen  # noqa: PLW0603 - one logging set-up per process
    log_format = LogFormat(log_format)
    handler: logging.Handler = (
        logging.FileHandler(path) if path else logging.StreamHandler(stream or sys.stderr)
    )
    handler.setFormatter(JsonLines() if log_format is LogFormat.JSON else TextFormatter())
    handler.addFilter(WithContext())
    with _lock:
        _chosen = log_format
        root = logging.getLogger()
        for old in root.handlers[:]:
            root.removeHandler(old)
            old.close()
        root.addHandler(handler)
        root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery.task"):
        # Handlers of their own (a library's defaults) would print lines of another shape.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Celery logs every task's success at INFO; the result backend already records each job,
    # and at thousands of jobs a minute those lines cost CPU and bury the ones that matter.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    if log_format is LogFormat.JSON:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def chosen() -> LogFormat | None:
    """The format `configure` set in this process (None: not configured)."""
    return _chosen


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("mirrorq").critical("uncaught exception", exc_info=(kind, error, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    logging.getLogger("mirrorq").critical(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def celery_setup_logging(
    loglevel: int | str | None = None, logfile: str | None = None, **_: Any
) -> None:
    """Celery's `setup_logging` signal: with a receiver, Celery configures no logging of its
    own (no root logger hijacked, no handler of its format, stdout not redirected) and this
    process keeps one: the format the command chose (else MIRRORQ_LOG_FORMAT), at the
    worker's `--loglevel`. In JSON, Celery's few words written past logging (the warm
    shutdown notice) become lines too."""
    from config import get_settings

    log_format = _chosen or LogFormat(get_settings().log_format)
    configure(log_format, loglevel or logging.INFO, path=logfile or None)
    if log_format is LogFormat.JSON:
        import celery.apps.worker

        celery.apps.worker.safe_say = _celery_says  # type: ignore[attr-defined]


def _celery_says(message: str, *_: Any) -> None:
    """What Celery writes straight to a terminal ("worker: Warm shutdown (MainProcess)"),
    as a line of the log. From a signal handler: logging's locks are re-entrant."""
    logging.getLogger("celery.apps.worker").warning("%s", message.strip())
