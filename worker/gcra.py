"""The shared rate limiter's arithmetic in plain Python, on a clock the caller passes.

It is the specification that `worker.ratelimit`'s two Redis scripts implement step for step;
tests hold the two together, and reason about the schedule here without waiting on real time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


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
    epoch: int = 0  # one per cut: a slot reserved in an older epoch is void
    throttles: int = 0  # every report, acted on or not, for the CLI and the tests
    configured: float | None = None  # the workers' own rate, so the CLI shows theirs


def acquire(
    state: State, now: float, *, configured: float, burst: int, recovery: float
) -> tuple[State, float]:
    """Reserve the next slot: the new state, and how long the caller waits for its slot.

    The rate first recovers by `recovery * configured` per second since `updated`, up to
    `configured`; the slot is one interval after `tat` (or after now, if nobody called for a
    while); a caller may run `burst` intervals ahead of its slot. In Redis the hash also
    expires a day after the last acquire.
    """
    rate = configured if state.rate is None else state.rate
    updated = now if state.updated is None else state.updated
    tat = now if state.tat is None else state.tat
    rate = min(configured, rate + recovery * configured * max(0.0, now - updated))
    interval = 1 / rate
    tat = max(tat, now) + interval
    wait = max(0.0, tat - burst * interval - now)
    after = replace(
        state, rate=stored(rate), updated=stored(now), tat=stored(tat), configured=configured
    )
    return after, stored(wait)


def throttled(
    state: State,
    now: float,
    *,
    configured: float,
    burst: int,
    decrease: float,
    floor: float,
    cooldown: float,
    quiet: float,
) -> tuple[State, float]:
    """Take a RequestLimitExceeded report: the new state, and the rate now in force.

    Every report is counted. In-flight calls report one event many times, so a report within
    `cooldown` of the last event acted on changes nothing else. An event after `quiet` s
    without one is taken for jitter: EC2's bucket is empty, so the burst is spent (the next
    slot is no earlier than `burst` intervals from now), but the rate stands. An event
    sooner than that means the rate is too high: it is cut by `decrease` (not below `floor`)
    and a new epoch begins, its schedule `burst` intervals from now at the new rate. Either
    way the rate acted on is the one the last acquire left: recovery since then is not
    counted, as `updated` moves to now.
    """
    rate = configured if state.rate is None else state.rate
    last_event = 0.0 if state.last_event is None else state.last_event
    tat = now if state.tat is None else state.tat
    state = replace(state, throttles=state.throttles + 1)
    if now - last_event < cooldown:
        return state, stored(rate)
    epoch = state.epoch
    if now - last_event < quiet:
        rate = max(floor, rate * decrease)
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
