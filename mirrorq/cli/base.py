"""The `mirrorq` group, and the few helpers every command prints and exits with."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from tasks.errors import EXIT_FAILED, EXIT_USAGE, MirrorqError, describe
from tasks.records import JobStatus

if TYPE_CHECKING:
    from rich.console import Console

    from tasks.contract import Placement
    from tasks.producer import Producer

F = TypeVar("F", bound=Callable[..., Any])

_SETTINGS_PREFIXES = {"Settings": "MIRRORQ_", "EmulatorSettings": "MIRRORQ_EMULATOR_"}


class Group(click.Group):
    """Settings read from the environment (or .env) that are not valid end the command with
    exit 2 naming each variable, not a traceback. Their values are not printed: one may be
    a secret."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError

        try:
            return super().invoke(ctx)
        except ValidationError as error:
            prefix = _SETTINGS_PREFIXES.get(error.title)
            if prefix is None:
                raise
            for problem in error.errors(include_url=False, include_input=False):
                message = problem["msg"].removeprefix("Value error, ")
                where = "".join(f"{prefix}{str(part).upper()}: " for part in problem["loc"][:1])
                click.echo(f"mirrorq: {where}{message}", err=True)
            sys.exit(EXIT_USAGE)
        except Exception as error:
            said = unreachable(error)
            if said is None:
                raise
            line, code = said
            _say(f"mirrorq: {line}", code)
            sys.exit(EXIT_FAILED)


# Redis, or an AWS endpoint, that could not be reached (refused, timed out, closed, no
# master): not a job that failed, nor an input error, nor a bug. A command meeting one, once
# its own retries are spent (MIRRORQ_REDIS_RETRY_S, MIRRORQ_JOB_DEADLINE_S), says so in one
# line and exits 1 (something outside the input failed); the API answers 503 with the same
# codes (mirrorq/api/errors.py).
REDIS_UNAVAILABLE, EC2_UNAVAILABLE = "RedisUnavailable", "Ec2Unavailable"


