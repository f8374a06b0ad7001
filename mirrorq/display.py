"""What the CLI shows: the plan of a bulk run, a batch's counts, a live progress bar with rate
and ETA, and the fleet's shared EC2 rate."""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mirrorq.coverage import Coverage, percent
from mirrorq.planning import Outcome, Plan, place_label
from mirrorq.rules import Rule
from tasks.contract import NOWHERE
from tasks.producer import Producer
from tasks.records import STATUS_ORDER


def plan_table(plan: Plan) -> Table:
    """Outcomes by rule: how many ENIs each rule would mirror, and why it skips the rest."""
    title = "plan"
    if len(plan.rules) == 1:
        rule = plan.rules[0]
        title = (
            f"plan: mirror to {', '.join(rule.targets)} through {', '.join(rule.filter_words())}"
        )
    table = Table(title=title, title_justify="left")
    if len(plan.rules) > 1:
        table.add_column("rule")
    table.add_column("outcome")
    table.add_column("ENIs", justify="right")
    for rule in plan.rules:
        counts = plan.counts(rule.name)
        name = [rule.name] if len(plan.rules) > 1 else []
        for outcome, count in counts.items():
            table.add_row(*name, outcome, str(count))
        table.add_row(*name, "[bold]matched", f"[bold]{sum(counts.values())}")
    return table


def places_table(plan: Plan) -> Table | None:
    """A plan of several places (a policy's [[accounts]]): its outcomes by account-Region,
    an outcome a column (`Plan.missing` says which rule has none of its targets or filters
    in a place). None for a plan of the fleet's own place alone."""
    if plan.places() == [NOWHERE]:
        return None
    by_place = plan.counts_by_place()
    shown = [o.value for o in Outcome if any(c.get(o.value) for c in by_place.values())]
    table = Table(title="by account and Region", title_justify="left")
    table.add_column("account/region")
    for name in shown:
        table.add_column(name, justify="right")
    table.add_column("matched", justify="right")
    for label, counts in by_place.items():
        table.add_row(label, *(str(counts.get(n, 0)) for n in shown), str(sum(counts.values())))
    return table


def rule_json(rule: Rule) -> dict[str, Any]:
    """A rule as the policy file writes it."""
    s = rule.selectors
    out: dict[str, Any] = {
        "name": rule.name,
        "vpc": list(s.vpc_ids),
        "subnet": list(s.subnet_ids),
        "tag": [f"{k}={v}" for k, v in s.tags],
        "instance": list(s.instance_ids),
        "eni": list(s.eni_ids),
    }
    if rule.choose is None:
        out["target"] = rule.targets[0]
    else:
        out |= {"targets": list(rule.targets), "choose": rule.choose.value}
    if rule.filter_choices:
        out["filters"] = list(rule.filter_choices)
    elif rule.filter_id:
        out["filter"] = rule.filter_id
    if rule.filter_tag is not None:
        out["filter_tag"] = "=".join(rule.filter_tag)
    o = rule.options
    out |= {
        "packet_length": o.packet_length,
        "virtual_network_id": o.virtual_network_id,
        "description": o.description,
        "session_tags": [f"{k}={v}" for k, v in o.session_tags],
    }
    # Where it is planned, from its [[accounts]] (none: the fleet's own account and Region).
    out["places"] = [place_label(p) for p in rule.places]
    if rule.prune:
        out["prune"] = True
    return {k: v for k, v in out.items() if v not in (None, [])}


def rules_table(rules: list[Rule], title: str) -> Table:
    table = Table(title=f"{title}: {len(rules)} rule(s)", title_justify="left")
    for column in ("rule", "ENIs", "to", "through", "session options"):
        table.add_column(column)
    for rule in rules:
        shown = rule_json(rule)
        enis = "; ".join(
            f"{k} {', '.join(shown[k])}"
            for k in ("vpc", "subnet", "tag", "instance", "eni")
            if k in shown
        )
        to = (
            rule.targets[0]
            if rule.choose is None
            else f"{rule.choose.value}: {', '.join(rule.targets)}"
        )
        options = ", ".join(
            f"{k}={v}"
            for k, v in shown.items()
            if k in ("packet_length", "virtual_network_id", "description", "session_tags")
        )
        table.add_row(rule.name, enis, to, ", ".join(rule.filter_words()), options)
    return table


def plan_jobs_json(plan: Plan) -> list[dict[str, Any]]:
    """Each ENI a plan would mirror: the rule, the ENI, the target chosen."""
    return [
        {
            "rule": i.rule,
            "eni": i.eni_id,
            "target": i.target_id,
            **({"account_id": i.place.account_id, "region": i.place.region} if i.place else {}),
        }
        for i in plan.to_create()
    ]


