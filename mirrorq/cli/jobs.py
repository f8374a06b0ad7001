"""`mirrorq submit` and `mirrorq status`: one job at a time."""

from __future__ import annotations

import sys

import click

from mirrorq.cli.base import ID, exit_for, fail, main, placement_options
from tasks.contract import JobKind
from tasks.errors import EXIT_FAILED, JobNotFoundError, MirrorqError


@main.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option(
    "--idempotency-key", default=None, help="Submitting the same key again returns the same job."
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds --wait waits.",
)
@click.option(
    "--kind",
    type=click.Choice([k.value for k in JobKind]),
    default=JobKind.CREATE.value,
    show_default=True,
    help="What the job does: JOB is CreateTrafficMirrorSession's, DeleteTrafficMirrorSession's "
    "or ModifyTrafficMirrorSession's request syntax.",
)
@click.option(
    "--network-interface-id",
    default=None,
    help="A delete's or a modify's session source ENI, for its lease (else the worker reads "
    "the session).",
)
@placement_options
def submit(
    job: str,
    wait: bool,
    idempotency_key: str | None,
    timeout: float,
    kind: str,
    network_interface_id: str | None,
    region: str | None,
    role_arn: str | None,
    external_id: str | None,
) -> None:
    """Enqueue one job: JOB is the request syntax as JSON text, or - to read stdin.

    Prints the job id, or with --wait the result JSON (exit 1 if the job failed).
    """
    from tasks.producer import Producer

    producer = Producer()
    try:
        job_id = producer.submit(
            sys.stdin.read() if job == "-" else job,
            idempotency_key=idempotency_key,
            kind=kind,
            network_interface_id=network_interface_id,
            region=region,
            role_arn=role_arn,
            external_id=external_id,
        )
    except MirrorqError as error:  # InvalidJobError, IdempotencyConflictError
        fail(error)
    if not wait:
        click.echo(job_id)
        return
    try:
        exit_for(producer.wait(job_id, timeout=timeout))
    except TimeoutError as error:
        click.echo(f"mirrorq: {error}", err=True)
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("job_id", type=ID)
def status(job_id: str) -> None:
    """Print a job's result JSON (exit 1 if it failed, 2 if the id is unknown)."""
    from tasks.producer import Producer

    record = Producer().result(job_id)
    if record is None:
        fail(JobNotFoundError(job_id))
    exit_for(record)
