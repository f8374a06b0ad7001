"""A view's data read at most once per period however many browsers poll, the last good copy
kept: when Redis (or EC2) is slow or away, a page answers within a bound with what it had,
marked stale, instead of waiting with it (Redis commands retry through a restart for
MIRRORQ_REDIS_RETRY_S)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("mirrorq.api.ui")
T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot(Generic[T]):
    value: T | None  # None: never read yet
    read_at: float | None  # Unix time of the read that gave `value`
    error: str | None  # why the latest read failed or is late; None when it is fresh


class Feed(Generic[T]):
    """`read` run at most once per `every_s`, one at a time; `get` waits for it at most
    `wait_s`, then answers the last good value with what is wrong."""

    def __init__(
        self,
        read: Callable[[], Awaitable[T]],
        every_s: float,
        wait_s: float,
        what: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read, self.every_s, self.wait_s, self.what = read, every_s, wait_s, what
        self._clock = clock
        self._value: T | None = None
        self._read_at: float | None = None
        self._started_at = 0.0
        self._error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def get(self) -> Snapshot[T]:
        now = self._clock()
        if self._task is None and (self._read_at is None or now - self._started_at >= self.every_s):
            self._started_at = now
            self._task = asyncio.create_task(self._refresh())
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), self.wait_s)
        error = self._error
        if self._task is not None and error is None:
            error = (
                f"{self.what} does not answer (asked {self._clock() - self._started_at:.0f} s ago)"
            )
        return Snapshot(self._value, self._read_at, error)

    async def _refresh(self) -> None:
        try:
            value = await self._read()
        except Exception as error:  # Redis or EC2 away: keep the last good value, say why
            log.warning("the dashboard could not read %s: %s", self.what, type(error).__name__)
            self._error = f"{self.what} does not answer ({type(error).__name__})"
        else:
            self._value, self._read_at, self._error = value, self._clock(), None
        finally:
            self._task = None
