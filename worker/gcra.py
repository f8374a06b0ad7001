"""The shared rate limiter's arithmetic in plain Python, on a clock the caller passes.

It is the specification that `worker.ratelimit`'s Redis scripts implement step for step;
tests hold the two together, and reason about the schedule here without waiting on real time.

A bucket's rate and burst are the fleet's, kept in its hash beside the schedule (`configured`,
`burst`): every caller passes its own setting, which is written only where the bucket has
none yet, and is otherwise ignored. The schedule and the AIMD cuts run at the stored values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

SET = "set"  # `source` of a rate set for the fleet (`mirrorq rate set`, a policy): kept
SETTING = "setting"  # `source` of the first caller's own setting: expires with the schedule


def stored(x: float) -> float:
    """A number as the scripts leave it: Lua's tostring keeps 14 significant digits (Redis
    would truncate a bare Lua number to an integer), so at today's Unix time a timestamp is
    held to 0.1 ms."""
    return float(f"{x:.14g}")


@dataclass(frozen=True)
class State:
    """The limiter's Redis hash, field for field; None where the hash has no such field yet.

    A missing `rate` is the configured one, a missing `updated` or `tat` is now, a missing
    `last_event` is 0: long ago, since the clock reads Unix time.
    """

    rate: float | None = None  # the shared rate in force, in calls per second
    updated: float | None = None  # when `rate` last recovered
    tat: float | None = None  # the last reserved slot (GCRA's theoretical arrival time)
    last_event: float | None = None  # the last throttling event acted on
    epoch: int = 0  # one per cut or change of rate: a slot reserved in an older epoch is void
    throttles: int = 0  # every report, acted on or not, for the CLI and the tests
    configured: float | None = None  # the fleet's rate (0: no limit), whoever calls
    burst: int | None = None  # the fleet's burst
    source: str | None = None  # SET or SETTING: where `configured` came from
    defer_tat: float | None = None  # after the turns given to deferred jobs
    admit_tat: float | None = None  # after the slots of the jobs last admitted to run now
    admitted: float | None = None  # when they were: their reservation lapses `grace` after


def fleet(state: State, *, own_rate: float, own_burst: int) -> State:
    """The bucket's configuration: as kept, else the caller's own (rate and burst) written.

    A caller whose own rate is 0 (no limit of its own) writes nothing: it follows a fleet's
    rate once one is kept, and is unlimited until then. Only `configure` makes a fleet
    unlimited, so one process started with 0 cannot lift the limit for all the others.
    """
    if state.configured is None:
        if own_rate <= 0:
            return state
        state = replace(state, configured=own_rate, source=SETTING)
    if state.burst is None:  # a hash an older mirrorq wrote: its rate, no burst
        state = replace(state, burst=own_burst)
    return state


def limited(state: State) -> bool:
    return state.configured is not None and state.configured > 0


def floor_of(configured: float) -> float:
    """The shared rate is never cut below this: 1 % of the fleet's rate, at least one call
    per 10 s."""
    return max(0.1, configured / 100)


def acquire(
    state: State, now: float, *, own_rate: float, own_burst: int, recovery: float
) -> tuple[State, float]:
    """Reserve the next slot: the new state, and how long the caller waits for its slot.

    The bucket's configuration is read (or the caller's written, as `fleet` says); with no
    rate the call waits for nothing and the schedule is left alone. Otherwise the rate first
    recovers by `recovery * configured` per second since `updated`, up to `configured`; the
    slot is one interval after `tat` (or after now, if nobody called for a while); a caller
    may run `burst` intervals ahead of its slot. In Redis the hash also expires a day after
    the last acquire, unless its configuration was set for the fleet (SET).
    """
    state = fleet(state, own_rate=own_rate, own_burst=own_burst)
    if not limited(state):
        return state, 0.0
    assert state.configured is not None
    assert state.burst is not None
    configured, burst = state.configured, state.burst
    rate = configured if state.rate is None else state.rate
    updated = now if state.updated is None else state.updated
    tat = now if state.tat is None else state.tat
    rate = min(configured, rate + recovery * configured * max(0.0, now - updated))
    interval = 1 / rate
    tat = max(tat, now) + interval
    wait = max(0.0, tat - burst * interval - now)
    after = replace(state, rate=stored(rate), updated=stored(now), tat=stored(tat))
    return after, stored(wait)


def admit(
    state: State,
    now: float,
    jobs: int,
    *,
    horizon: float,
    grace: float,
    own_rate: float,
    own_burst: int,
    line: bool = True,
) -> tuple[State, int, float, float, int]:
    """Admit a message of `jobs` jobs to the bucket. Returns the new state; how many of its
    jobs run now (the first ones, whose slots would come within `horizon`); how long until
    the first of the others' turn; the interval between slots (0: no rate); and the epoch
    the turns are given in (a rate set or cut since voids them).

    Jobs that run now take the slots after the limiter's own schedule (`tat`), the first a
    burst early, as `acquire` would give them, and after those of jobs admitted to run now
    within the last `grace` seconds (`admit_tat`, `admitted`), which may not have taken theirs
    yet: messages arriving together are not all let in. Older reservations lapse: a job that
    never takes its slot (stuck in a throttled read, or failed) holds nothing for long. The
    others are given turns in line: `defer_tat` is where the turns given so far end, and
    they take the next ones (or those after the jobs run now), so that deferred messages
    wake one after another, in the order they were deferred. A bucket without a rate runs
    everything now. With `line` False (a deferred message woken, which keeps its turn) its
    jobs reserve nothing and the others are given no turn: what the bucket serves now runs.
    """
    state = fleet(state, own_rate=own_rate, own_burst=own_burst)
    if not limited(state):
        return state, jobs, 0.0, 0.0, state.epoch
    assert state.configured is not None
    assert state.burst is not None
    rate = state.configured if state.rate is None else state.rate
    start = now if state.tat is None else max(state.tat, now)
    fresh = state.admitted is not None and now - state.admitted <= grace
    if fresh and state.admit_tat is not None:
        start = max(start, state.admit_tat)
    interval = 1 / rate
    first = start + interval - state.burst * interval  # the first job's slot
    soon = (
        0
        if first - now > horizon
        else min(jobs, math.floor((now + horizon - first) / interval) + 1)
    )
    after = state
    if soon and line:
        after = replace(after, admit_tat=stored(start + soon * interval), admitted=stored(now))
    if soon == jobs or not line:
        return after, soon, 0.0, stored(interval), state.epoch
    turn = first + soon * interval
    turn = max(turn, turn if state.defer_tat is None else state.defer_tat)
    after = replace(after, defer_tat=stored(turn + (jobs - soon) * interval))
    return after, soon, stored(max(0.0, turn - now)), stored(interval), state.epoch


def throttled(
    state: State,
    now: float,
    *,
    own_rate: float,
    own_burst: int,
    decrease: float,
    cooldown: float,
    quiet: float,
) -> tuple[State, float]:
    """Take a RequestLimitExceeded report: the new state, and the rate now in force (0 when
    the bucket has no rate: nothing to cut).

    Every report is counted. In-flight calls report one event many times, so a report within
    `cooldown` of the last event acted on changes nothing else. An event after `quiet` s
    without one is taken for jitter: EC2's bucket is empty, so the burst is spent (the next
    slot is no earlier than `burst` intervals from now), but the rate stands. An event
    sooner than that means the rate is too high: it is cut by `decrease` (not below
    `floor_of` the fleet's rate) and a new epoch begins, its schedule `burst` intervals from
    now at the new rate. Either way the rate acted on is the one the last acquire left:
    recovery since then is not counted, as `updated` moves to now.
    """
    state = fleet(state, own_rate=own_rate, own_burst=own_burst)
    state = replace(state, throttles=state.throttles + 1)
    if not limited(state):
        return state, 0.0
    assert state.configured is not None
    assert state.burst is not None
    configured, burst = state.configured, state.burst
    rate = configured if state.rate is None else state.rate
    last_event = 0.0 if state.last_event is None else state.last_event
    tat = now if state.tat is None else state.tat
    if now - last_event < cooldown:
        return state, stored(rate)
    epoch = state.epoch
    if now - last_event < quiet:
        rate = max(floor_of(configured), rate * decrease)
        epoch += 1
        tat = now + burst / rate
    else:
        tat = max(tat, now + burst / rate)
    after = replace(
        state,
        rate=stored(rate),
        last_event=stored(now),
        updated=stored(now),
        tat=stored(tat),
        epoch=epoch,
    )
    return after, stored(rate)


def configure(state: State, now: float, *, rate: float, burst: int) -> State:
    """Set the bucket's rate and burst for the whole fleet (0: no limit), kept until changed.

    The new rate is in force at once (a cut AIMD made is forgotten: EC2 will say again if
    the rate is too high), and a new epoch voids the slots reserved at the old one; the
    schedule is held to no more than a spent burst ahead at the new rate, so callers queued
    behind a slow rate are not kept waiting once it is raised. In Redis the hash no longer
    expires.
    """
    tat = state.tat
    if tat is not None and rate > 0:
        tat = stored(min(tat, now + burst / rate))
    return replace(
        state,
        configured=rate,
        burst=burst,
        source=SET,
        rate=rate,
        tat=tat,
        epoch=state.epoch + 1,
        defer_tat=None,  # the turns given at the old rate are void, and their line with them
    )
