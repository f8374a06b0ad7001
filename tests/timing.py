"""The worker's time, faked: tests drive the clock the worker reads and sleeps on
(worker/timing.py), as tenacity's own tests do, instead of waiting for real time to pass."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import redis.asyncio as aioredis
from aiobotocore.session import get_session

from config import Settings
from emulator.lab import LAB_CREDENTIALS
from worker.aws import client_config
from worker.ec2 import Ec2Road
from worker.execute import Ec2
from worker.leases import Leases
from worker.ratelimit import Limiters
from worker.timing import Timing

T = TypeVar("T")

SETTLE_S = 10.0  # real seconds a woken task may take to sleep again (its Redis calls, ...)


class VirtualTime:
    """A clock the test drives, and the worker's `Timing` on it, two ways:

    - `timing`: a sleep returns at once, after letting the loop run what else is ready, the
      clock moved on to its end (sleeps begun together end together). Time passes as the
      code under test waits: retries, polls, a wait for Redis.
    - `stepped`: a sleep returns once the clock has reached its end, moved by the test's
      `advance` (or by a `timing` sleep). For tests with several tasks waiting at once (a
      lease's holder renewing it while another polls for it): each step runs every task due.

    `monotonic()` counts from 0 at the start; `wall()` is Unix time, from `start`.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.start = start
        self.now = start
        self.slept: list[float] = []  # every sleep, in order
        self._due: list[tuple[float, int, asyncio.Future[None], asyncio.Task[object] | None]] = []
        self._order = itertools.count()

    @property
    def timing(self) -> Timing:
        return Timing(self.sleep, self.monotonic, self.wall)

    @property
    def stepped(self) -> Timing:
        return Timing(self.sleep_stepped, self.monotonic, self.wall)

    def monotonic(self) -> float:
        return self.now - self.start

    def wall(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        end = self.now + max(0.0, seconds)
        await asyncio.sleep(0)
        self._move(end)

    async def sleep_stepped(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        due: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, next(self._order), due, asyncio.current_task())
        heapq.heappush(self._due, entry)
        await due

    async def advance(self, seconds: float) -> None:
        """Move the clock on by `seconds`, waking each stepped sleep as its end comes, in
        order; return once every task woken is asleep again or done."""
        await asyncio.sleep(0)  # a task just started reaches its first sleep
        until = self.now + seconds
        while self._due and self._due[0][0] <= until:
            await self._wake_next()
        self.now = max(self.now, until)

    async def drive(self, main: Awaitable[T]) -> T:
        """Run `main` to its end on the `stepped` clock: each time its task is asleep, the
        clock jumps to the next end of a stepped sleep (its own, or a background task's, such
        as the lease renewer's), so time passes only while it waits, never during its I/O."""
        task = asyncio.ensure_future(main)
        while not task.done():
            await self.until(lambda: task.done() or self._asleep(task), "the task to sleep")
            if not task.done():
                await self._wake_next()
        return task.result()

    async def _wake_next(self) -> None:
        end, _, due, task = heapq.heappop(self._due)
        if due.done():  # its sleeper was cancelled
            return
        self.now = max(self.now, end)
        due.set_result(None)
        await self._settled(task)

    def _asleep(self, task: asyncio.Task[object] | asyncio.Future[object]) -> bool:
        return any(waiting is task and not due.done() for _, _, due, waiting in self._due)

    def _move(self, to: float) -> None:
        """A `timing` sleep's end: the clock moves on, and the stepped sleeps due by then end."""
        self.now = max(self.now, to)
        while self._due and self._due[0][0] <= self.now:
            _, _, due, _ = heapq.heappop(self._due)
            if not due.done():
                due.set_result(None)

    async def _settled(self, task: asyncio.Task[object] | None) -> None:
        """Until `task` sleeps again (stepped) or ends: its work between sleeps is real I/O."""
        deadline = time.monotonic() + SETTLE_S
        while task is not None and not task.done():
            if self._asleep(task):
                return
            assert time.monotonic() < deadline, f"{task} neither slept again nor ended"
            await asyncio.sleep(0.001)  # its I/O, answered in real time

    async def until(self, condition: Callable[[], bool], what: str = "") -> None:
        """Let the loop run until `condition()` (the tasks sleeping on `timing` move the clock
        meanwhile); AssertionError naming `what` after SETTLE_S real seconds."""
        deadline = time.monotonic() + SETTLE_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
            await asyncio.sleep(0.001)  # the tasks' I/O, answered in real time


async def age(client: aioredis.Redis, key: str, seconds: float) -> None:
    """Take `seconds` off `key`'s TTL, as Redis's own clock would (the key expires when none is
    left): Redis keeps real time, the worker the test's."""
    left = await client.pttl(key)
    if left < 0:  # no such key, or one that never expires
        return
    if left <= seconds * 1000:
        await client.delete(key)
    else:
        await client.pexpire(key, int(left - seconds * 1000))


@asynccontextmanager
async def ec2_on(settings: Settings, timing: Timing) -> AsyncIterator[Ec2]:
    """What a job's attempts use (worker/execute.py), in-process on `timing`: a road to
    `settings.ec2_endpoint_url` with the lab's credentials, its limiters and the leases in
    `settings.broker_url`'s Redis, as the worker's runtime makes them."""
    async with get_session().create_client(
        "ec2",
        region_name=settings.region,
        endpoint_url=settings.ec2_endpoint_url,
        config=client_config(settings),
        aws_access_key_id=LAB_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=LAB_CREDENTIALS["aws_secret_access_key"],
    ) as client:
        redis = aioredis.Redis.from_url(settings.broker_url)
        leases = Leases(redis, settings.lease_s, timing)
        road = Ec2Road(client, Limiters(redis, settings, timing), settings, timing)
        try:
            yield Ec2(road, leases, settings)
        finally:
            await leases.close()
            await redis.aclose()
