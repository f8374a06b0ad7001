"""Choosing a SessionNumber at run time, under a per-ENI lease held in Redis.

Two jobs planning on the same ENI at once would both see the same lowest free number, or
both see "not mirrored yet"; the lease makes planning and creating one step per ENI.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from tasks import keys
from tasks.contract import SESSION_NUMBER_MAX

# Compare-and-delete: only the job that holds a lease may release it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lowest_free_session_number(used: Iterable[int]) -> int | None:
    taken = set(used)
    return next((n for n in range(1, SESSION_NUMBER_MAX + 1) if n not in taken), None)


def same_mirror(
    sessions: Iterable[dict[str, Any]], target_id: str, filter_id: str
) -> dict[str, Any] | None:
    """The session that already mirrors to this target through this filter, if any."""
    return next(
        (
            s
            for s in sessions
            if s["TrafficMirrorTargetId"] == target_id and s["TrafficMirrorFilterId"] == filter_id
        ),
        None,
    )


class EniLeases:
    def __init__(self, client: aioredis.Redis, ttl_s: float) -> None:
        self._redis = client
        self._ttl_ms = int(ttl_s * 1000)

    async def acquire(self, eni_id: str, job_id: str) -> bool:
        """Take the ENI's lease, or keep it if this job already holds it (a redelivery)."""
        key = keys.eni_lease(eni_id)
        if await self._redis.set(key, job_id, nx=True, px=self._ttl_ms):
            return True
        holder = await self._redis.get(key)
        if holder in (job_id, job_id.encode()):
            await self._redis.pexpire(key, self._ttl_ms)
            return True
        return False

    async def release(self, eni_id: str, job_id: str) -> None:
        await self._redis.eval(_RELEASE, 1, keys.eni_lease(eni_id), job_id)
