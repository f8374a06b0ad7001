"""Bulk mirroring: rules planned against live EC2 and submitted as one batch.

`mirrorq mirror` (one rule from its options), `mirrorq reconcile` and `mirrorq policy plan`
(the rules of a policy file) all go through here; the HTTP API will too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config import Settings
from mirrorq import planning
from mirrorq.inventory import Inventory
from mirrorq.rules import Rule
from tasks.contract import parse_request
from tasks.producer import Producer
from worker.ec2 import open_road


async def plan_live(settings: Settings, rules: Sequence[Rule]) -> planning.Plan:
    """Every rule planned from EC2's state now. Raises UnknownResourceError (a LookupError)
    naming a target or filter that does not exist."""
    async with open_road(settings) as road:
        inventory = Inventory(road)
        targets = await inventory.targets(t for rule in rules for t in rule.targets)
        await inventory.require_filters(rule.filter_id for rule in rules)
        enis = await inventory.enis_for(rules)
        sessions = await inventory.sessions()
        target_enis = await inventory.all_target_enis()
    return planning.plan(list(rules), enis, sessions, targets, target_enis)


def submit_plan(
    producer: Producer, plan: planning.Plan, *, source: str, dry_run: bool = False
) -> str:
    """The plan's jobs as one batch, whose record keeps the plan (a batch of none records a
    pass that found nothing to do).
    Each job records the rule that made it and carries the rule's other targets, so racing
    planners that chose different targets still mirror an ENI once per rule."""
    jobs = planning.planned_jobs(plan, dry_run=dry_run)
    origins: list[dict[str, Any] | None] = [{"rule": j.rule} if j.rule else None for j in jobs]
    return producer.submit_batch(
        [parse_request(j.request) for j in jobs],
        source=source,
        plan=plan.summary(),
        origins=origins,
        alternatives=[j.alternatives for j in jobs],
    )
