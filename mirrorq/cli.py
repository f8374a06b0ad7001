"""The `mirrorq` command line: one console script, a subcommand per job the product does."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import Any

import click

from config import get_emulator_settings

EXIT_FAILED = 1  # a job or batch ended with failures
EXIT_USAGE = 2  # usage or input error (click uses 2 for usage errors too)


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=None, separators=(",", ":")))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mirrorq")
def main() -> None:
    """mirrorq: create EC2 Traffic Mirror sessions through a job queue, exactly once each."""


def _read_job(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


def _fail_input(message: str) -> None:
    click.echo(f"mirrorq: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _exit_for(record: dict[str, Any]) -> None:
    _echo_json(record)
    sys.exit(EXIT_FAILED if record["status"] == "failed" else 0)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a worker; CELERY_ARGS go to `celery worker` (e.g. --hostname, --loglevel).

    The pool is threads with MIRRORQ_CONCURRENCY calls in flight (default 64), sharing one
    EC2 client per process.
    """
    from tasks import app

    app.worker_main(["worker", "--loglevel", "INFO", *celery_args])


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
    from tasks.contract import InvalidJobError
    from tasks.producer import IdempotencyConflictError, Producer

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
    else:
        _exit_for(dict(record))


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
) -> None:
    """Run the local EC2 emulator (moto + Traffic Mirroring fidelity + fault injection).

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
    # The lab is seeded before throttling starts: it is set-up, not traffic.
    server = EmulatorServer(
        host or settings.host,
        settings.port if port is None else port,
        dataclasses.replace(plan, throttle_rate=0.0),
        settings.seed if seed is None else seed,
    )
    server.start()
    ready: dict[str, Any] = {"endpoint_url": server.endpoint_url}
    if seed_lab_enis:
        ready["lab"] = seed_lab(server.endpoint_url, seed_lab_enis)
    server.app.faults.update({"throttle_rate": plan.throttle_rate})
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
