"""kombu's Redis transport, without building a Redis client for every message, and safe to
use from a task thread while the worker reconnects.

kombu's Redis channel makes a new `redis.Redis` each time it records a delivery and each time
it acks one (`Channel._create_client`). redis-py 8 builds a ~165-entry response-callback table
in every client's constructor (redis/redis-py#3624), so those throwaway clients cost a worker
about a quarter of its CPU per job. A client is only a handle on the channel's connection
pool, safe to share between threads, so each channel keeps one per pool. (The asynchronous
client is left alone: kombu pins a dedicated connection to it for BRPOP.)

When Redis restarts, Celery closes the broker connection while task threads may still ack on
its channels; kombu then reads the connection's address from an object already detached
(`AttributeError: 'NoneType' object has no attribute 'hostname'`, celery/kombu#582), which
Celery does not expect and stops the worker for. A detached channel here raises the
connection error Celery handles (the ack is retried by redelivery: the message stays unacked).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

TRANSPORT = f"{__name__}:Transport"


_RedisChannel: Any = kombu_redis.Channel  # its stubs omit the private client factory


class Channel(_RedisChannel):  # type: ignore[misc]
    _mirrorq_client: tuple[Any, Any] | None = None  # (pool, client made for it)

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous=asynchronous)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._mirrorq_client is None or self._mirrorq_client[0] is not pool:
            self._mirrorq_client = (pool, super()._create_client())  # new pool on reconnect
        return self._mirrorq_client[1]


class Transport(kombu_redis.Transport):
    Channel = Channel