def unreachable(error: BaseException) -> tuple[str, str] | None:
    """The line saying which Redis or AWS endpoint `error` could not reach (its URL, never a
    password), with the setting that names it, and the error's code; None for any other
    error. An error raised from one (`raise ... from`), or a group holding one, counts."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        said = _redis_unreachable(current) or _aws_unreachable(current)
        if said is not None:
            return said
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
        if current.__cause__ is not None:
            pending.append(current.__cause__)
    return None


def _redis_unreachable(error: BaseException) -> tuple[str, str] | None:
    if "redis" not in sys.modules and "kombu" not in sys.modules:
        return None
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if not isinstance(error, RedisConnectionError | RedisTimeoutError | OperationalError):
        return None
    from config import get_settings

    settings = get_settings()
    setting, url = "MIRRORQ_BROKER_URL", settings.broker_url
    if settings.result_backend != settings.broker_url and _names_host(
        settings.result_backend, str(error)
    ):
        setting, url = "MIRRORQ_RESULT_BACKEND", settings.result_backend
    return (
        f"Redis is unreachable at {_without_password(url)} ({_reason(error)}): start it, or "
        f"set {setting} to the Redis mirrorq uses",
        REDIS_UNAVAILABLE,
    )


def _aws_unreachable(error: BaseException) -> tuple[str, str] | None:
    if "botocore" not in sys.modules:
        return None
    from botocore.exceptions import ConnectionError as AwsConnectionError
    from botocore.exceptions import ReadTimeoutError

    if not isinstance(error, AwsConnectionError | ReadTimeoutError):
        return None
    from config import get_settings

    settings = get_settings()
    url = str(error.kwargs.get("endpoint_url") or "")
    # The endpoint a setting names (the first that matches: those unset fall back to EC2's).
    service, setting = "EC2", "MIRRORQ_EC2_ENDPOINT_URL (unset: AWS's, for MIRRORQ_REGION)"
    for name, variable, configured in (
        ("STS", "MIRRORQ_STS_ENDPOINT_URL", settings.sts_endpoint_url),
        ("SQS", "MIRRORQ_SQS_ENDPOINT_URL", settings.sqs_endpoint_url),
        ("Elastic Load Balancing", "MIRRORQ_ELBV2_ENDPOINT_URL", settings.elbv2_endpoint_url),
    ):
        if configured and _names_host(configured, url):
            service, setting = name, variable
            break
    verb = "did not answer" if isinstance(error, ReadTimeoutError) else "is unreachable"
    return (
        f"{service} {verb} at {_without_password(url) or '?'} ({_reason(error)}): check "
        f"{setting} and the network, then run the command again",
        EC2_UNAVAILABLE,
    )


def _names_host(url: str, text: str) -> bool:
    """Whether `text` names the host and port of `url` (of any of a Sentinel URL's parts)."""
    import re
    from urllib.parse import urlsplit

    for part in url.split(";"):
        with contextlib.suppress(ValueError):
            split = urlsplit(part.strip())
            where = f"{split.hostname}:{split.port or ''}".rstrip(":")
            if split.hostname and re.search(rf"{re.escape(where)}(?![\w-]|\.\w)", text):
                return True
    return False


def _without_password(url: str) -> str:
    """`url` (each part of a Sentinel URL) with no userinfo password: `redis://host:6379/0`."""
    from urllib.parse import urlsplit

    parts = []
    for part in url.split(";"):
        try:
            split = urlsplit(part.strip())
            host = split.hostname or ""
            port = f":{split.port}" if split.port else ""
        except ValueError:
            parts.append("?")
            continue
        user = f"{split.username}@" if split.username else ""
        netloc = f"{user}{f'[{host}]' if ':' in host else host}{port}"
        parts.append(split._replace(netloc=netloc).geturl())
    return ";".join(parts)


def _reason(error: BaseException) -> str:
    """The error's own words, one line, with no secret the redactor knows."""
    from worker.redaction import REDACTOR

    text = " ".join(str(error).split()) or type(error).__name__
    return REDACTOR.redact(text)[:300]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mirrorq")
def main() -> None:
    """mirrorq: create EC2 Traffic Mirror sessions through a job queue, exactly once each."""
    from config import get_settings
    from worker.redaction import install, redact_redis_passwords

    install()  # no credential, token or signature in any log line of any mirrorq process
    with contextlib.suppress(ValueError):  # bad settings: the command that reads them says so
        redact_redis_passwords(get_settings())


class Id(click.ParamType[str, Any]):
    """A job or batch id: not empty, printable, at most 256 characters."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip() or not text.isprintable() or len(text) > 256:
            self.fail(f"expected an id, got {text[:80]!r}", param, ctx)
        return text


ID = Id()


def echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=None, separators=(",", ":")))


def _say(line: str, code: str | None = None) -> None:
    """An error line on stderr; once the command logs JSON (a long-running command failing at
    start), a line of its log instead, with the error's code: every line stays JSON."""
    if "worker.logs" in sys.modules:  # loaded by start_logging: no import for the others
        from worker.logs import LogFormat, chosen

        if chosen() is LogFormat.JSON:
            extra = {"error_code": code} if code else None
            logging.getLogger("mirrorq").error("%s", line, extra=extra)
            return
    click.echo(line, err=True)


def fail_input(message: str) -> NoReturn:
    """A usage or input error that is not one of mirrorq's errors (a missing option)."""
    _say(f"mirrorq: {message}")
    sys.exit(EXIT_USAGE)


def fail(error: MirrorqError, where: str | None = None) -> NoReturn:
    """Print one of mirrorq's errors and exit with its exit status: the fields it names one a
    line after `where` (what they are in: a file; an invalid job by default), else its
    message, after `where` when given (the option or file that named what it is about)."""
    fields, unlisted = error.fields, error.fields_total - len(error.fields)
    if not fields:
        _say(f"mirrorq: {where + ': ' if where else ''}{error}", error.code)
    for field in fields:
        _say(f"{where or 'invalid job'}: {describe(field)}", error.code)
    if unlisted > 0:
        _say(f"{where or 'invalid job'}: ... and {unlisted} more", error.code)
    sys.exit(error.exit_code)


def exit_for(record: Mapping[str, Any]) -> NoReturn:
    """Print a job's record; exit 1 if it failed."""
    echo_json(record)
    sys.exit(EXIT_FAILED if record["status"] == JobStatus.FAILED else 0)


def exit_for_batch(status: Mapping[str, Any]) -> NoReturn:
    """Exit 1 once a batch ended with failures."""
    failures = status["finished_at"] and status["counts"].get(JobStatus.FAILED)
    sys.exit(EXIT_FAILED if failures else 0)


def follow_batch(producer: Producer, batch_id: str, console: Console) -> None:
    """`--wait`: a batch followed with a progress bar, its counts printed, exit 1 on failures
    (`mirror`, `unmirror`, `retarget`); returns only when the watch was interrupted."""
    from mirrorq import display

    status = display.watch(producer, batch_id, console)
    if status is not None:
        console.print(display.counts_table(status))
        exit_for_batch(status)


def key_values(values: tuple[str, ...], option: str) -> tuple[tuple[str, str], ...]:
    """`K=V` options (tags) as pairs; a usage error naming the option otherwise."""
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected Key=Value, got {value!r}", param_hint=option)
        pairs.append((key, val))
    return tuple(pairs)


def placement_options(command: F) -> F:
    """--region, --role-arn, --external-id: where the command's jobs run (a batch file's
    lines may name their own)."""
    for option in reversed(
        [
            click.option(
                "--region",
                default=None,
                help="The Region the jobs run in (default: MIRRORQ_REGION).",
            ),
            click.option(
                "--role-arn",
                default=None,
                help="Run the jobs in the account of this IAM role, assumed by the workers "
                "(default: the fleet's own credentials).",
            ),
            click.option(
                "--external-id", default=None, help="The ExternalId the role's trust policy asks."
            ),
        ]
    ):
        command = option(command)
    return command


def placement_or_exit(
    region: str | None, role_arn: str | None, external_id: str | None
) -> Placement:
    """The options' placement; exit 2 naming each bad field otherwise, nothing queued."""
    from tasks.contract import parse_placement
    from tasks.errors import InvalidJobError

    try:
        return parse_placement(region=region, role_arn=role_arn, external_id=external_id)
    except InvalidJobError as error:
        fail(error)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_format_option(command: F) -> F:
    """--log-format: how a long-running command logs (default: MIRRORQ_LOG_FORMAT, text)."""
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"], case_sensitive=False),
        default=None,
        help="Log lines as readable text, or one JSON object a line (default: "
        "MIRRORQ_LOG_FORMAT, else text).",
    )(command)


def log_options(command: F) -> F:
    """--log-format and --log-level, for the long-running commands but the worker (whose
    level is Celery's --loglevel)."""
    command = click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default=None,
        help="Lines below this level are dropped (default: MIRRORQ_LOG_LEVEL, else INFO).",
    )(command)
    return log_format_option(command)


def start_logging(log_format: str | None, log_level: str | None) -> None:
    """The process's log lines as the options (else the settings) say: worker/logs.py."""
    from config import get_settings
    from worker.logs import configure

    if log_format is None or log_level is None:
        settings = get_settings()
        log_format = log_format or settings.log_format
        log_level = log_level or settings.log_level
    configure(log_format.lower(), log_level.upper())
