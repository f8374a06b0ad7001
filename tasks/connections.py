"""Redis connections for every mirrorq process, retrying commands through a Redis restart
or a Sentinel failover.

redis-py retries a command on a connection error (and on Redis answering LOADING while it
reads its append-only file back) with jittered backoff, for about `Settings.redis_retry_s`;
only then does the command fail.

A `sentinel://host:26379;sentinel://host2:26379` URL (kombu's and Celery's form) names the
sentinels instead of Redis: the client asks them for the primary of
`Settings.sentinel_master` whenever it connects, and a connection to a primary that was
demoted (READONLY) or died is dropped and retried like a restart, so every process follows
a failover without being restarted. Lua scripts are sent by SHA and, when the new primary
has not seen one (NOSCRIPT), loaded again by redis-py's `Script`.

redis-py's Sentinel pool asks the sentinels only when one of its connections connects, and
drops its idle connections to an old primary only then: in a graceful failover the old
primary stays writable for about ten seconds after the sentinels name the new one, and a
pool kept writing to both meanwhile (a worker's ENI lease taken on one and fenced on the
other: lost, again and again). A worker's pools are followed (`primary_followed`): every
`FOLLOW_EVERY_S` the sentinels are asked, and every connection to any other Redis than the
primary they name is dropped, an idle one at once, one in use when it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from config import Settings

SOCKET_TIMEOUT_S = 5.0  # no command of mirrorq's takes long; a hung Redis is an error
# Asking a sentinel is quick; one that does not answer at once is skipped for the next.
SENTINEL_TIMEOUT_S = 1.0
SENTINEL_SCHEME = "sentinel"
# redis-py's Sentinel classes are untyped.
_SyncSentinel: Any = redis.sentinel.Sentinel
_AsyncSentinel: Any = aiosentinel.Sentinel
BACKOFF_CAP_S = 1.0  # a restart takes seconds: poll about once a second once it is slow
BACKOFF_BASE_S = 0.05
FOLLOW_EVERY_S = 0.5  # how often a followed pool asks the sentinels for the primary
log = logging.getLogger(__name__)


def _retries(settings: Settings) -> int:
    # Sleeps average half the cap once past the first few: about two retries per second.
    return int(settings.redis_retry_s * 2 / BACKOFF_CAP_S) + 1


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S)


@dataclass(frozen=True)
class Sentinels:
    """Where a `sentinel://` URL points: the sentinels, and the primary's database and
    credentials (from its first part, as kombu and Celery read it)."""

    hosts: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None

    def master_kwargs(self) -> dict[str, Any]:
        named = {"db": self.db, "username": self.username, "password": self.password}
        return {k: v for k, v in named.items() if v is not None}


def sentinels_of(url: str) -> Sentinels | None:
    """The sentinels a URL names, or None for a plain Redis URL. ValueError names what is
    wrong with one that is not a list of `sentinel://host:port` parts."""
    parts = [part.strip() for part in url.split(";") if part.strip()]
    if not parts or urlsplit(parts[0]).scheme != SENTINEL_SCHEME:
        return None
    hosts = []
    for part in parts:
        split = urlsplit(part)
        if split.scheme != SENTINEL_SCHEME or not split.hostname:
            raise ValueError(f"not a sentinel://host:port URL: {split.scheme}://{split.hostname}")
        hosts.append((split.hostname, split.port or 26379))
    first = urlsplit(parts[0])
    path = first.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("a sentinel:// URL's path is the Redis database's number")
    return Sentinels(
        hosts=hosts,
        db=int(path or 0),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
    )


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves (their password is not Redis's)."""
    named: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    }
    if settings.sentinel_password is not None:
        named["password"] = settings.sentinel_password.get_secret_value()
    return named


def transport_options(url: str, settings: Settings) -> dict[str, Any]:
    """kombu's (broker) and Celery's (result backend) Sentinel transport options for `url`:
    none for a plain Redis URL."""
    if sentinels_of(url) is None:
        return {}
    return {"master_name": settings.sentinel_master, "sentinel_kwargs": sentinel_kwargs(settings)}


def sync_client(url: str, settings: Settings) -> redis.Redis:
    options: dict[str, Any] = {
        "retry": Retry(_backoff(), _retries(settings)),
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
    }
    where = sentinels_of(url)
    if where is None:
        return redis.Redis.from_url(url, **options)
    sentinel = _SyncSentinel(where.hosts, sentinel_kwargs=sentinel_kwargs(settings))
    client: redis.Redis = sentinel.master_for(
        settings.sentinel_master, redis_class=redis.Redis, **where.master_kwargs(), **options
    )
    return client


