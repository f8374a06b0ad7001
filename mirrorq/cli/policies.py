"""`mirrorq policy`, `mirrorq reconcile` and `mirrorq listen`: a policy file kept true, on a
schedule and from EventBridge events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mirrorq.cli.base import echo_json, exit_for_batch, fail, log_options, main, start_logging
from tasks.errors import EXIT_FAILED, PolicyError, QueueError, UnknownResourceError

if TYPE_CHECKING:
    from rich.console import Console

    from config import Settings
    from mirrorq.planning import Plan
    from mirrorq.policy_watch import WatchedPolicy
    from mirrorq.reconcile import Pass
    from mirrorq.rules import Rule
    from tasks.producer import Producer

policy_file = click.Path(exists=True, dir_okay=False, path_type=Path)
metrics_port = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the policy's metrics (mirrorq_policy_valid, _rules) on 127.0.0.1:PORT.",
)


def _rules(path: Path) -> list[Rule]:
    from mirrorq.policy import load_policy

    try:
        return load_policy(path)
    except PolicyError as error:
        fail(error)


def _watched(path: Path, port: int | None) -> WatchedPolicy:
    """The policy of a long-running command: read again when it changes, and on SIGHUP."""
    from mirrorq.policy_watch import WatchedPolicy, serve_metrics

    try:
        watched = WatchedPolicy(path)
    except PolicyError as error:
        fail(error)
    if port is not None:
        serve_metrics(watched, port)
    return watched


def _say_where_not(plan: Plan) -> None:
    """The places a rule was not planned in, and why (stderr, one line each, unwrapped)."""
    for note in [*plan.missing, *plan.unplanned]:
        click.echo(f"mirrorq: {note}", err=True)


@main.group()
def policy() -> None:
    """Policy files: which ENIs go to which sensor, as TOML rules."""


@policy.command("check")
@click.argument("file", type=policy_file)
@click.option("--json", "as_json", is_flag=True, help="Print the rules as JSON.")
def policy_check(file: Path, as_json: bool) -> None:
    """Validate FILE and print its rules (exit 2 naming the rule and field if invalid)."""
    from rich.console import Console

    from mirrorq import display

    rules = _rules(file)
    if as_json:
        echo_json([display.rule_json(r) for r in rules])
    else:
        Console().print(display.rules_table(rules, title=str(file)))


@policy.command("plan")
@click.argument("file", type=policy_file)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--prune",
    is_flag=True,
    help="Also list every managed session no rule wants, as reconcile --prune would delete.",
)
def policy_plan(file: Path, as_json: bool, prune: bool) -> None:
    """What each rule of FILE would create and skip against live EC2, with reasons; and,
    with --prune or for the rules that say `prune`, the sessions it would delete, and why.

    Creates and deletes nothing.
    """
    import asyncio

    from rich.console import Console

    from config import get_settings
    from mirrorq import display, lifecycle
    from mirrorq.bulk import plan_live, plan_read, read_live
    from mirrorq.cli.sessions import pruned_json, pruned_table, say_refusals

    rules = _rules(file)
    settings = get_settings()
    pruned = lifecycle.Pruned()
    try:
        if lifecycle.pruning(rules, prune):
            live = asyncio.run(read_live(settings, rules, health=True))
            plan = plan_read(live)
            pruned = lifecycle.prune_live(settings, live, everything=prune)
        else:
            plan = asyncio.run(plan_live(settings, rules))
    except UnknownResourceError as error:
        fail(error, str(file))
    if as_json:
        shown = {**plan.summary(), "jobs": display.plan_jobs_json(plan)}
        echo_json({**shown, **({"prune": pruned_json(pruned)} if pruned.plans else {})})
    else:
        console = Console()
        console.print(display.plan_table(plan))
        places = display.places_table(plan)
        if places is not None:
            console.print(places)
        if pruned.plans:
            console.print(pruned_table(pruned))
    _say_where_not(plan)
    say_refusals(pruned)
    if plan.unplanned:
        sys.exit(EXIT_FAILED)


@main.command()
@click.option("--policy", "policy_path", type=policy_file, required=True, help="Policy file.")
@click.option(
    "--every",
    default=None,
    metavar="DURATION",
    help="Repeat every DURATION (30s, 5m, 1h) for as long as it runs.",
)
@click.option("--dry-run", is_flag=True, help="Plan, and send DryRun jobs: nothing is created.")
@click.option("--wait", is_flag=True, help="Follow the pass's batch with a progress bar.")
@click.option(
    "--prune",
    is_flag=True,
    help="Also delete the managed sessions no rule wants (as every rule said `prune`).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Prune even more than MIRRORQ_PRUNE_MAX_SHARE of an account's managed sessions.",
)
@metrics_port
@log_options
def reconcile(
    policy_path: Path,
    every: str | None,
    dry_run: bool,
    wait: bool,
    prune: bool,
    force: bool,
    metrics_port: int | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Mirror every rule's gaps: plan from live EC2, submit them as one batch.

    Every managed session on a dead target (its sensor instance stopped or terminated, its
    ENI deleted) is moved to a live target of its rule by a modify in the same batch; one no
    live target can take is left, and said.

    Prints the batch id. With --every, a pass runs each DURATION until stopped (Ctrl-C or
    SIGTERM), each logging one line: what it planned, skipped by reason, created, modified,
    failed, and the coverage it found.
    Each pass plans the policy as the file is then: an edit applies from the next pass, an
    invalid one is logged and the last good policy kept; SIGHUP reads the file at once.

    With --prune (or for the rules that say `prune`), the pass also deletes the managed
    sessions no rule wants, in the same batch, listed with the reason; one that would delete
    more than MIRRORQ_PRUNE_MAX_SHARE of an account's managed sessions deletes nothing, says
    why and exits 1, unless --force. A rule's sessions on a dead target are repaired, never
    pruned (a removed rule's are pruned); a session another rule wants as it is is kept.
    """
    import signal
    import threading

    from rich.console import Console

    from config import get_settings
    from mirrorq import display
    from mirrorq.cli.sessions import exit_if_refused
    from mirrorq.reconcile import parse_duration, reconcile_every, run_pass
    from tasks.producer import Producer

    settings, producer = get_settings(), Producer()
    if every is not None or log_format or log_level:
        start_logging(log_format, log_level)
    if every is not None:
        try:
            period = parse_duration(every)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--every") from None
        watched = _watched(policy_path, metrics_port)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, lambda *_: watched.hangup())
        try:
            reconcile_every(
                settings,
                watched.current,
                producer,
                period,
                stop,
                dry_run=dry_run,
                prune=prune,
                force=force,
            )
        except KeyboardInterrupt:
            stop.set()
        return
    if metrics_port is not None:
        raise click.BadParameter(
            "only with --every (a long-running reconcile)", param_hint="--metrics-port"
        )
    rules = _rules(policy_path)
    console = Console(stderr=True)
    try:
        done = run_pass(
            settings,
            rules,
            producer,
            dry_run=dry_run,
            keep_empty=True,
            prune=prune,
            force=force,
        )
    except UnknownResourceError as error:
        fail(error, str(policy_path))
    _show_pass(done, console)
    assert done.batch_id is not None  # keep_empty
    click.echo(done.batch_id)
    # ENIs at the session limit its deletes free: a second pass (and did the first batch fail?)
    done, failed = (
        _pass_again(done, settings, rules, producer, console, wait=wait, prune=prune, force=force)
        if done.again
        else (done, False)
    )
    if wait:
        assert done.batch_id is not None  # keep_empty
        status = display.watch(producer, done.batch_id, console)
        if status is not None:
            console.print(display.counts_table(status))
            if not done.plan.unplanned and not done.pruned.refusals:
                if failed:
                    sys.exit(EXIT_FAILED)
                exit_for_batch(status)
    if done.plan.unplanned:
        sys.exit(EXIT_FAILED)
    exit_if_refused(done.pruned)


