"""`mirrorq rate set` and `mirrorq rate show`: the fleet's EC2 rates, kept in Redis.

Each bucket (account, Region, action) has one rate and burst for every process that uses
it; this is where an operator changes them for the whole fleet at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from mirrorq.cli.base import echo_json, main

Command = TypeVar("Command", bound=Callable[..., Any])


@main.group()
def rate() -> None:
    """The fleet's EC2 rates: one per account, Region and action, kept in Redis beside the
    shared schedule and followed by every process (whatever its own MIRRORQ_EC2_RATE)."""


def _scope_options(command: Command) -> Command:
    command = click.option(
        "--region", default=None, help="The bucket's Region (default: MIRRORQ_REGION)."
    )(command)
    return click.option(
        "--account", default=None, help="The bucket's account (default: MIRRORQ_AWS_ACCOUNT_ID)."
    )(command)


@rate.command("set")
@_scope_options
@click.option(
    "--action",
    default=None,
    help="The EC2 action whose bucket to set (default: CreateTrafficMirrorSession).",
)
@click.option("--describe", is_flag=True, help="Set every Describe action mirrorq calls instead.")
@click.option(
    "--rate",
    "calls_per_s",
    type=click.FloatRange(0),
    required=True,
    help="Calls per second for the whole fleet; 0 = no limit.",
)
@click.option(
    "--burst",
    type=click.IntRange(1),
    default=None,
    help="Calls a caller may run ahead (default: the bucket's, else this process's setting).",
)
def set_rate(
    account: str | None,
    region: str | None,
    action: str | None,
    describe: bool,
    calls_per_s: float,
    burst: int | None,
) -> None:
    """Set a bucket's rate (and burst) for every process at once: kept in Redis until set
    again, in force from each process's next slot. Prints each bucket as set."""
    from config import get_settings
    from tasks.connections import sync_client
    from worker.ratelimit import (
        CREATE_ACTION,
        DESCRIBE_ACTIONS,
        bucket_snapshots,
        own_rate,
        set_bucket_config,
    )

    if describe and action:
        raise click.UsageError("--action and --describe: one or the other")
    settings = get_settings()
    account, region = account or settings.aws_account_id, region or settings.region
    client = sync_client(settings.broker_url, settings)
    kept = bucket_snapshots(client, account, region)
    for name in DESCRIBE_ACTIONS if describe else (action or CREATE_ACTION,):
        before = kept.get((account, region, name))
        chosen = burst or (before and before.burst) or own_rate(settings, name)[0].burst
        set_bucket_config(client, account, region, name, rate=calls_per_s, burst=chosen)
        echo_json(
            {
                "account": account,
                "region": region,
                "action": name,
                "rate": calls_per_s,
                "burst": chosen,
            }
        )


@rate.command("show")
@_scope_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object a bucket.")
def show_rate(account: str | None, region: str | None, as_json: bool) -> None:
    """Every bucket kept in Redis: the fleet's rate and burst, where they came from (`set`:
    by `mirrorq rate set`, kept; `setting`: the first process's own, gone after a day
    unused), the rate in force now (lower after EC2 throttled) and the throttles seen."""
    from rich.console import Console
    from rich.table import Table

    from config import get_settings
    from tasks.connections import sync_client
    from worker.ratelimit import bucket_snapshots

    settings = get_settings()
    buckets = bucket_snapshots(sync_client(settings.broker_url, settings), account, region)
    rows = [
        {
            "account": a,
            "region": r,
            "action": action,
            "rate": s.configured,
            "burst": s.burst,
            "source": s.source,
            "in_force": s.rate,
            "throttles": s.throttles,
        }
        for (a, r, action), s in buckets.items()
    ]
    if as_json:
        for row in rows:
            echo_json(row)
        return
    table = Table(caption="the fleet's EC2 rates (calls/s; 0 = no limit)")
    for column in rows[0] if rows else ("account", "region", "action", "rate"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:g}" if isinstance(v, float) else str(v or "-") for v in row.values()))
    Console().print(table)
