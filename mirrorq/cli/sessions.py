"""`mirrorq unmirror` and `mirrorq retarget`: managed sessions deleted, or moved to another
target in place, planned and shown first, submitted as one batch as `mirror` submits creates;
and the tables that show a prune's deletions (`policy plan`, `reconcile`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from mirrorq.cli.base import (
    echo_json,
    fail,
    fail_input,
    follow_batch,
    key_values,
    main,
    placement_options,
    placement_or_exit,
)
from tasks.contract import FILTER_ID, RULE_NAME_MAX, SESSION_ID, TARGET_ID
from tasks.errors import MirrorqError, UnknownResourceError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from rich.console import Console
    from rich.table import Table

    from mirrorq.lifecycle import Pruned, SessionPlan
    from mirrorq.rules import Selectors
    from tasks.contract import Placement

NO_SELECTOR = (
    "name the sessions: --vpc, --subnet, --tag, --instance, --eni, --target, --filter, "
    "--rule or --session-id (refused without one: it would select every managed session)"
)


def pruned_table(pruned: Pruned) -> Table:
    """Each session a prune would delete: its rule, ENI, reason and why."""
    from rich.table import Table

    deletions = pruned.planned
    title = f"prune: {len(deletions)} managed session(s) no rule wants"
    if pruned.refusals:
        title += " (refused: nothing is deleted)"
    if adopted := pruned.summary()["adopted"]:
        title += f"; {adopted} kept: another rule wants them as they are (adopted)"
    table = Table(title=title, title_justify="left")
    for column in ("rule", "session", "ENI", "reason", "detail"):
        table.add_column(column)
    for d in deletions:
        table.add_row(d.rule, d.session_id, d.eni_id, d.reason.value, d.detail)
    return table


def pruned_json(pruned: Pruned) -> dict[str, Any]:
    return {**pruned.summary(), "sessions": [d.to_json() for d in pruned.planned]}


def say_refusals(pruned: Pruned) -> None:
    for refusal in pruned.refusals:
        click.echo(f"mirrorq: {refusal}", err=True)


def session_plan_table(plan: SessionPlan) -> Table:
    """Sessions selected, by rule and what is done to each (or why nothing is)."""
    from collections import Counter

    from rich.table import Table

    table = Table(title=f"plan: {plan.title}", title_justify="left")
    for column in ("rule", "action", "sessions"):
        table.add_column(column)
    counted = Counter((i.rule or "(unmanaged)", i.action.value) for i in plan.items)
    for (rule, action), n in sorted(counted.items()):
        table.add_row(rule, action, str(n))
    table.add_row("[bold]selected", "", f"[bold]{len(plan.items)}")
    return table


def _ids(pattern: str, kind: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: each value an id of `kind` matching the contract's `pattern` (as the
    API's bodies take them), never an EC2 filter wildcard (`*`, `?`) that would widen the
    selection, nor a typo that would select nothing; else exit 2 naming the option."""
    import re

    shape = re.compile(pattern)

    def check(_: click.Context, param: click.Parameter, values: Any) -> Any:
        for value in (values,) if isinstance(values, str) else values:
            if not shape.fullmatch(value):
                raise click.BadParameter(f"{value!r} is not {kind} ({pattern})", param=param)
        return values

    return check


