"""`mirrorq worker`, `mirrorq emulator` and `mirrorq demo`: the long-running processes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from config import get_emulator_settings
from mirrorq.cli.base import (
    echo_json,
    fail,
    fail_input,
    log_format_option,
    log_options,
    main,
    start_logging,
)
from tasks.errors import PolicyError

Command = TypeVar("Command", bound=Callable[..., Any])
# Celery's options choosing the queues a worker consumes: a worker of one scope reading
# another's queue would pass its jobs on forever (worker/runner.py).
QUEUE_OPTIONS = ("-Q", "--queues", "-X", "--exclude-queues")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve this process's metrics (jobs in flight, EC2 call latency) on 127.0.0.1:PORT.",
)
@log_format_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(metrics_port: int | None, log_format: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a worker; CELERY_ARGS go to `celery worker` (e.g. --hostname, --loglevel).

    Up to MIRRORQ_CONCURRENCY jobs in flight (default 64) share one event loop and one EC2
    client per process. The pool is threads, one per message: MIRRORQ_CONCURRENCY /
    MIRRORQ_JOBS_PER_MESSAGE of them (8), as a batch's jobs travel 8 to a message. Jobs sent
    one by one (submit, send_task) therefore run 8 at a time; set MIRRORQ_JOBS_PER_MESSAGE=1
    for a fleet fed only single jobs.

    It consumes its scope's queue only: `mirrorq` with MIRRORQ_AWS_ACCOUNT_ID unset,
    `mirrorq.<account>.<region>` with it set (so -Q/--queues is not taken).

    Its log level is Celery's --loglevel (default MIRRORQ_LOG_LEVEL, else INFO).
    """
    for arg in celery_args:
        if arg.startswith(QUEUE_OPTIONS):
            raise click.UsageError(
                f"{arg.split('=')[0]}: a worker's queue is its scope's, set by "
                "MIRRORQ_AWS_ACCOUNT_ID and MIRRORQ_REGION"
            )
    from config import get_settings

    settings = get_settings()
    # Lines before Celery sets up its logging (it hands that to worker/logs.py) already in
    # the chosen format; Celery's set-up keeps it.
    start_logging(log_format, settings.log_level)
    from tasks.jobs import app  # the app with the task registered

    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")

    from worker.logs import LogFormat, chosen

    # Celery's banner is a block of text printed past logging: not among JSON lines.
    quiet = ["--quiet"] if chosen() is LogFormat.JSON else []
    # Gossip and mingle are Celery's worker-to-worker chatter over the broker; mirrorq's
    # workers coordinate through Redis keys instead, and mingle costs a second at start.
    app.worker_main(
        [
            *quiet,
            "worker",
            "--loglevel",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
            *celery_args,
        ]
    )


def _fault_option(name: str, meaning: str) -> Callable[[Command], Command]:
    return click.option(
        name, type=click.FloatRange(0, 1), default=0.1, show_default=True, help=meaning
    )


@main.command()
@click.option(
    "--jobs", type=click.IntRange(1), default=300, show_default=True, help="Jobs to run end to end."
)
@_fault_option("--drop-rate", "Emulator fault: responses dropped after the session was created.")
@_fault_option("--error-rate", "Emulator fault: 500/503 answers before anything is created.")
@click.option(
    "--events", is_flag=True, help="Instead: instances launched, mirrored by the listener."
)
@click.option(
    "--instances",
    type=click.IntRange(1),
    default=30,
    show_default=True,
    help="With --events: how many.",
)
def demo(jobs: int, drop_rate: float, error_rate: float, events: bool, instances: int) -> None:
    """The whole pipeline on this machine: emulator, a worker, JOBS jobs, their results.

    With --events: the event-driven loop instead. The emulator sends EC2's EventBridge events
    into SQS as INSTANCES instances are launched; `mirrorq listen` turns them into jobs
    through a two-rule policy, and the sessions appear within seconds.
    """
    if events:
        from mirrorq.demo_events import run_events_demo

        sys.exit(run_events_demo(instances))
    from mirrorq.demo import run_demo

    sys.exit(run_demo(jobs=jobs, drop_rate=drop_rate, error_rate=error_rate))


