"""Accepted means replicated: a write that must survive the loss of Redis's primary is
confirmed only once `Settings.redis_min_replicas` replicas have it (Redis `WAIT`).

Redis replicates asynchronously: a write the primary acknowledged a moment before it died
may never reach the replica Sentinel promotes. `WAIT n timeout` blocks until n replicas
acknowledged every write of its connection; so the writes that need it are sent on one
connection (a pipeline), followed by a write of the fence key (so the WAIT also covers
writes made before on other connections: replication is one ordered stream) and the WAIT.
Which writes wait, and what each costs, is in README.md ("Redis Sentinel").
"""

from __future__ import annotations

from typing import Any

from config import Settings
from tasks import keys
from tasks.errors import NotReplicatedError


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
