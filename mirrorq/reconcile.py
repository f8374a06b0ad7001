"""`mirrorq reconcile`: every rule of a policy planned from live state, the gaps submitted as
one batch; once, or on a schedule for as long as it runs, with a one-line summary per pass.

Running it when nothing changed creates nothing; a session deleted since is created again.
A gap a job of mirrorq's is already queued or running for is `pending`, not submitted again
(each pass claims its gaps: tasks/scripts.py CLAIM_GAPS). A pass keeps only its counts: with
`--every` one that submits nothing stores nothing, and of the passes that did, the newest
PASSES_KEPT finished batches are kept (and any still running).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from config import Settings
from mirrorq import lifecycle
from mirrorq.bulk import pending_work, plan_read, read_live, submit_gaps
from mirrorq.coverage import Coverage, compute, store_view
from mirrorq.dark import Repair, after, plan_repairs
from mirrorq.planning import Outcome, Plan
from mirrorq.policy_watch import RulesSource, rules_now
from mirrorq.prune import Deletion
from mirrorq.rules import Rule
from tasks import keys
from tasks.producer import Producer
from tasks.records import JobStatus

log = logging.getLogger("mirrorq.reconcile")
PASSES_KEPT = 100  # finished pass batches kept (older ones deleted as new ones are stored)
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """`90`, `90s`, `5m`, `1h30m` as seconds; ValueError for anything else or zero."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"expected a duration such as 30s, 5m or 1h30m, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError("the duration must be more than zero")
    return total


@dataclass(frozen=True)
class Pass:
    number: int
    plan: Plan
    batch_id: str | None  # None: the pass submitted nothing and stored no batch
    counts: dict[str, int]  # the batch's jobs by status, once it ended (or as far as it got)
    repairs: list[Repair] = field(default_factory=list)  # dark sessions found, and where to
    coverage: Coverage | None = None  # as the pass found it, before its jobs
    pruned: lifecycle.Pruned = field(default_factory=lifecycle.Pruned)  # with --prune or `prune`
    # ENIs at EC2's session limit the batch's deletes free: planned again once it ended
    again: list[str] = field(default_factory=list)


def run_pass(
    settings: Settings,
    rules: Sequence[Rule],
    producer: Producer,
    *,
    number: int = 1,
    dry_run: bool = False,
    wait_s: float | None = None,
    keep_empty: bool = False,
    prune: bool = False,
    force: bool = False,
) -> Pass:
    """Plan every rule now (counting the mirrors of jobs still pending), and the repair of
    every managed session on a dead target (mirrorq/dark.py); submit the gaps and the
    repairs' modifies as one batch; wait up to `wait_s` for it to end. With nothing to
    submit, no batch is stored unless `keep_empty` (`mirrorq reconcile` run once prints a
    batch id, of its counts). The coverage the pass found is kept for the API's gauges.
    With `prune` (or for the rules that say `prune`), the managed sessions no rule wants are
    deleted in the same batch (mirrorq/prune.py), unless the share guard refuses (`force`)."""
    pending, repairing = pending_work(producer)
    live = asyncio.run(read_live(settings, rules, health=True))
    found = compute(live, pending, region=settings.region, repairs=repairing)
    store_view(producer.store.client, found)
    repairs = plan_repairs(live, pending)
    pruned = lifecycle.prune_live(settings, live, everything=prune, force=force)
    # Creates are planned as if the repairs were made: the moved sessions load their targets.
    plan = plan_read(after(live, repairs), pending)
    noted = {"prune": pruned.summary()} if pruned.plans else None
    again = [] if dry_run else after_prune(plan, pruned.deletions)
    batch_id = submit_gaps(
        producer,
        plan,
        source="mirrorq reconcile",
        dry_run=dry_run,
        repairs=repairs,
        others=lifecycle.deletion_jobs(pruned.deletions, dry_run=dry_run),
        noted=noted,
    )
    if batch_id is None and keep_empty:
        batch_id = producer.submit_batch(
            [], source="mirrorq reconcile", plan={**plan.summary(skipped=False), **(noted or {})}
        )
    counts: dict[str, int] = {}
    if batch_id is not None:
        producer.store.batches.keep_latest(
            keys.RECONCILE_PASSES, batch_id, time.time(), PASSES_KEPT
        )
        if wait_s is not None:
            status = producer.wait_batch(batch_id, timeout=wait_s)
            counts = dict(status["counts"]) if status else {}
    return Pass(number, plan, batch_id, counts, repairs, found, pruned, again)


