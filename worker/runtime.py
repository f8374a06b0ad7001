"""One event loop, one long-lived aiobotocore EC2 client per place and one Redis pool per
worker process.

Celery's thread pool runs task bodies on threads; each hands its message's jobs to this loop
as one coroutine, so every job in the process shares one loop, one Redis pool and, with every
job of its place (role and Region), one client (worker/roads.py keeps those of the places in
use; the default place's is opened here, at start).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import os
import threading
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from aiobotocore.session import get_session

from config import Settings
from tasks.connections import async_pool, primary_followed
from tasks.contract import fleet_scope
from tasks.store import AsyncResultStore, ResultStore
from worker.aws import client_config, elbv2_client
from worker.ec2 import Ec2Road, LazyClient
from worker.execute import Ec2
from worker.leases import Leases
from worker.ratelimit import Limiters, SharedRateLimiter
from worker.redaction import redact_credentials
from worker.roads import Roads
from worker.runner import Worker
from worker.timing import REAL, Sleep, Timing

if TYPE_CHECKING:  # stubs only: a development dependency
    from types_aiobotocore_ec2 import EC2Client

T = TypeVar("T")
SPARE_REDIS_CONNECTIONS = 4  # the rate reporter and the lease renewer
log = logging.getLogger(__name__)


class Ec2Runtime:
    """The process's event loop thread and clients; `run()` is safe from any thread.

    `timing` is the one sleep and clock of everything it makes (the roads, the leases, the
    runner): the real ones in a worker process; a test may pass its own."""

    def __init__(self, settings: Settings, store: ResultStore, timing: Timing = REAL) -> None:
        self.settings = settings
        self.timing = timing
        self.pid = os.getpid()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mirrorq-ec2-loop", daemon=True
        )
        self._thread.start()
        self._stack = AsyncExitStack()
        self._reporter: concurrent.futures.Future[None] | None = None
        # What lives as long as the process starts in an empty log context: a message's task
        # may open the runtime, and these lines are not its job's (worker/logs.py).
        blank = contextvars.Context()
        self.worker: Worker = blank.run(self.run, self._open(store))
        if self.worker.ec2.road.limiters.create is not None:
            reporting = _report_rate(self.worker.ec2.road.limiters.create, timing.sleep)
            self._reporter = blank.run(asyncio.run_coroutine_threadsafe, reporting, self._loop)

    async def _open(self, store: ResultStore) -> Worker:
        """Everything is made on the loop's thread: redis.asyncio's connections belong to the
        loop that uses them."""
        settings, timing = self.settings, self.timing
        session = get_session()
        client: EC2Client = await self._stack.enter_async_context(
            session.create_client(
                "ec2",
                region_name=settings.region,
                endpoint_url=settings.ec2_endpoint_url,
                config=client_config(settings),
            )
        )
        credentials = await session.get_credentials()
        if credentials is not None:
            await redact_credentials(credentials)
        broker = await self._redis(settings.broker_url)
        results = (
            broker
            if settings.result_backend == settings.broker_url
            else await self._redis(settings.result_backend)
        )
        leases = Leases(results, settings.lease_s, timing, settings)
        self._stack.push_async_callback(leases.close)
        elbv2 = LazyClient(functools.partial(elbv2_client, settings, session), self._stack)
        road = Ec2Road(client, Limiters(broker, settings, timing), settings, timing, elbv2=elbv2)
        ec2 = Ec2(road, leases, settings)
        roads = Roads(session, road, broker, settings)
        self._stack.push_async_callback(roads.close)
        return Worker(
            ec2=ec2,
            roads=roads,
            store=AsyncResultStore(store, results),
            # Jobs running at once, whatever the size of the messages they came in.
            slots=asyncio.Semaphore(settings.concurrency),
            ping=results.ping,
            scope=fleet_scope(settings),
            timing=timing,
        )

    async def _redis(self, url: str) -> aioredis.Redis:
        # A job holds at most one connection at a time, and `slots` admits `concurrency` jobs.
        client = async_pool(
            url, self.settings, max_connections=self.settings.concurrency + SPARE_REDIS_CONNECTIONS
        )
        self._stack.push_async_callback(client.aclose)
        # With Sentinel: every connection follows a failover within a second (leases, records
        # and the limiter never write to two primaries for long; tasks/connections.py).
        await self._stack.enter_async_context(primary_followed(client))
        return client

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._reporter is not None:
            self._reporter.cancel()
        try:
            self.run(self._stack.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()


RATE_REPORT_S = 10.0


async def _report_rate(limiter: SharedRateLimiter, sleep: Sleep) -> None:
    """Log the fleet's shared rate and throttle count whenever they change."""
    last = None
    while True:
        await sleep(RATE_REPORT_S)
        try:
            now = await limiter.snapshot()
        except Exception:  # a Redis hiccup must not end the reporting
            log.warning("could not read the shared EC2 rate", exc_info=True)
            continue
        if now != last:
            log.info(
                "EC2 CreateTrafficMirrorSession: shared rate %.2f/s of %.2f/s configured; "
                "%d RequestLimitExceeded so far",
                now.rate,
                now.configured,
                now.throttles,
            )
            last = now


_runtime: Ec2Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime(settings: Settings, store: ResultStore) -> Ec2Runtime:
    """This process's runtime, created on first use (after any fork, never inherited)."""
    global _runtime  # noqa: PLW0603 - one runtime per process is the point
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = Ec2Runtime(settings, store)
            log.info(
                "EC2 client ready (region %s, endpoint %s, %d connections)",
                settings.region,
                settings.ec2_endpoint_url or "AWS",
                settings.concurrency,
            )
        return _runtime


def close_runtime() -> None:
    global _runtime  # noqa: PLW0603
    with _runtime_lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.close()
        _runtime = None
