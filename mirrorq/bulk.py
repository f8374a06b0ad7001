"""Bulk mirroring: rules planned against live EC2 and submitted as one batch.

`mirrorq mirror` (one rule from its options), `mirrorq reconcile` and `mirrorq policy plan`
(the rules of a policy file) all go through here; the HTTP API will too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from config import Settings
from mirrorq import planning
from mirrorq.inventory import Inventory
from mirrorq.rules import Rule
from tasks.contract import NOWHERE, Placement, parse_request
from tasks.producer import Producer
from worker.ec2 import open_road


async def plan_live(
    settings: Settings,
    rules: Sequence[Rule],
    pending: Iterable[planning.Pending] = (),
    placement: Placement = NOWHERE,
) -> planning.Plan:
    """Every rule planned from EC2's state now (and the mirrors `pending` jobs will make), in
    `placement`'s Region (the fleet's by default). Raises UnknownResourceError (a
    LookupError) naming a target or filter that does not exist."""
    if placement.role_arn:
        # The planner's road has the fleet's credentials only (worker/ec2.py open_road): it
        # would read another account's ENIs as this one's.
        raise NotImplementedError("planning through a role needs the road's assumed clients")
    if placement.region:
        settings = settings.model_copy(update={"region": placement.region})
    async with open_road(settings) as road:
        inventory = Inventory(road)
        targets = await inventory.targets(t for rule in rules for t in rule.targets)
        await inventory.require_filters(rule.filter_id for rule in rules)
        enis = await inventory.enis_for(rules)
        sessions = await inventory.sessions()
        target_enis = await inventory.all_target_enis()
    return planning.plan(list(rules), enis, sessions, targets, target_enis, pending)


def pending_mirrors(producer: Producer) -> list[planning.Pending]:
    """The mirrors mirrorq's queued and running jobs will make, whoever submitted them (a
    pass, the listener, the API): one read of every pending job's record, O(pending)."""
    found = (planning.Pending.of(r) for r in producer.store.pending_records())
    return [p for p in found if p is not None]


def submit_plan(
    producer: Producer,
    plan: planning.Plan,
    *,
    source: str,
    dry_run: bool = False,
    placement: Placement = NOWHERE,
) -> str:
    """The plan's jobs as one batch, whose record keeps the plan (a batch of none records a
    pass that found nothing to do), each run where `placement` says.
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
        placements=[placement] * len(jobs),
    )


def submit_gaps(
    producer: Producer, plan: planning.Plan, *, source: str, dry_run: bool = False
) -> str | None:
    """The plan's jobs as one batch, each submitted only if it claims its gap: a gap whose
    claimed job is still queued or running (planned by another pass or reconcile process
    meanwhile) is counted `pending` in the plan instead. The batch keeps the plan's counts,
    not its ENIs. None: no job to submit, and no batch stored."""
    jobs = planning.planned_jobs(plan, dry_run=dry_run)
    claims = producer.claim_gaps([j.gap for j in jobs])
    plan.hold(
        {
            (j.rule, j.request["NetworkInterfaceId"]): c.holder
            for j, c in zip(jobs, claims, strict=True)
            if c.holder is not None
        }
    )
    taken = [(j, c.job_id) for j, c in zip(jobs, claims, strict=True) if c.holder is None]
    if not taken:
        return None
    return producer.submit_batch(
        [parse_request(j.request) for j, _ in taken],
        source=source,
        plan=plan.summary(skipped=False),
        origins=[{"rule": j.rule} for j, _ in taken],
        alternatives=[j.alternatives for j, _ in taken],
        job_ids=[job_id for _, job_id in taken],
    )