def _rule_names(_: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    """A click callback: each --rule a name of 1 to RULE_NAME_MAX characters, as the API's
    bodies take them (an empty one would select nothing); else exit 2 naming the option."""
    for value in values:
        if not 1 <= len(value) <= RULE_NAME_MAX:
            raise click.BadParameter(
                f"a rule's name is 1 to {RULE_NAME_MAX} characters, got {value[:80]!r}",
                param=param,
            )
    return values


def selector_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--vpc, --subnet, --tag, --instance and --eni, handed to `command` as one
    `selectors` (mirrorq.rules.Selectors)."""
    import functools

    from tasks.contract import ENI_ID, INSTANCE_ID, SUBNET_ID, VPC_ID

    @functools.wraps(command)
    def with_selectors(**given: Any) -> Any:
        from mirrorq.rules import Selectors

        names = ("vpc", "subnet", "tag", "instance", "eni")
        vpc, subnet, tag, instance, eni = (given.pop(name) for name in names)
        selectors = Selectors(vpc, subnet, key_values(tag, "--tag"), instance, eni)
        return command(selectors=selectors, **given)

    wrapped: Callable[..., Any] = with_selectors
    for option in reversed(
        [
            click.option(
                "--vpc",
                multiple=True,
                callback=_ids(VPC_ID, "a VPC id"),
                help="Sessions on ENIs in this VPC (repeatable).",
            ),
            click.option(
                "--subnet",
                multiple=True,
                callback=_ids(SUBNET_ID, "a subnet id"),
                help="... in this subnet (repeatable).",
            ),
            click.option(
                "--tag", multiple=True, metavar="KEY=VALUE", help="... with this tag (repeatable)."
            ),
            click.option(
                "--instance",
                multiple=True,
                callback=_ids(INSTANCE_ID, "an instance id"),
                help="... of this instance (repeatable).",
            ),
            click.option(
                "--eni",
                multiple=True,
                callback=_ids(ENI_ID, "an ENI id"),
                help="Sessions on this ENI (repeatable).",
            ),
        ]
    ):
        wrapped = option(wrapped)
    return wrapped


def plan_options(changed: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--dry-run, --wait, --json and the placement options: what every planned change takes."""

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(
            [
                click.option(
                    "--dry-run",
                    is_flag=True,
                    help=f"Plan, and send DryRun jobs: nothing is {changed}.",
                ),
                click.option("--wait", is_flag=True, help="Follow the batch with a progress bar."),
                click.option(
                    "--json",
                    "as_json",
                    is_flag=True,
                    help="Print the plan as JSON; submit nothing.",
                ),
                placement_options,
            ]
        ):
            command = option(command)
        return command

    return add


def _show_and_submit(
    plan_of: Callable[[Placement], Coroutine[Any, Any, SessionPlan]],
    *,
    source: str,
    target_option: str | None = None,
    dry_run: bool,
    wait: bool,
    as_json: bool,
    region: str | None,
    role_arn: str | None,
    external_id: str | None,
) -> None:
    """Plan in the placement given; print the plan as JSON (--json), or show it, submit its
    jobs as one batch and print the batch's id; with --wait follow it. A target the plan
    cannot use (unknown, or dead) is refused naming `target_option`, exit 2."""
    import asyncio

    from rich.console import Console

    from mirrorq.lifecycle import DeadTargetError, submit_session_jobs
    from tasks.producer import Producer

    placement = placement_or_exit(region, role_arn, external_id)
    try:
        plan = asyncio.run(plan_of(placement))
    except UnknownResourceError as error:
        if target_option is None:
            raise
        fail(error, target_option)
    except DeadTargetError as error:
        if target_option is None:
            raise
        fail_input(f"{target_option}: {error}")
    if as_json:
        echo_json({**plan.summary(), "sessions": [i.to_json() for i in plan.items]})
        return
    console: Console = Console(stderr=True)
    console.print(session_plan_table(plan))
    producer = Producer()
    try:
        batch_id = submit_session_jobs(
            producer,
            plan.jobs(dry_run=dry_run, place=placement),
            source=source,
            plan=plan.summary(),
        )
    except MirrorqError as error:
        fail(error)
    click.echo(batch_id)
    if wait:
        follow_batch(producer, batch_id, console)


@main.command()
@selector_options
@click.option(
    "--target",
    multiple=True,
    callback=_ids(TARGET_ID, "a target id"),
    help="Sessions to this target (repeatable).",
)
@click.option(
    "--filter",
    "filter_",
    multiple=True,
    callback=_ids(FILTER_ID, "a filter id"),
    help="... through this filter (repeatable).",
)
@click.option(
    "--rule",
    multiple=True,
    callback=_rule_names,
    help="... made by this rule (its mirrorq:rule tag).",
)
@click.option(
    "--session-id",
    multiple=True,
    callback=_ids(SESSION_ID, "a session id"),
    help="This session (repeatable); the one way to delete a session mirrorq does not manage.",
)
@plan_options("deleted")
def unmirror(
    selectors: Selectors,
    target: tuple[str, ...],
    filter_: tuple[str, ...],
    rule: tuple[str, ...],
    session_id: tuple[str, ...],
    **run: Any,
) -> None:
    """Delete the managed sessions the selectors name: plan, show, submit as a batch.

    Selectors of different kinds must all match; repeated ones are alternatives. Only
    sessions mirrorq manages (tagged mirrorq:rule) are deleted, unless named by
    --session-id; the others selected are shown as `unmanaged`. No selector: refused (exit 2).
    """
    from config import get_settings
    from mirrorq.lifecycle import Selection, plan_unmirror_live

    selection = Selection(
        selectors, target_ids=target, filter_ids=filter_, rules=rule, session_ids=session_id
    )
    if not selection:
        fail_input(NO_SELECTOR)
    _show_and_submit(
        lambda placement: plan_unmirror_live(get_settings(), selection, placement),
        source="mirrorq unmirror",
        **run,
    )


@main.command()
@click.option(
    "--from",
    "from_target",
    required=True,
    callback=_ids(TARGET_ID, "a target id"),
    help="The target the sessions leave.",
)
@click.option(
    "--to",
    "to_target",
    required=True,
    callback=_ids(TARGET_ID, "a target id"),
    help="The target they move to.",
)
@selector_options
@click.option(
    "--rule",
    multiple=True,
    callback=_rule_names,
    help="Sessions made by this rule (its mirrorq:rule tag).",
)
@click.option(
    "--session-id",
    multiple=True,
    callback=_ids(SESSION_ID, "a session id"),
    help="This session (repeatable), managed or not.",
)
@plan_options("changed")
def retarget(
    from_target: str,
    to_target: str,
    selectors: Selectors,
    rule: tuple[str, ...],
    session_id: tuple[str, ...],
    **run: Any,
) -> None:
    """Move the managed sessions on target FROM to target TO, in place: one modify each
    (ModifyTrafficMirrorSession: its SessionNumber and filter kept, mirroring without a gap).

    An ENI that mirrors to TO through the same filter already is skipped
    (`already_mirrored`), as is one TO has no room for (`target_full`). A TO whose sensor is
    gone (a dead target) is refused, exit 2.
    """
    from config import get_settings
    from mirrorq.lifecycle import Selection, plan_retarget_live

    if from_target == to_target:
        fail_input("--to: the sessions are on that target already (it is --from)")
    selection = Selection(selectors, target_ids=(from_target,), rules=rule, session_ids=session_id)
    _show_and_submit(
        lambda placement: plan_retarget_live(get_settings(), selection, to_target, placement),
        source="mirrorq retarget",
        target_option="--to",
        **run,
    )


def exit_if_refused(pruned: Pruned) -> None:
    """A pass whose prune was refused ends with exit 1 once it printed what it did."""
    from tasks.errors import EXIT_FAILED

    if pruned.refusals:
        sys.exit(EXIT_FAILED)