class _BlockingSentinelPool(aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The primary's connections through the sentinels, a burst waiting for one as on
    BlockingConnectionPool."""


def async_pool(url: str, settings: Settings, *, max_connections: int) -> aioredis.Redis:
    """A client on a blocking pool: a burst waits for a connection instead of failing."""
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": settings.read_timeout_s,
        "retry": AsyncRetry(_backoff(), _retries(settings)),
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
    }
    where = sentinels_of(url)
    if where is None:
        return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, **options))
    sentinel = _AsyncSentinel(where.hosts, sentinel_kwargs=sentinel_kwargs(settings))
    client: aioredis.Redis = sentinel.master_for(
        settings.sentinel_master,
        redis_class=aioredis.Redis,
        connection_pool_class=_BlockingSentinelPool,
        **where.master_kwargs(),
        **options,
    )
    return client


async def leave_old_primaries(client: aioredis.Redis) -> int:
    """Ask the sentinels for the primary, and drop every connection of `client`'s Sentinel
    pool to another Redis: an idle one now, one in use when it is released (its command
    answered: the next connects to the primary named). How many were dropped; 0 for a
    client of a plain Redis URL."""
    if not isinstance(client.connection_pool, aiosentinel.SentinelConnectionPool):
        return 0
    pool: Any = client.connection_pool  # redis-py's Sentinel classes are untyped
    # redis-py drops the idle ones itself when the answer is not the primary it last named.
    host, port = await pool.get_master_address()
    primary = (str(host), int(port))
    dropped = 0
    for connection in list(pool._get_free_connections()):
        if connection.is_connected and (str(connection.host), int(connection.port)) != primary:
            await connection.disconnect()
            dropped += 1
    for connection in list(pool._get_in_use_connections()):
        if connection.is_connected and (str(connection.host), int(connection.port)) != primary:
            connection.mark_for_reconnect()
            dropped += 1
    if dropped:
        log.info(
            "the sentinels name %s:%s the primary: %d connection(s) to another Redis dropped",
            *primary,
            dropped,
        )
    return dropped


@asynccontextmanager
async def primary_followed(
    client: aioredis.Redis, every_s: float = FOLLOW_EVERY_S
) -> AsyncIterator[None]:
    """While in it, `client`'s connections follow the primary the sentinels name
    (`leave_old_primaries` every `every_s`); nothing for a plain Redis URL."""
    if not isinstance(client.connection_pool, aiosentinel.SentinelConnectionPool):
        yield
        return

    async def follow() -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await leave_old_primaries(client)
            except (redis.RedisError, OSError) as error:  # no sentinel answers: next time
                log.debug("could not ask the sentinels for the primary: %r", error)

    # Its own (empty) context: its lines are no job's (worker/logs.py).
    task = asyncio.get_running_loop().create_task(follow(), context=contextvars.Context())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def answers(url: str, timeout_s: float, settings: Settings) -> bool:
    """Whether Redis (the primary, with Sentinel) answers PING within `timeout_s`, asked once
    (a readiness probe must not wait through a restart, nor leave a thread behind when Redis
    hangs)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": AsyncRetry(_backoff(), 0),
    }
    where = sentinels_of(url)
    sentinel = None
    client: aioredis.Redis
    if where is None:
        client = aioredis.Redis.from_url(url, **options)
    else:
        sentinel = _AsyncSentinel(where.hosts, sentinel_kwargs=sentinel_kwargs(settings))
        client = sentinel.master_for(
            settings.sentinel_master, redis_class=aioredis.Redis, **where.master_kwargs(), **options
        )
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout_s))
    except (redis.RedisError, TimeoutError):
        return False
    finally:
        await client.aclose()
        for asked in sentinel.sentinels if sentinel is not None else []:
            await asked.aclose()


def publish_retry_policy(settings: Settings) -> dict[str, float]:
    """kombu's retry policy for publishing a message: the same patience as for commands."""
    return {
        "max_retries": _retries(settings),
        "interval_start": 0,
        "interval_step": BACKOFF_CAP_S / 2,
        "interval_max": BACKOFF_CAP_S,
    }