# The emulator's settings a flag overrides: (flag, type, help). Unset flags leave the
# MIRRORQ_EMULATOR_* variables (or the defaults) in force.
EMULATOR_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("--host", str, "Address to bind (default 127.0.0.1)."),
    ("--port", int, "Port (default 5090; 0 picks a free one)."),
    ("--error-rate", float, "Probability of a 500/503 before creating."),
    ("--drop-rate", float, "Probability of creating, then closing with no answer."),
    ("--latency-ms", float, "Delay added to each create."),
    ("--throttle-rate", float, "Token refill per second per action (0 = off)."),
    ("--throttle-burst", int, "Token bucket size per action."),
    ("--seed", int, "Seed the fault dice (replayable runs)."),
    ("--events-queue", str, "SQS queue (served here) that gets EC2's EventBridge events."),
    ("--sts-min-duration", int, "Shortest AssumeRole DurationSeconds accepted (AWS: 900)."),
    ("--sts-lifetime", int, "Credentials issued last at most this many seconds (tests)."),
)


def _emulator_flags(command: Command) -> Command:
    for flag, kind, meaning in reversed(EMULATOR_FLAGS):
        command = click.option(flag, type=kind, default=None, help=meaning)(command)
    return command


@main.command()
@_emulator_flags
@click.option(
    "--seed-lab",
    "seed_lab_enis",
    type=click.IntRange(0, 10_000),
    default=0,
    metavar="N",
    help="Create a lab with N source ENIs and print its ids.",
)
@log_options
def emulator(
    seed_lab_enis: int, log_format: str | None, log_level: str | None, **flags: Any
) -> None:
    """Run the local EC2 emulator (moto + Traffic Mirroring fidelity + fault injection),
    with SQS and STS on the same endpoint.

    Settings also come from MIRRORQ_EMULATOR_* variables; faults can be changed while it
    runs with POST /_mirrorq/faults, and counters read with GET /_mirrorq/stats.
    """
    from pydantic import ValidationError

    from emulator.server import launch

    start_logging(log_format, log_level)
    try:
        settings = get_emulator_settings().overridden(**flags)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        name = str(first["loc"][0]).replace("_", "-")
        raise click.BadParameter(first["msg"], param_hint=f"--{name}") from None
    server, ready = launch(settings, seed_lab_enis)
    echo_json(ready)
    sys.stdout.flush()
    logging.getLogger("mirrorq.emulator").info("serving on %s", server.endpoint_url)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Policy file: POST /v1/events turns EventBridge events into jobs through it (read "
    "again when it changes, or on SIGHUP).",
)
@log_options
def api(
    host: str, port: int, policy_path: Path | None, log_format: str | None, log_level: str | None
) -> None:
    """Serve the HTTP API (jobs, batches, events, health, metrics) on HOST:PORT.

    Every /v1 route needs a bearer token from MIRRORQ_API_TOKENS (comma-separated) or
    MIRRORQ_API_TOKENS_FILE (one a line, # comments), each 16+ characters of A-Za-z0-9-._~+/.
    It serves plain HTTP: put it behind a proxy that terminates TLS (and times out slow
    clients), and keep it on loopback unless told otherwise.
    """
    import signal

    import uvicorn

    from config import get_settings
    from mirrorq.api import create_app
    from mirrorq.api.deadline import with_head_deadline
    from mirrorq.policy_watch import WatchedPolicy

    settings = get_settings()
    start_logging(log_format, log_level)
    try:
        policy = WatchedPolicy(policy_path) if policy_path else None
        app = create_app(settings, policy or ())
    except PolicyError as error:
        fail(error)
    except (ValueError, OSError) as error:  # a token that breaks the rule, a file not read
        fail_input(str(error))
    if policy is not None:
        signal.signal(signal.SIGHUP, lambda *_: policy.hangup())
    uvicorn.run(
        app,
        host=host,
        port=port,
        # uvicorn's lines go to the process's one handler (worker/logs.py), as mirrorq's do.
        log_config=None,
        log_level=logging.getLogger().level,
        proxy_headers=False,
        http=with_head_deadline(settings.api_header_timeout_s),
    )
