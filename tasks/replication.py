"""How an acceptance is confirmed (a job's, a batch's): one concept, `Confirmation`, whose
`Confirmation.of(client, settings)` is one of three ways, chosen by the settings and the
client, and whose one `write(client, queue, undo, what)` sends the writes `queue` puts on a
pipeline and returns their answers once they are confirmed, or undoes them (`undo`) and
raises NotReplicatedError. tasks/store.py's `ResultStore.accept` (a job) and
tasks/producer.py's `Producer.submit_batch` (a batch) call it, whatever the way:

- `Unchecked` (plain `redis://` URLs, no replica required): the writes are sent; nothing else.
- `Replicated` (MIRRORQ_REDIS_MIN_REPLICAS, any URL): accepted means replicated, below.
- `OnPrimary` (Sentinel URLs, no replica required): confirmed on the primary that survives
  a graceful failover, below.

Each way sends the writes again, the same, when a pipeline sent through a failover meets a
primary that has not seen its scripts (NOSCRIPT): the next pipeline loads them first. An
acceptance made again writes the same again and counts each job once (tasks/scripts.py
`ACCEPT`, `ACCEPT_MANY`: the counters count only a record written where there was none).

Accepted means replicated: a write that must survive the loss of Redis's primary is
confirmed only once `Settings.redis_min_replicas` replicas have it (Redis `WAIT`).

Redis replicates asynchronously: a write the primary acknowledged a moment before it died
may never reach the replica Sentinel promotes. `WAIT n timeout` blocks until n replicas
acknowledged every write of its connection; so the writes that need it are sent on one
connection (a pipeline), followed by a write of the fence key (so the WAIT also covers
writes made before on other connections: replication is one ordered stream) and the WAIT.
Short of the replicas, an acceptance is undone and refused (NotReplicatedError: retry with
the same key). Which writes wait, and what each costs, is in README.md ("Redis Sentinel");
an ENI lease's fence waits too (worker/leases.py, through `queue_wait` and `check`).

On the primary that survives: with Sentinel and no replica required, an acceptance is
confirmed only once it is known to be on the primary that survives a graceful failover
(`OnPrimary`). In one (`SENTINEL FAILOVER`) the sentinels promote the replica, and
only about a second later name it; the old primary stays writable (role master) until they
make it a replica about ten seconds later, and whatever it took meanwhile is thrown away when
it resyncs. redis-py's Sentinel pool asks the sentinels for the primary only when a
connection connects (redis/sentinel.py `SentinelManagedConnection._connect_retry`,
`SentinelConnectionPoolProxy.get_master_address`): its idle connections keep writing to the
old primary all that time. So each acceptance is followed, on its connection and in the same
round trip, by `ROLE` (the replicas connected) and `WAIT` for them (bounded by
`CONFIRM_WAIT_S`): if every connected replica acknowledged it, any replica promoted has it.
Otherwise (no replica connected, or one promoted away, or one slow) every sentinel is asked:
the acceptance is confirmed only if a majority answer, and each names the primary the write
went to with no failover in progress. If not, it is undone where it was written, the pool is
pointed at the primary the sentinels name (its idle connections to the old one dropped) and
the acceptance made again, with the same ids and idempotency claim, until it is confirmed or
`Settings.redis_retry_s` passes (then NotReplicatedError: retry with the same key). The
undo may not take effect where the first write already replicated, so the acceptance made
again can meet its own records there: it counts them once (above).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.sentinel

from config import Settings
from tasks import keys
from tasks.errors import NotReplicatedError

log = logging.getLogger(__name__)

# How long an acceptance waits for the primary's connected replicas to acknowledge it before
# the sentinels are asked instead (a replica promoted away never answers).
CONFIRM_WAIT_S = 0.1
RETRY_FIRST_S, RETRY_CAP_S = 0.05, 0.5  # between attempts while a failover settles


def wanted(settings: Settings) -> int:
    """How many replicas a write must reach (0: none, no WAIT)."""
    return settings.redis_min_replicas


def queue_wait(pipe: Any, settings: Settings) -> None:
    """Queue the fence write and the WAIT on `pipe` (sync or asyncio), after the writes
    they confirm; the pipeline's last answer is then the replicas that acknowledged."""
    pipe.incr(keys.REPLICATION_FENCE)
    pipe.execute_command(
        "WAIT", settings.redis_min_replicas, int(settings.redis_replica_timeout_s * 1000)
    )


def check(acked: Any, settings: Settings, what: str) -> None:
    """Raise NotReplicatedError unless `acked` (WAIT's answer) is enough."""
    if int(acked) < settings.redis_min_replicas:
        raise NotReplicatedError(
            what, int(acked), settings.redis_min_replicas, settings.redis_replica_timeout_s
        )


Queue = Callable[[Any], None]  # puts an acceptance's writes on a pipeline (sync)
Undo = Callable[[list[Any]], None]  # takes back an unconfirmed one, given its answers


class Confirmation(abc.ABC):
    """How an acceptance is confirmed: `of` gives the way for a client and its settings
    (see the module's docstring), and each way's `write` is the only way an acceptance is
    sent."""

    @staticmethod
    def of(client: redis.Redis, settings: Settings) -> Confirmation:
        if wanted(settings):
            return Replicated(settings)
        pool = client.connection_pool
        if isinstance(pool, redis.sentinel.SentinelConnectionPool):
            return OnPrimary(pool, settings)
        return Unchecked()

    @abc.abstractmethod
    def write(self, client: redis.Redis, queue: Queue, undo: Undo, what: str) -> list[Any]:
        """Send the writes `queue` puts on a pipeline, confirmed; their answers. `undo(answers)`
        takes back an unconfirmed one where it was written (if it cannot reach Redis, the
        acceptance is left to the lost-message repair); `what` names it in
        NotReplicatedError."""