def _pass_again(
    done: Pass,
    settings: Settings,
    rules: list[Rule],
    producer: Producer,
    console: Console,
    *,
    wait: bool,
    prune: bool,
    force: bool,
) -> tuple[Pass, bool]:
    """ENIs at EC2's session limit the pass's deletes free (mirrorq/reconcile.py
    `after_prune`): once its batch ended, a second pass plans them. That pass, and whether
    the first batch failed any job."""
    from mirrorq import display
    from mirrorq.reconcile import run_pass
    from tasks.records import JobStatus

    click.echo(
        f"mirrorq: {len(done.again)} ENI(s) at EC2's session limit are planned again "
        "once this batch's deletes ended",
        err=True,
    )
    assert done.batch_id is not None
    first = display.watch(producer, done.batch_id, console)
    if first is not None and wait:
        console.print(display.counts_table(first))
    failed = bool(first and first["counts"].get(JobStatus.FAILED))
    again = run_pass(
        settings,
        rules,
        producer,
        number=2,
        keep_empty=True,
        prune=prune,
        force=force,
    )
    _show_pass(again, console)
    assert again.batch_id is not None  # keep_empty
    click.echo(again.batch_id)
    return again, failed


def _show_pass(done: Pass, console: Console) -> None:
    """A pass's plan (and prune) as tables, and the notes and refusals on stderr."""
    from mirrorq import display
    from mirrorq.cli.sessions import pruned_table, say_refusals

    console.print(display.plan_table(done.plan))
    places = display.places_table(done.plan)
    if places is not None:
        console.print(places)
    if done.pruned.plans:
        console.print(pruned_table(done.pruned))
    _say_where_not(done.plan)
    for repair in done.repairs:  # each dark session: where it moves, or why it stays
        click.echo(f"mirrorq: {repair}", err=True)
    say_refusals(done.pruned)


