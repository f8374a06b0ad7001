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