def _sent(client: redis.Redis, queue: Queue) -> list[Any]:
    """The answers to the writes `queue` puts on a pipeline. Its scripts are sent by their
    hash alone, as a script called outside a pipeline is (no SCRIPT EXISTS round trip first);
    a primary that has not seen them (a new one, or one restarted) answers NOSCRIPT, and the
    writes are sent again, the pipeline loading them first, up to twice (a pipeline that
    loaded them, resent by redis-py through a failover, may still meet a primary that has
    not seen them). An acceptance sent again writes the same again and counts each job
    once."""
    with contextlib.suppress(redis.exceptions.NoScriptError):
        return _send(client, queue, load=False)
    try:
        return _send(client, queue, load=True)
    except redis.exceptions.NoScriptError:
        return _send(client, queue, load=True)


def _send(client: redis.Redis, queue: Queue, *, load: bool) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        queue(pipe)
        if not load:
            pipe.scripts.clear()  # redis-py's: the scripts it makes sure of before sending
        return list(pipe.execute())


class Unchecked(Confirmation):
    """Plain `redis://` URLs and no replica required: nothing is checked, nothing extra sent."""

    def write(self, client: redis.Redis, queue: Queue, undo: Undo, what: str) -> list[Any]:
        return _sent(client, queue)


class Replicated(Confirmation):
    """MIRRORQ_REDIS_MIN_REPLICAS: the writes, the fence and the WAIT on one connection; short
    of the replicas, undone and refused (NotReplicatedError)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def write(self, client: redis.Redis, queue: Queue, undo: Undo, what: str) -> list[Any]:
        def queue_and_wait(pipe: Any) -> None:
            queue(pipe)
            queue_wait(pipe, self.settings)

        *written, _, acked = _sent(client, queue_and_wait)
        try:
            check(acked, self.settings, what)
        except NotReplicatedError:
            # Nothing is published yet: undone, nothing of it runs. (An undo that cannot
            # reach Redis leaves the acceptance to the repair; the key, retried, names it.)
            with contextlib.suppress(redis.RedisError):
                undo(written)
            raise
        return written


class OnPrimary(Confirmation):
    """Confirms acceptances written through a Sentinel client with no replica required (see
    the module's docstring)."""

    def __init__(self, pool: Any, settings: Settings) -> None:
        self.pool = pool  # redis-py's SentinelConnectionPool (untyped)
        self.settings = settings
        self.replicas = 1  # the primary's connected replicas when last asked: what WAIT awaits

    def write(self, client: redis.Redis, queue: Queue, undo: Undo, what: str) -> list[Any]:
        """The writes with the check, sent until confirmed (undone where each unconfirmed one
        was written), or NotReplicatedError once `Settings.redis_retry_s` passes."""
        deadline = time.monotonic() + self.settings.redis_retry_s
        pause = RETRY_FIRST_S
        while True:
            connection = self.pool.get_connection()
            try:
                with client.pipeline(transaction=False) as pipeline:
                    pipe: Any = pipeline
                    pipe.connection = connection  # released by the pipeline, kept to be read
                    queue(pipe)
                    pipe.execute_command("ROLE")
                    pipe.execute_command("WAIT", self.replicas, int(CONFIRM_WAIT_S * 1000))
                    *written, role, acked = pipe.execute()
            except redis.exceptions.NoScriptError:
                # Sent again through a failover to a primary that had not seen the script:
                # the next pipeline loads it first.
                written, role, acked = [], None, 0
            else:
                where = (connection.host, connection.port)
                if self._confirmed(where, role, int(acked)):
                    return list(written)
                log.info(
                    "%s not confirmed on the primary at %s:%s (a failover under way?): undone "
                    "there, made again on the primary the sentinels name",
                    what,
                    *where,
                )
                with contextlib.suppress(redis.RedisError):
                    undo(written)
            if time.monotonic() > deadline:
                raise NotReplicatedError(
                    what,
                    0,
                    0,
                    self.settings.redis_retry_s,
                    reason="could not be confirmed on the primary the sentinels name (a "
                    "failover under way?)",
                )
            time.sleep(pause)
            pause = min(pause * 2, RETRY_CAP_S)
            with contextlib.suppress(redis.RedisError):
                # Asks the sentinels; if they name another primary now, the pool's idle
                # connections to the old one are dropped (and the one just used, on release).
                self.pool.get_master_address()

    def _confirmed(self, where: tuple[str, int], role: Any, acked: int) -> bool:
        connected = len(role[2]) if role and role[0] in (b"master", "master") else 0
        self.replicas = connected
        if connected and acked >= connected:
            return True  # every connected replica has it: one promoted would too
        return self._named_by_the_sentinels(where)

    def _named_by_the_sentinels(self, where: tuple[str, int]) -> bool:
        """Whether a majority of the sentinels answer, and each names `where` the primary,
        up, with no failover in progress (only the sentinel leading one knows it, from
        before the replica is promoted until it names the new primary)."""
        sentinels = self.pool.sentinel_manager.sentinels
        answered = 0
        for sentinel in sentinels:
            try:
                state = sentinel.sentinel_master(self.pool.service_name)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            except redis.ResponseError:  # it does not know the master
                return False
            answered += 1
            named = (str(state["ip"]), int(state["port"]))
            flags = str(state["flags"])
            if named != (str(where[0]), int(where[1])) or "failover_in_progress" in flags:
                return False
            if state["is_sdown"] or state["is_odown"]:
                return False
        return answered > len(sentinels) // 2
