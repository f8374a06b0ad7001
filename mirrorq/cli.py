"""The `mirrorq` command line: one console script, a subcommand per job the product does."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from config import get_emulator_settings
from config.settings import SQS_QUEUE_NAME
from tasks.records import JobStatus

EXIT_FAILED = 1  # a job or batch ended with failures
EXIT_USAGE = 2  # usage or input error (click uses 2 for usage errors too)


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=None, separators=(",", ":")))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mirrorq")
def main() -> None:
    """mirrorq: create EC2 Traffic Mirror sessions through a job queue, exactly once each."""
    from worker.redaction import install

    install()  # no credential, token or signature in any log line of any mirrorq process


def _read_job(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


def _fail_input(message: str) -> NoReturn:
    click.echo(f"mirrorq: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _exit_for(record: dict[str, Any]) -> None:
    _echo_json(record)
    sys.exit(EXIT_FAILED if record["status"] == JobStatus.FAILED else 0)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a worker; CELERY_ARGS go to `celery worker` (e.g. --hostname, --loglevel).

    Up to MIRRORQ_CONCURRENCY jobs in flight (default 64) share one event loop and one EC2
    client per process. The pool is threads, one per message: MIRRORQ_CONCURRENCY /
    MIRRORQ_JOBS_PER_MESSAGE of them (8), as a batch's jobs travel 8 to a message. Jobs sent
    one by one (submit, send_task) therefore run 8 at a time; set MIRRORQ_JOBS_PER_MESSAGE=1
    for a fleet fed only single jobs.
    """
    from tasks.jobs import app  # the app with the task registered

    # Gossip and mingle are Celery's worker-to-worker chatter over the broker; mirrorq's
    # workers coordinate through Redis keys instead, and mingle costs a second at start.
    app.worker_main(
        ["worker", "--loglevel", "INFO", "--without-gossip", "--without-mingle", *celery_args]
    )


@main.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option(
    "--idempotency-key", default=None, help="Submitting the same key again returns the same job."
)
@click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="Seconds --wait waits."
)
def submit(job: str, wait: bool, idempotency_key: str | None, timeout: float) -> None:
    """Enqueue one job: JOB is the request syntax as JSON text, or - to read stdin.

    Prints the job id, or with --wait the result JSON (exit 1 if the job failed).
    """
    from tasks.errors import IdempotencyConflictError, InvalidJobError
    from tasks.producer import Producer

    producer = Producer()
    try:
        job_id = producer.submit(_read_job(job), idempotency_key=idempotency_key)
    except InvalidJobError as error:
        for e in error.errors:
            click.echo(f"invalid job: {e['field']}: {e['message']}", err=True)
        sys.exit(EXIT_USAGE)
    except IdempotencyConflictError as error:
        _fail_input(str(error))
    if not wait:
        click.echo(job_id)
        return
    try:
        _exit_for(dict(producer.wait(job_id, timeout=timeout)))
    except TimeoutError as error:
        click.echo(f"mirrorq: {error}", err=True)
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("job_id")
def status(job_id: str) -> None:
    """Print a job's result JSON (exit 1 if it failed, 2 if the id is unknown)."""
    from tasks.producer import Producer

    record = Producer().result(job_id)
    if record is None:
        _fail_input(f"no job {job_id} (unknown id, or its result expired)")
    _exit_for(dict(record))


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
def batch_submit(file: Path, fmt: str | None) -> None:
    """Enqueue every job of FILE (JSON Lines, or CSV with the same column names).

    Prints the batch id at once. A file with any bad line is refused whole, every bad line
    listed with its number, and nothing is queued (exit 2).
    """
    from tasks.batches import BatchFileError, read_jobs
    from tasks.errors import describe
    from tasks.producer import Producer

    try:
        jobs = read_jobs(file, fmt)
    except BatchFileError as error:
        for line_error in error.errors:
            click.echo(f"{file}: {describe(line_error)}", err=True)
        click.echo(
            f"mirrorq: {file} refused: {len(error.errors)} error(s); nothing was queued", err=True
        )
        sys.exit(EXIT_USAGE)
    except UnicodeDecodeError as error:
        _fail_input(f"{file} is not UTF-8 text: {error}")
    click.echo(Producer().submit_batch(jobs, source=str(file)))


