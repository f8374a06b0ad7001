"""`mirrorq mirror`: bulk mirroring, resolved and planned against live EC2, run as a batch."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from typing import Any

import click

from mirrorq.cli.base import (
    fail,
    fail_input,
    follow_batch,
    main,
    placement_options,
    placement_or_exit,
)
from mirrorq.rules import Rule
from tasks.errors import EXIT_FAILED, EXIT_USAGE, MirrorqError, UnknownResourceError


def _session_number(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(
            f"expected 'auto' or an integer, got {value!r}", param_hint="--session-number"
        ) from None


def _checked_rule(spec: dict[str, Any], session_number: int | str) -> Rule:
    """The options as a policy rule, checked as a policy's are, each problem named by its
    option (exit 2) before anything is read from EC2."""
    from mirrorq.policy import check_rule

    rule, errors = check_rule({k: v for k, v in spec.items() if v is not None})
    if rule is None:
        for error in errors:
            field = error["field"].split(".")[0]
            option = _OPTIONS.get(field, "--" + field.replace("_", "-"))
            if field == "(rule)":  # in the policy's words; here the options are the words
                words = _RULE_WORDS.sub(lambda m: "--" + m[1].replace("_", "-"), error["message"])
                click.echo(f"mirrorq: {words}", err=True)
            else:
                click.echo(f"mirrorq: {option}: {error['message']}", err=True)
        sys.exit(EXIT_USAGE)
    return replace(rule, name="", session_number=session_number)


_RULE_WORDS = re.compile(r"\b(vpc|subnet|tag|instance|eni|target|filter_tag)\b")
_OPTIONS = {
    "session_tags": "--session-tag",
    "target": "--target",
    "filter": "--filter",
    "filter_tag": "--filter-tag",
}


@main.command()
@click.option("--target", "target_id", required=True, help="Traffic mirror target (tmt-...).")
@click.option("--filter", "filter_id", default=None, help="Traffic mirror filter (tmf-...).")
@click.option(
    "--filter-tag",
    default=None,
    metavar="KEY=VALUE",
    help="Instead of --filter: the one filter with this tag in the account and Region.",
)
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
@placement_options
def mirror(
    target_id: str,
    filter_id: str | None,
    filter_tag: str | None,
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
    region: str | None,
    role_arn: str | None,
    external_id: str | None,
) -> None:
    """Mirror every matching ENI to TARGET through FILTER (or the one filter tagged
    --filter-tag): resolve, plan, submit as a batch.

    Selectors of different kinds must all match; repeated ones are alternatives. ENIs
    already mirrored to this target and filter, at EC2's 3-session limit, that are mirror
    targets themselves, or not of type `interface` are skipped with the reason.
    """
    placement = placement_or_exit(region, role_arn, external_id)
    if filter_id is None and filter_tag is None:
        fail_input("give --filter or --filter-tag")
    rule = _checked_rule(
        {
            "name": "mirror",
            "vpc": list(vpc),
            "subnet": list(subnet),
            "tag": list(tag),
            "instance": list(instance),
            "eni": list(eni),
            "target": target_id,
            "filter": filter_id,
            "filter_tag": filter_tag,
            "packet_length": packet_length,
            "virtual_network_id": virtual_network_id,
            "description": description,
            "session_tags": list(session_tag),
        },
        _session_number(session_number),
    )
    import asyncio

    from rich.console import Console

    from config import get_settings
    from mirrorq import display
    from mirrorq.bulk import plan_live, submit_plan
    from tasks.producer import Producer

    console = Console(stderr=True)
    try:
        plan = asyncio.run(plan_live(get_settings(), [rule], placement=placement))
    except UnknownResourceError as error:
        fail(error, f"--{error.kind}")
    for unplanned in plan.unplanned:  # the role was not assumed: STS's code
        click.echo(f"mirrorq: {unplanned}", err=True)
        sys.exit(EXIT_FAILED)
    for missing in plan.missing:  # --filter-tag: no filter, or several, has the tag here
        fail_input(f"--filter-tag: {missing}")
    console.print(display.plan_table(plan))
    producer = Producer()
    try:
        batch_id = submit_plan(
            producer, plan, source="mirrorq mirror", dry_run=dry_run, placement=placement
        )
    except MirrorqError as error:  # InvalidJobError
        fail(error)
    click.echo(batch_id)
    if wait:
        follow_batch(producer, batch_id, console)
