"""Leases in Redis: which job may read and create on an ENI, which worker runs a job.

A lease is a key holding its holder's random token, with a TTL. Its holder renews every
lease it holds in the background (a third of the TTL at a time), so a lease never lapses
while its holder is alive and reaches Redis, however long it waits (for an EC2 slot, for a
retry); a holder that dies or is cut off loses it one TTL after its last renewal. Before a
create is sent, the holder *fences* the call: it checks, atomically, that the lease is still
its own and extends it to outlast the call. A lease found lost means somebody else may have
read and created meanwhile: the holder reads again under a new lease before it creates.
A lease found lost is renewed no more, and its holder releases it before it takes the ENI
again: through a Sentinel failover a worker's connections may reach both primaries for a
while, and one may still hold the token the other lost (renewed there, it would keep the
ENI from its own holder, waiting for it for ever).
With `Settings.redis_min_replicas`, a fence counts only once that many replicas have the
lease (tasks/replication.py): a lease only the primary held would be gone after a failover,
and a second job could read the ENI and create while this job's create is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import uuid
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from config import Settings
from tasks import replication
from worker.timing import Timing

# Extend the lease if it is still this holder's, never shortening it (a fence may have
# extended it past the TTL for a create in flight). 1 if held, 0 if lost.
_EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""
# Only the holder may release its lease: at once, or (ARGV[2] ms > 0) when that time is up.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""

log = logging.getLogger(__name__)


def new_token() -> str:
    return uuid.uuid4().hex


@dataclass(eq=False)
class Lease:
    key: str
    token: str = field(default_factory=new_token)
    lost: bool = False


class Leases:
    """The leases this process holds, and the task that renews them."""

    def __init__(
        self,
        client: aioredis.Redis,
        ttl_s: float,
        timing: Timing,
        settings: Settings | None = None,
    ) -> None:
        self._redis = client
        # Fences wait for replicas when these settings ask for some (tasks/replication.py).
        self._replicated = settings if settings and replication.wanted(settings) else None
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._sleep = timing.sleep
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)
        self._held: set[Lease] = set()
        self._renewer: asyncio.Task[None] | None = None

    async def try_acquire(self, key: str) -> Lease | None:
        lease = Lease(key)
        if await self._redis.set(key, lease.token, nx=True, px=self.ttl_ms):
            self.hold(lease)
            return lease
        return None

    async def acquire(self, key: str) -> Lease:
        """Wait for the lease. Its holder is reading and creating, or retrying, on this ENI;
        a holder that died stops renewing it, so it comes free within one TTL at most."""
        poll = min(0.25, self.ttl_ms / 4000)
        while (lease := await self.try_acquire(key)) is None:
            await self._sleep(random.uniform(poll / 2, poll))
        return lease

    def hold(self, lease: Lease) -> None:
        """Renew `lease` from now on (a lease taken elsewhere, e.g. by a store script)."""
        self._held.add(lease)
        if self._renewer is None or self._renewer.done():
            # Its own (empty) context: it renews every job's leases, not the first holder's,
            # so its lines must not name that job (worker/logs.py).
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_forever(), context=contextvars.Context()
            )

    async def fence(self, lease: Lease, hold_s: float) -> bool:
        """Is the lease still ours? If so, extend it to last `hold_s` more (at least its TTL).
        With replicas required, NotReplicatedError (retryable) when the lease, ours still, has
        not reached them: the create must not be sent yet."""
        if lease.lost:
            return False
        ms = max(self.ttl_ms, int(hold_s * 1000))
        if self._replicated is None:
            if not await self._extend(keys=[lease.key], args=[lease.token, ms]):
                self._lost(lease)
            return not lease.lost
        for last in (False, True):  # NOSCRIPT from a new primary: loaded, sent once more
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    await self._extend(keys=[lease.key], args=[lease.token, ms], client=pipe)
                    replication.queue_wait(pipe, self._replicated)
                    held, _, acked = await pipe.execute()
                break
            except NoScriptError:
                if last:
                    raise
        if not held:
            self._lost(lease)
            return False
        replication.check(acked, self._replicated, f"the lease {lease.key}")
        return True

    async def release(self, lease: Lease, after_s: float = 0.0) -> None:
        """Stop renewing the lease and give it up: now, or once `after_s` have passed (a
        create of the holder's may still be on its way to EC2 until then). A lease found lost
        is given up too wherever it is still the holder's (after a failover, the primary
        that has it); another's is left alone."""
        self._held.discard(lease)
        await self._release(keys=[lease.key], args=[lease.token, int(max(0.0, after_s) * 1000)])

    def _lost(self, lease: Lease) -> None:
        lease.lost = True
        self._held.discard(lease)  # renewed no more: where it is still ours, it lapses

    def forget(self, lease: Lease) -> None:
        """Stop renewing a lease that was released elsewhere (by a store script)."""
        self._held.discard(lease)

    async def _renew_forever(self) -> None:
        while self._held:
            await self._sleep(self.ttl_ms / 3000)
            held = list(self._held)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for lease in held:
                        await self._extend(
                            keys=[lease.key], args=[lease.token, self.ttl_ms], client=pipe
                        )
                    answers = await pipe.execute()
            except RedisError as error:
                # Redis is away: nothing can be renewed, and nothing created either (every
                # create is fenced). Leases that lapse meanwhile are found lost at the fence.
                log.debug("could not renew %d lease(s): %r", len(held), error)
                continue
            for lease, held_still in zip(held, answers, strict=True):
                if not held_still:
                    self._lost(lease)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
