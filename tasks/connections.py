"""Redis connections for every mirrorq process, retrying commands through a Redis restart.

redis-py retries a command on a connection error (and on Redis answering LOADING while it
reads its append-only file back) with jittered backoff, for about `Settings.redis_retry_s`;
only then does the command fail.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from config import Settings

BACKOFF_CAP_S = 1.0  # a restart takes seconds: poll about once a second once it is slow
BACKOFF_BASE_S = 0.05


def _retries(settings: Settings) -> int:
    # Sleeps average half the cap once past the first few: about two retries per second.
    return int(settings.redis_retry_s * 2 / BACKOFF_CAP_S) + 1


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S)


def sync_client(url: str, settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(url, retry=Retry(_backoff(), _retries(settings)))


def async_pool(url: str, settings: Settings, *, max_connections: int) -> aioredis.Redis:
    """A client on a blocking pool: a burst waits for a connection instead of failing."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=settings.read_timeout_s,
        retry=AsyncRetry(_backoff(), _retries(settings)),
    )
    return aioredis.Redis.from_pool(pool)


def publish_retry_policy(settings: Settings) -> dict[str, float]:
    """kombu's retry policy for publishing a message: the same patience as for commands."""
    return {
        "max_retries": _retries(settings),
        "interval_start": 0,
        "interval_step": BACKOFF_CAP_S / 2,
        "interval_max": BACKOFF_CAP_S,
    }
