"""`mirrorq coverage`: is everything a policy puts in scope mirrored, to a live sensor?"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from mirrorq.cli.base import echo_json, fail, main
from mirrorq.cli.policies import _rules, policy_file
from tasks.errors import EXIT_FAILED, UnknownResourceError


def _not_nan(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    """NaN passes FloatRange (it compares false both ways) and no coverage is ever under it:
    a gate that never fails. Refused as a usage error, as 150 or -5 are."""
    if value is not None and math.isnan(value):
        raise click.BadParameter(f"{value} is not a percentage from 0 to 100.")
    return value


@main.command()
@click.option("--policy", "policy_path", type=policy_file, required=True, help="Policy file.")
@click.option("--json", "as_json", is_flag=True, help="Print the coverage as JSON, every ENI.")
@click.option(
    "--fail-under",
    type=click.FloatRange(0, 100),
    default=None,
    callback=_not_nan,
    metavar="PERCENT",
    help="Exit 1 when the coverage is below PERCENT (or a place could not be read).",
)
def coverage(policy_path: Path, as_json: bool, fail_under: float | None) -> None:
    """Per rule: the ENIs it matches, mirrored to a live target, mirrored to a dead one
    (dark), not mirrored by reason, and managed sessions no rule wants.

    The percentage is live over the ENIs that can be mirrored (those that cannot, such as
    unsupported instance types, are listed, not counted). Changes nothing.
    """
    import asyncio

    from rich.console import Console

    from config import get_settings
    from mirrorq import display
    from mirrorq.coverage import read_coverage
    from tasks.producer import Producer

    rules = _rules(policy_path)
    settings = get_settings()
    try:
        found = asyncio.run(read_coverage(settings, rules, Producer(settings=settings)))
    except UnknownResourceError as error:
        fail(error, str(policy_path))
    if as_json:
        echo_json(found.to_json())
    else:
        Console().print(display.coverage_table(found))
    for note in found.notes:
        click.echo(f"mirrorq: {note}", err=True)
    if fail_under is None:
        return
    if found.under(fail_under):
        totals = found.totals
        click.echo(
            f"mirrorq: coverage {found.percent:g} % ({totals['live']} of {totals['eligible']} "
            f"ENIs live) is under {fail_under:g} %",
            err=True,
        )
        sys.exit(EXIT_FAILED)
    if not found.complete:
        click.echo("mirrorq: a place was not read: its ENIs are not counted", err=True)
        sys.exit(EXIT_FAILED)
