"""Redis connections for every mirrorq process, retrying commands through a Redis restart.

redis-py retries a command on a connection error (and on Redis answering LOADING while it
reads its append-only file back) with jittered backoff, for about `Settings.redis_retry_s`;
only then does the command fail.
"""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from config import Settings

SOCKET_TIMEOUT_S = 5.0  # no command of mirrorq's takes long; a hung Redis is an error
BACKOFF_CAP_S = 1.0  # a restart takes seconds: poll about once a second once it is slow
BACKOFF_BASE_S = 0.05


def _retries(settings: Settings) -> int:
    # Sleeps average half the cap once past the first few: about two retries per second.
    return int(settings.redis_retry_s * 2 / BACKOFF_CAP_S) + 1


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S)


def sync_client(url: str, settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        retry=Retry(_backoff(), _retries(settings)),
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
    )


def async_pool(url: str, settings: Settings, *, max_connections: int) -> aioredis.Redis:
    """A client on a blocking pool: a burst waits for a connection instead of failing."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=settings.read_timeout_s,
        retry=AsyncRetry(_backoff(), _retries(settings)),
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
    )
    return aioredis.Redis.from_pool(pool)


async def answers(url: str, timeout_s: float) -> bool:
    """Whether Redis answers PING within `timeout_s`, asked once (a readiness probe must not
    wait through a restart, nor leave a thread behind when Redis hangs)."""
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=AsyncRetry(_backoff(), 0),
    )
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout_s))
    except (redis.RedisError, TimeoutError):
        return False
    finally:
        await client.aclose()


def publish_retry_policy(settings: Settings) -> dict[str, float]:
    """kombu's retry policy for publishing a message: the same patience as for commands."""
    return {
        "max_retries": _retries(settings),
        "interval_start": 0,
        "interval_step": BACKOFF_CAP_S / 2,
        "interval_max": BACKOFF_CAP_S,
    }
