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

Anything can push onto the queue's list. kombu stops the worker ("Unrecoverable error"), or
reconnects as if Redis had gone (a KeyError counts as a connection error), on a payload it
cannot turn into a message: not JSON, not an object, properties or headers that are not
objects, no delivery tag or delivery info, a body its body_encoding cannot decode. Such a
payload is popped and never recorded as unacked, so it is dropped here, before kombu reads it:
logged with why (never with its content) and announced as `message_dropped`, with the job it
names if any (tasks/messages.py records that job `failed`/InvalidJob).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.utils.dispatch import Signal
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty

TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"  # the same, the primary found by Sentinel
log = logging.getLogger(__name__)

# Sent for a payload dropped unread: `task` and `job_id` as far as the payload names them
# (either may be None or of any type), `why` a description that quotes none of its content.
message_dropped = Signal(name="message_dropped", providing_args=["task", "job_id", "why"])


_RedisChannel: Any = kombu_redis.Channel  # its stubs omit the private client factory


class Channel(_RedisChannel):  # type: ignore[misc]
    _mirrorq_client: tuple[Any, Any] | None = None  # (pool, client made for it)

    def _brpop_read(self, **options: Any) -> Any:
        """kombu's read of a popped message; one it cannot even parse is dropped."""
        transport = self.connection
        transport.delivering = False
        try:
            return super()._brpop_read(**options)
        except Exception as error:
            # Redis's own errors and Celery's (raised while delivering) are not ours to judge;
            # what is left is kombu failing to parse the payload it popped.
            errors = (Empty, *transport.connection_errors, *transport.channel_errors)
            if transport.delivering or isinstance(error, errors):
                raise
            _drop(None, f"not a JSON message ({_kind(error)})")
            return True

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        """kombu's consumer callback (virtual.Channel.basic_consume's), reading the payload
        first: one kombu can't turn into a message is dropped, not passed on."""
        tag = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

        def deliver(payload: Any) -> Any:
            self.connection.delivering = True
            message = self._read(payload)
            if isinstance(message, str):
                _drop(payload, message)
                return None
            if not no_ack:
                self.qos.append(message, message.delivery_tag)
            return callback(message)

        self.connection._callbacks[queue] = deliver
        return tag

    def _read(self, payload: Any) -> Any:
        """The payload as a kombu Message, or why it can't be one."""
        why = _unfit(payload)
        if why is not None:
            return why
        try:
            return self.Message(payload, channel=self)
        except Exception as error:  # whatever its body_encoding makes of its body
            return f"its body could not be decoded ({_kind(error)})"

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
    # Whether the payload a channel's BRPOP popped reached a consumer's callback (whichever
    # channel consumes its queue): the event loop reads one payload at a time.
    delivering = False


class SentinelChannel(Channel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """The channel above, its connection pool the primary's through the sentinels (kombu's
    SentinelChannel): a connection to a primary that died or was demoted is dropped, and the
    next one asks the sentinels again."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
    delivering = False


def _unfit(payload: Any) -> str | None:
    """What kombu and Celery need of a payload before they read it, or None if it has it."""
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not an object"
    properties, headers = payload.get("properties"), payload.get("headers")
    if not isinstance(properties, dict) or not isinstance(headers, dict):
        return "its properties or headers are not objects"
    if not isinstance(headers.get("task", ""), str):
        return "its task header is not a string"
    tag, info = properties.get("delivery_tag"), properties.get("delivery_info")
    if not isinstance(tag, str) or not tag:
        return "no delivery_tag"
    if not isinstance(info, dict) or not {"exchange", "routing_key"} <= info.keys():
        return "its delivery_info lacks exchange or routing_key"
    return None


def _kind(error: BaseException) -> str:
    """An exception's type, which quotes nothing of the payload (its message might)."""
    kind = type(error)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _drop(payload: Any, why: str) -> None:
    task, job_id = _named(payload)
    log.warning("message dropped from the queue: %s", why)
    message_dropped.send(sender=Channel, task=task, job_id=job_id, why=why)


def _named(payload: Any) -> tuple[Any, Any]:
    """(task, job id) as the payload names them: its headers' task and id, else (headers
    unreadable) its properties' correlation_id, which Celery sets to the task id."""
    if not isinstance(payload, dict):
        return None, None
    headers, properties = payload.get("headers"), payload.get("properties")
    if isinstance(headers, dict) and headers.get("id") is not None:
        task = headers.get("task")
        return (task if isinstance(task, str) else None), headers["id"]
    if isinstance(properties, dict):
        return None, properties.get("correlation_id")
    return None, None
