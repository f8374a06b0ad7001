"""Admission per bucket: a message's jobs are held only when their bucket can serve them soon.

A job waiting for its bucket's slot holds what its message holds: a thread of the worker's
pool, and a place in its prefetch. Without admission a slow or throttled account's jobs
would fill every worker of the fleet while the other accounts' buckets idle. So each
message (its jobs share one place: tasks/batches.py `messages_of`) is first admitted on its
bucket's admission schedule (`SharedRateLimiter.admit`, beside the limiter's own in the
bucket's hash): its jobs take the next intervals at the bucket's rate in force. A message
whose turn comes within HORIZON_S runs now. A later one is published again with a countdown
that wakes it a little before its turn, carrying that turn (`admit_at`) so that it is
never scheduled twice, and this delivery is acked: it waits as a Celery ETA message in a
worker's memory, holding no thread. Its jobs keep their ids, tokens and records (`queued`),
and the message is held unacked meanwhile, so the lost-message repair never takes them for
lost. A countdown never exceeds half the visibility timeout: a turn further off is reached
in several hops.

A bucket is a place's action's (EC2 keeps one per action: worker/ratelimit.py `Limiters`):
a message's creates, deletes and modifies (tasks/contract.py JobKind) are admitted on their
own action's schedule, each deferred in a message of its own.

Only jobs that can wait are admitted: those with a `queued` record of this worker's queue.
A job started before (a redelivery), one sent with no record, or one of another queue runs,
or is passed on, at once, as before.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

from tasks.contract import DecodedJob, Envelope
from tasks.records import JobResult, JobStatus, kind_of, queue_of
from worker.metrics import JOBS_DEFERRED
from worker.ratelimit import SharedRateLimiter
from worker.roads import Place, place_of
from worker.runner import Worker

log = logging.getLogger(__name__)
HORIZON_S = 2.0  # a message whose turn is nearer runs now
LEAD_S = HORIZON_S / 2  # a deferred message wakes this long before its turn
# Jobs let in take their slots within this (a create at once, an `auto` job's after a read):
# their reservation keeps messages arriving together from all being let in, then lapses.
GRACE_S = 0.5
MAX_TURN_S = 86_400.0  # a turn further off was never given: the message is admitted afresh


@dataclass(frozen=True)
class Deferred:
    """Jobs of one place to publish again, to wake `countdown_s` from now (their turn is at
    `admit_at`, Unix time, given in the bucket's `epoch`)."""

    jobs: list[DecodedJob]
    records: list[JobResult]
    admit_at: float
    epoch: int
    countdown_s: float


@dataclass(frozen=True)
class Turn:
    """A deferred message's turn, as it carries it."""

    at: float
    epoch: int | None


def countdown(admit_at: float, now: float, visibility_timeout_s: float) -> float | None:
    """How long a message whose turn is at `admit_at` waits before it wakes again; None: it
    runs now (its turn is within the horizon)."""
    wait = admit_at - now
    if wait <= HORIZON_S:
        return None
    # A quarter of the way at a time (a few hops for long waits): each wake runs what its
    # bucket serves by then, so a turn given behind jobs that never took theirs, or at a
    # rate raised since, comes sooner.
    return min(wait - LEAD_S, max(HORIZON_S, wait / 4), visibility_timeout_s / 2)


async def admit(
    worker: Worker, jobs: list[DecodedJob], turn: Turn | None = None
) -> tuple[list[DecodedJob], list[Deferred]]:
    """The jobs to run now, and those to publish again for later (by place, in messages
    each of which its bucket serves within the horizon once its turn comes). A deferred
    message keeps its turn while its bucket's epoch stands; a rate set or cut since, or a
    turn no bucket would give (over MAX_TURN_S away), and it is admitted afresh."""
    records = await worker.store.load_many([job_id for job_id, _ in jobs])
    now_jobs: list[DecodedJob] = []
    waiting: dict[tuple[Place, str], list[tuple[DecodedJob, JobResult]]] = defaultdict(list)
    for job, record in zip(jobs, records, strict=True):
        envelope = job[1]
        if (
            isinstance(envelope, Envelope)
            and record is not None
            and record["status"] is JobStatus.QUEUED
            and queue_of(record) == worker.scope.queue
        ):
            place = place_of(envelope, record, worker.scope.region)
            waiting[place, kind_of(record).action].append((job, record))
        else:
            now_jobs.append(job)
    deferred: list[Deferred] = []
    for (place, action), entries in waiting.items():
        async with worker.roads.use(place) as road:
            run, wait = await _admit_place(
                road.limiters.of(action),
                entries,
                turn,
                worker.ec2.settings.visibility_timeout_s,
                worker.timing.wall(),
            )
        now_jobs += run
        deferred += wait
    for later_jobs in deferred:
        JOBS_DEFERRED.inc(len(later_jobs.jobs))
    if deferred:
        log.debug(
            "%d job(s) wait for their turn: %s",
            sum(len(d.jobs) for d in deferred),
            ", ".join(f"{len(d.jobs)} for {d.countdown_s:.1f} s" for d in deferred),
        )
    return now_jobs, deferred


async def _admit_place(
    limiter: SharedRateLimiter,
    entries: list[tuple[DecodedJob, JobResult]],
    turn: Turn | None,
    visibility: float,
    now: float,
) -> tuple[list[DecodedJob], list[Deferred]]:
    """One place's jobs of a message: those to run now, and the rest as deferred messages
    (`now`: Unix time, as turns are given in)."""
    if turn is not None and turn.at - now <= MAX_TURN_S:
        epoch = await limiter.epoch()
        if turn.epoch == epoch:  # its turn stands; what the bucket serves now runs now
            wait = countdown(turn.at, now, visibility)
            if wait is None:
                return [job for job, _ in entries], []
            soon, _, _, _ = await limiter.admit(len(entries), HORIZON_S, GRACE_S, line=False)
            run, rest = [job for job, _ in entries[:soon]], entries[soon:]
            return run, [_deferred(rest, turn.at, epoch, wait)] if rest else []
    soon, later, interval, epoch = await limiter.admit(len(entries), HORIZON_S, GRACE_S)
    run = [job for job, _ in entries[:soon]]
    deferred: list[Deferred] = []
    rest = entries[soon:]
    # In messages its bucket serves within the horizon, each woken before its turn.
    size = max(1, math.floor(HORIZON_S / interval)) if interval else len(rest)
    for n in range(0, len(rest), size):
        at = now + later + n * interval
        wait = countdown(at, now, visibility)
        if wait is None:
            run += [job for job, _ in rest[n : n + size]]
        else:
            deferred.append(_deferred(rest[n : n + size], at, epoch, wait))
    return run, deferred


def _deferred(
    entries: list[tuple[DecodedJob, JobResult]], at: float, epoch: int, wait: float
) -> Deferred:
    return Deferred([job for job, _ in entries], [record for _, record in entries], at, epoch, wait)