@main.command()
@click.option(
    "--sqs-queue-url",
    "queue_urls",
    multiple=True,
    required=True,
    metavar="URL",
    help="A queue EventBridge delivers to (repeatable: one per Region), read in the Region "
    "its URL names; REGION=URL for an endpoint whose URLs name none (else MIRRORQ_REGION).",
)
@click.option("--policy", "policy_path", type=policy_file, required=True, help="Policy file.")
@click.option(
    "--pollers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Long polls in flight per queue.",
)
@metrics_port
@log_options
def listen(
    queue_urls: tuple[str, ...],
    policy_path: Path,
    pollers: int,
    metrics_port: int | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Turn EventBridge events from SQS into jobs through the policy.

    Instances reaching running (every ENI attached), CloudTrail's CreateNetworkInterface and
    AttachNetworkInterface (that ENI), and mirrorq.CreateTrafficMirrorSession events (their
    detail is one job). An instance leaving running, DeleteTrafficMirrorTarget,
    DeleteNetworkInterface, DeleteVpcEndpoints and ELB's DeleteLoadBalancer repair their
    place's dark sessions (each managed session on a dead
    target moved to a live target of its rule), as reconcile does. A message is deleted once
    its jobs are accepted; one that is not an event is left for the queue's dead-letter queue.
    Stops on Ctrl-C or SIGTERM; exits 2 if a queue cannot be used at start (no such queue,
    access denied), 1 if one stops being usable.

    Each receive's events go through the policy as the file is then: an edit applies from the
    next receive, an invalid one is logged and the last good policy kept; SIGHUP reads the
    file at once.
    """
    import asyncio
    import signal

    from config import get_settings
    from mirrorq.listener import listen as run

    start_logging(log_format, log_level)
    watched = _watched(policy_path, metrics_port)

    async def main_() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, watched.hangup)
        await run(get_settings(), watched.current, queue_urls, pollers=pollers, stop=stop)

    try:
        asyncio.run(main_())
    except QueueError as error:
        if not error.at_start:  # logged as an error where it happened
            sys.exit(error.exit_code)
        fail(error)