def after_prune(plan: Plan, deletions: Iterable[Deletion]) -> list[str]:
    """The ENIs the plan skips at EC2's session limit (3 per ENI) from which the same pass
    deletes a session (`--prune`: a filter migration's old session, one no rule wants). The
    create is not planned into the slot that delete frees: the jobs of a batch run in no
    order, and EC2 refuses a 4th session (TrafficMirrorSessionsPerInterfaceLimitExceeded,
    permanent), so a create run before the delete would fail. Such an ENI is planned again
    by a pass once the batch (its deletes) ended: `reconcile` run once runs that pass itself,
    `--every` at once instead of a period later."""
    deleting = {d.eni_id for d in deletions}
    skipped = {i.eni_id for i in plan.items if i.outcome is Outcome.SESSION_LIMIT}
    return sorted(skipped & deleting)


def summary(done: Pass) -> str:
    """`pass 3: 12 to create (prod-web 10, db 2); skipped already_mirrored 340, session_limit
    2; batch …: created 12, failed 0`"""
    creates = done.plan.to_create()
    by_rule = {r.name: sum(1 for i in creates if i.rule == r.name) for r in done.plan.rules}
    planned = ", ".join(f"{name} {n}" for name, n in by_rule.items() if n)
    skipped = {k: v for k, v in done.plan.counts().items() if k != Outcome.CREATE}
    line = f"pass {done.number}: {len(creates)} to create"
    line += f" ({planned})" if planned else ""
    line += "; skipped " + (", ".join(f"{k} {v}" for k, v in skipped.items()) or "none")
    by_place = done.plan.counts_by_place() if len(done.plan.places()) > 1 else {}
    if by_place:
        line += "; by place " + ", ".join(
            f"{label} " + " ".join(f"{k} {v}" for k, v in counts.items())
            for label, counts in by_place.items()
        )
    moving = [r for r in done.repairs if r.to_target is not None]
    if done.repairs:
        line += f"; {len(done.repairs)} dark, {len(moving)} to retarget"
    if done.pruned.plans:
        reasons = Counter(d.reason.value for d in done.pruned.planned)
        line += f"; prune: {len(done.pruned.deletions)} to delete"
        line += f" ({', '.join(f'{k} {v}' for k, v in reasons.items())})" if reasons else ""
        line += "".join(f"; {r}" for r in done.pruned.refusals)
    notes = [
        *done.plan.missing,
        *done.plan.unplanned,
        *(r for r in done.repairs if not r.to_target),
    ]
    if notes:
        line += "; " + "; ".join(map(str, notes))
    if done.again:
        line += f"; {len(done.again)} ENI(s) at the session limit planned again after its deletes"
    line += f"; batch {done.batch_id or 'none'}"
    if done.counts:
        created = done.counts.get(JobStatus.CREATED, 0) + done.counts.get(JobStatus.DRY_RUN_OK, 0)
        line += f": created {created}"
        if moving:
            line += f", modified {done.counts.get(JobStatus.MODIFIED, 0)}"
        if deleted := done.counts.get(JobStatus.DELETED, 0):
            line += f", deleted {deleted}"
        line += f", failed {done.counts.get(JobStatus.FAILED, 0)}"
    if done.coverage is not None:
        line += f"; coverage {done.coverage.percent:g} %"
        dark, missing = done.coverage.totals["dark"], done.coverage.totals["missing"]
        line += f" ({dark} dark, {missing} missing)" if dark or missing else ""
    return line


def reconcile_every(
    settings: Settings,
    rules: RulesSource,
    producer: Producer,
    every_s: float,
    stop: threading.Event,
    *,
    dry_run: bool = False,
    prune: bool = False,
    force: bool = False,
) -> None:
    """A pass every `every_s` seconds (each waits for its batch, at most a period) until stop;
    each plans the rules in use when it starts (`rules` may be a watched policy's `current`)."""
    number = 0
    while not stop.is_set():
        number += 1
        started = time.monotonic()
        try:
            done = run_pass(
                settings,
                rules_now(rules),
                producer,
                number=number,
                dry_run=dry_run,
                wait_s=every_s,
                prune=prune,
                force=force,
            )
            log.info(summary(done))
        except Exception:  # EC2 or Redis away: this pass is lost, the next one tries again
            log.warning("pass %d failed; the next one tries again", number, exc_info=True)
            done = None
        if done is not None and done.again and done.counts:
            continue  # its deletes ended (it waited): plan the ENIs they freed at once
        stop.wait(max(0.0, started + every_s - time.monotonic()))
