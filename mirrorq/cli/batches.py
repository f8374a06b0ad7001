"""`mirrorq batch …`: fire-and-forget batches from a file, their progress and results."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mirrorq.cli.base import (
    ID,
    echo_json,
    exit_for_batch,
    fail,
    fail_input,
    main,
    placement_options,
    placement_or_exit,
)
from tasks.errors import BatchNotFoundError


@main.group()
def batch() -> None:
    """Fire-and-forget batches: submit a file of jobs, follow them, export results."""


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="Default: from the file's extension (.csv, else JSON Lines).",
)
@placement_options
def batch_submit(
    file: Path,
    fmt: str | None,
    region: str | None,
    role_arn: str | None,
    external_id: str | None,
) -> None:
    """Enqueue every job of FILE (JSON Lines, or CSV with the same column names).

    A line is a request, or {"request": {...}, "region": ..., "role_arn": ...,
    "external_id": ...} (CSV: columns of those names); the options are the default of
    every line. Prints the batch id at once. A file with any bad line is refused whole,
    every bad line listed with its number, and nothing is queued (exit 2).
    """
    from mirrorq.jobfiles import read_placed_jobs
    from tasks.errors import InvalidJobError
    from tasks.producer import Producer

    defaults = placement_or_exit(region, role_arn, external_id)
    try:
        jobs = read_placed_jobs(file, fmt, defaults)
    except InvalidJobError as error:
        click.echo(f"mirrorq: {file} refused: {error.total} error(s); nothing was queued", err=True)
        fail(error, str(file))
    except UnicodeDecodeError as error:
        fail_input(f"{file} is not UTF-8 text: {error}")
    click.echo(Producer().submit_batch(jobs.requests, source=str(file), placements=jobs.placements))


@batch.command("status")
@click.argument("batch_id", type=ID)
@click.option("--watch", is_flag=True, help="Show a live progress bar until the batch ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def batch_status(batch_id: str, watch: bool, as_json: bool) -> None:
    """Counts of the batch's jobs by status (exit 1 once it ended with failures)."""
    from rich.console import Console

    from mirrorq import display
    from tasks.producer import Producer

    producer = Producer()
    console = Console(stderr=as_json)
    status = (
        display.watch(producer, batch_id, console) if watch else producer.batch_status(batch_id)
    )
    if status is None:
        fail(BatchNotFoundError(batch_id))
    if as_json:
        echo_json(status)
    else:
        Console().print(display.counts_table(status))
        placed = display.placement_table(status)
        if placed is not None:
            Console().print(placed)
        Console().print(display.rate_line(producer))
    exit_for_batch(status)


@batch.command("results")
@click.argument("batch_id", type=ID)
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
def batch_results(batch_id: str, fmt: str) -> None:
    """One result per job, in submission order (CSV cells that a spreadsheet would run as
    a formula are prefixed with ')."""
    from mirrorq.export import export_lines
    from tasks.producer import Producer

    producer = Producer()
    if producer.batch_status(batch_id) is None:
        fail(BatchNotFoundError(batch_id))
    sys.stdout.writelines(export_lines(producer.batch_results(batch_id), fmt))
