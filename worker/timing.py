"""The worker's one sleep and one clock: every part that waits or reads the time takes them
from a `Timing`, so that tests drive time instead of waiting for it (tests/timing.py).

This module alone names asyncio.sleep, time.monotonic and time.time; `REAL` is them, given
where a process starts (worker/runtime.py, a planner's roads, the repair thread). Two clocks
the worker does not keep stay out of it: Redis TIME, which the shared limiter's schedule runs
on (worker/ratelimit.py), and the records' timestamps, stamped by tasks/records.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Sleep = Callable[[float], Awaitable[None]]  # asyncio.sleep, or a test's fake
Clock = Callable[[], float]  # seconds


@dataclass(frozen=True)
class Timing:
    """How the worker waits, and reads the time."""

    sleep: Sleep
    monotonic: Clock  # intervals within the process: a job's deadline, a create's bound
    wall: Clock  # Unix time, for times other processes read: an admission turn, the repair's


REAL = Timing(asyncio.sleep, time.monotonic, time.time)