def counts_table(status: dict[str, Any]) -> Table:
    table = Table(caption=f"batch {status['batch_id']}")
    table.add_column("status")
    table.add_column("jobs", justify="right")
    for name in STATUS_ORDER:
        if status["counts"].get(name):
            table.add_row(name, str(status["counts"][name]))
    table.add_row("[bold]total", f"[bold]{status['total']}")
    return table


def placement_table(status: dict[str, Any]) -> Table | None:
    """A batch spanning several accounts or Regions: its jobs by each, a status a column."""
    placed = status.get("by_placement")
    if not placed:
        return None
    shown = [name for name in STATUS_ORDER if any(p["counts"].get(name) for p in placed)]
    table = Table(caption="by account and Region")
    table.add_column("account")
    table.add_column("region")
    for name in shown:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    for entry in placed:
        counts = entry["counts"]
        table.add_row(
            entry["account_id"] or "(fleet's own)",
            entry["region"],
            *(str(counts.get(name, 0)) for name in shown),
            str(entry["total"]),
        )
    return table


def _line(status: dict[str, Any]) -> str:
    counts = status["counts"]
    return "  ".join(f"{name} {counts[name]}" for name in STATUS_ORDER if counts.get(name))


def rate_line(producer: Producer) -> str:
    """The fleet's shared EC2 rate, as the workers' limiter sees it now."""
    from worker.ratelimit import read_create_rate

    snapshot = read_create_rate(producer.redis, producer.settings)
    if snapshot is None or snapshot.configured <= 0:
        return "EC2 rate: no shared limit in use"
    return (
        f"EC2 rate {snapshot.rate:.1f}/s of {snapshot.configured:.1f}/s, "
        f"{snapshot.throttles} throttled"
    )


def watch(
    producer: Producer, batch_id: str, console: Console, interval: float = 0.5
) -> dict[str, Any] | None:
    """Render the batch's progress until every job is terminal; return the final status
    (None for an unknown batch)."""
    status = producer.batch_status(batch_id)
    if status is None:
        return None
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("[dim]{task.fields[ec2]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(
            "jobs",
            total=status["total"],
            completed=status["done"],
            rate="",
            counts=_line(status),
            ec2=rate_line(producer),
        )
        started, done_at_start = time.monotonic(), status["done"]
        while True:
            elapsed = time.monotonic() - started
            rate = (status["done"] - done_at_start) / elapsed if elapsed > 1 else 0.0
            progress.update(
                bar,
                completed=status["done"],
                counts=_line(status),
                rate=f"{rate:.0f} jobs/s" if rate else "",
            )
            if status["finished_at"]:
                return status
            time.sleep(interval)
            try:
                status = producer.batch_status(batch_id) or status
                ec2_line = rate_line(producer)
            except RedisError:
                # Redis is restarting: the batch goes on (workers wait for it too); so do we.
                ec2_line = "[yellow]Redis unreachable: waiting for it"
            progress.update(bar, ec2=ec2_line)


def coverage_table(coverage: Coverage) -> Table:
    """One row per rule (and account-Region, where a rule has several), then the totals."""
    several = len({(r.account_id, r.region) for r in coverage.rules}) > 1
    table = Table(title=f"coverage {coverage.percent:g} %", title_justify="left")
    table.add_column("rule")
    if several:
        table.add_column("account/region")
    for name in ("matched", "eligible", "live", "dark"):
        table.add_column(name, justify="right")
    table.add_column("missing")
    table.add_column("unsupported", justify="right")
    table.add_column("%", justify="right")
    for row in coverage.rules:
        missing = row.missing
        text = str(sum(missing.values()))
        if missing:
            text += " (" + ", ".join(f"{k} {v}" for k, v in missing.items()) + ")"
        place = [f"{row.account_id or 'default'}/{row.region or 'default'}"] if several else []
        counts = (len(row.enis), row.eligible, row.count("live"))
        dark = str(row.count("dark")) + (f" ({row.repairing} repairing)" if row.repairing else "")
        table.add_row(
            row.rule, *place, *map(str, counts), dark, text, str(row.count("unsupported")),
            f"{percent(row.count('live'), row.eligible):g}",
        )  # fmt: skip
    totals = coverage.totals
    table.add_row(
        "[bold]total", *([""] if several else []),
        *(str(totals[k]) for k in ("matched", "eligible", "live", "dark", "missing")),
        str(totals["unsupported"]), f"[bold]{coverage.percent:g}",
    )  # fmt: skip
    if coverage.unwanted:
        table.caption = f"{len(coverage.unwanted)} managed sessions no rule wants"
    return table
