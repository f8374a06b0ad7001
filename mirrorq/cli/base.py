"""The `mirrorq` group, its exit codes, and the few helpers every command prints with."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import click

from tasks.errors import FieldError, describe
from tasks.records import JobStatus

EXIT_FAILED = 1  # a job or batch ended with failures
EXIT_USAGE = 2  # usage or input error (click uses 2 for usage errors too)


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
    from worker.redaction import install

    install()  # no credential, token or signature in any log line of any mirrorq process


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


def fail_input(message: str) -> NoReturn:
    click.echo(f"mirrorq: {message}", err=True)
    sys.exit(EXIT_USAGE)


def fail_fields(errors: list[FieldError], where: str = "invalid job", total: int = 0) -> NoReturn:
    for error in errors:
        click.echo(f"{where}: {describe(error)}", err=True)
    if total > len(errors):
        click.echo(f"{where}: ... and {total - len(errors)} more", err=True)
    sys.exit(EXIT_USAGE)


def exit_for(record: Mapping[str, Any]) -> NoReturn:
    """Print a job's record; exit 1 if it failed."""
    echo_json(record)
    sys.exit(EXIT_FAILED if record["status"] == JobStatus.FAILED else 0)


def exit_for_batch(status: Mapping[str, Any]) -> NoReturn:
    """Exit 1 once a batch ended with failures."""
    failures = status["finished_at"] and status["counts"].get(JobStatus.FAILED)
    sys.exit(EXIT_FAILED if failures else 0)


def key_values(values: tuple[str, ...], option: str) -> tuple[tuple[str, str], ...]:
    """`K=V` options (tags) as pairs; a usage error naming the option otherwise."""
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected Key=Value, got {value!r}", param_hint=option)
        pairs.append((key, val))
    return tuple(pairs)