@batch.command("status")
@click.argument("batch_id")
@click.option("--watch", is_flag=True, help="Show a live progress bar until the batch ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def batch_status(batch_id: str, watch: bool, as_json: bool) -> None:
    """Counts of the batch's jobs by status (exit 1 once it ended with failures)."""
    from rich.console import Console

    from mirrorq.progress import counts_table, rate_line
    from mirrorq.progress import watch as follow
    from tasks.producer import Producer

    producer = Producer()
    console = Console(stderr=as_json)
    try:
        status = follow(producer, batch_id, console) if watch else producer.batch_status(batch_id)
    except LookupError as error:
        _fail_input(str(error))
    if status is None:
        _fail_input(f"no batch {batch_id} (unknown id, or its record expired)")
    if as_json:
        _echo_json(status)
    else:
        Console().print(counts_table(status))
        Console().print(rate_line(producer))
    sys.exit(EXIT_FAILED if status["finished_at"] and status["counts"].get("failed") else 0)


@batch.command("results")
@click.argument("batch_id")
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
        _fail_input(f"no batch {batch_id} (unknown id, or its record expired)")
    for line in export_lines(producer.batch_results(batch_id), fmt):
        sys.stdout.write(line)


def _pairs(values: tuple[str, ...], option: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected Key=Value, got {value!r}", param_hint=option)
        pairs.append((key, val))
    return tuple(pairs)


@main.command()
@click.option("--target", "target_id", required=True, help="Traffic mirror target (tmt-...).")
@click.option("--filter", "filter_id", required=True, help="Traffic mirror filter (tmf-...).")
@click.option("--vpc", multiple=True, help="ENIs in this VPC (repeatable: any of them).")
@click.option("--subnet", multiple=True, help="ENIs in this subnet (repeatable).")
@click.option("--tag", multiple=True, metavar="KEY=VALUE", help="ENIs with this tag (repeatable).")
@click.option("--instance", multiple=True, help="Every ENI of this instance (repeatable).")
@click.option("--eni", multiple=True, help="This ENI (repeatable).")
@click.option(
    "--session-number",
    default="auto",
    show_default=True,
    help="'auto' picks the lowest number free on each ENI when its job runs.",
)
@click.option("--packet-length", type=int, default=None)
@click.option("--virtual-network-id", type=int, default=None)
@click.option("--description", default=None)
@click.option("--session-tag", multiple=True, metavar="KEY=VALUE", help="Tag every session.")
@click.option("--dry-run", is_flag=True, help="Plan, and send DryRun jobs: nothing is created.")
@click.option("--wait", is_flag=True, help="Follow the batch with a progress bar.")
def mirror(
    target_id: str,
    filter_id: str,
    vpc: tuple[str, ...],
    subnet: tuple[str, ...],
    tag: tuple[str, ...],
    instance: tuple[str, ...],
    eni: tuple[str, ...],
    session_number: str,
    packet_length: int | None,
    virtual_network_id: int | None,
    description: str | None,
    session_tag: tuple[str, ...],
    dry_run: bool,
    wait: bool,
) -> None:
    """Mirror every matching ENI to TARGET through FILTER: resolve, plan, submit as a batch.

    Selectors of different kinds must all match; repeated ones are alternatives. ENIs
    already mirrored to this target and filter, at EC2's 3-session limit, that are mirror
    targets themselves, or not of type `interface` are skipped with the reason.
    """
    from rich.console import Console
    from rich.table import Table

    from config import get_settings
    from mirrorq.bulk import Ec2Inventory, Selectors, job_requests
    from mirrorq.progress import counts_table
    from mirrorq.progress import watch as follow
    from tasks.contract import parse_request
    from tasks.errors import InvalidJobError
    from tasks.producer import Producer

    selectors = Selectors(vpc, subnet, _pairs(tag, "--tag"), instance, eni)
    if not selectors:
        raise click.UsageError("name the ENIs: --vpc, --subnet, --tag, --instance or --eni")
    number: int | str = session_number if session_number == "auto" else _int(session_number)
    tags = _pairs(session_tag, "--session-tag")
    tag_specs = (
        [
            {
                "ResourceType": "traffic-mirror-session",
                "Tags": [{"Key": k, "Value": v} for k, v in tags],
            }
        ]
        if tags
        else None
    )
    console = Console(stderr=True)
    try:
        plan = Ec2Inventory(get_settings()).plan(selectors, target_id, filter_id)
    except LookupError as error:
        _fail_input(str(error))
    table = Table(title=f"plan: mirror to {target_id} through {filter_id}", title_justify="left")
    table.add_column("outcome")
    table.add_column("ENIs", justify="right")
    for outcome, count in plan.counts().items():
        table.add_row(outcome, str(count))
    table.add_row("[bold]matched", f"[bold]{len(plan.items)}")
    console.print(table)
    requests = job_requests(
        plan,
        session_number=number,
        dry_run=dry_run,
        PacketLength=packet_length,
        VirtualNetworkId=virtual_network_id,
        Description=description,
        TagSpecifications=tag_specs,
    )
    try:
        jobs = [parse_request(r) for r in requests]
    except InvalidJobError as error:
        _fail_input(str(error))
    producer = Producer()
    batch_id = producer.submit_batch(jobs, source="mirrorq mirror", plan=plan.summary())
    click.echo(batch_id)
    if wait:
        status = follow(producer, batch_id, console)
        console.print(counts_table(status))
        sys.exit(EXIT_FAILED if status["counts"].get("failed") else 0)


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(
            f"expected 'auto' or an integer, got {value!r}", param_hint="--session-number"
        ) from None


@main.command()
@click.option("--jobs", type=int, default=300, show_default=True, help="Jobs to run end to end.")
@click.option(
    "--drop-rate",
    type=float,
    default=0.1,
    show_default=True,
    help="Emulator fault: responses dropped after the session was created.",
)
@click.option(
    "--error-rate",
    type=float,
    default=0.1,
    show_default=True,
    help="Emulator fault: 500/503 answers before anything is created.",
)
def demo(jobs: int, drop_rate: float, error_rate: float) -> None:
    """The whole pipeline on this machine: emulator, a worker, JOBS jobs, their results."""
    from mirrorq.demo import run_demo

    sys.exit(run_demo(jobs=jobs, drop_rate=drop_rate, error_rate=error_rate))


@main.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 5090; 0 picks a free one).")
@click.option(
    "--error-rate", type=float, default=None, help="Probability of a 500/503 before creating."
)
@click.option(
    "--drop-rate",
    type=float,
    default=None,
    help="Probability of creating, then closing with no answer.",
)
@click.option("--latency-ms", type=float, default=None, help="Delay added to each create.")
@click.option(
    "--throttle-rate",
    type=float,
    default=None,
    help="Token refill per second per action (0 = off).",
)
@click.option("--throttle-burst", type=int, default=None, help="Token bucket size per action.")
@click.option("--seed", type=int, default=None, help="Seed the fault dice (replayable runs).")
@click.option(
    "--seed-lab",
    "seed_lab_enis",
    type=int,
    default=0,
    metavar="N",
    help="Create a lab with N source ENIs and print its ids.",
)
@click.option(
    "--events-queue",
    default=None,
    metavar="NAME",
    help="SQS queue (served here) that gets EC2's EventBridge events.",
)
def emulator(
    host: str | None,
    port: int | None,
    error_rate: float | None,
    drop_rate: float | None,
    latency_ms: float | None,
    throttle_rate: float | None,
    throttle_burst: int | None,
    seed: int | None,
    seed_lab_enis: int,
    events_queue: str | None,
) -> None:
    """Run the local EC2 emulator (moto + Traffic Mirroring fidelity + fault injection),
    with SQS and STS on the same endpoint.

    Settings also come from MIRRORQ_EMULATOR_* variables; faults can be changed while it
    runs with POST /_mirrorq/faults, and counters read with GET /_mirrorq/stats.
    """
    from emulator.faults import FaultPlan
    from emulator.lab import seed_lab
    from emulator.server import EmulatorServer

    settings = get_emulator_settings()
    flags = {
        "error_rate": error_rate,
        "drop_rate": drop_rate,
        "latency_ms": latency_ms,
        "throttle_rate": throttle_rate,
        "throttle_burst": throttle_burst,
    }
    base = {name: getattr(settings, name) for name in flags}
    try:
        plan = FaultPlan().updated({**base, **{k: v for k, v in flags.items() if v is not None}})
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    events_queue = events_queue or settings.events_queue
    if events_queue is not None and not re.fullmatch(SQS_QUEUE_NAME, events_queue):
        raise click.BadParameter(
            "1-80 letters, digits, hyphens or underscores (a standard queue)",
            param_hint="--events-queue",
        )
    # The lab is seeded before throttling starts and before events are sent: it is set-up,
    # not traffic.
    server = EmulatorServer(
        host or settings.host,
        settings.port if port is None else port,
        dataclasses.replace(plan, throttle_rate=0.0),
        settings.seed if seed is None else seed,
        events_queue,
    )
    server.start()
    ready: dict[str, Any] = {"endpoint_url": server.endpoint_url}
    if seed_lab_enis:
        ready["lab"] = seed_lab(server.endpoint_url, seed_lab_enis)
    server.app.faults.update({"throttle_rate": plan.throttle_rate})
    if events_queue is not None:
        server.app.events.switch_on()
        ready["events_queue_url"] = server.app.events.queue_url(server.endpoint_url)
    ready["faults"] = server.app.faults.as_dict()
    _echo_json(ready)
    sys.stdout.flush()
    logging.getLogger("mirrorq.emulator").info("serving on %s", server.endpoint_url)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
