"""A private redis-server for fault tests: its own port and directory, AOF on, stoppable.

Tests that stop or crash Redis use one of these, never the machine's Redis on 6379.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from mirrorq.processes import free_port


class RedisServer:
    """`redis-server` with `appendonly yes` and `appendfsync everysec`, as mirrorq ships it
    (or, for the test session's own Redis, nothing kept on disk)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        aof: bool = True,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.aof = aof
        self.extra = extra  # more command-line options (`--replicaof`, ...)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes" if self.aof else "no",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                str(self.log_path),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:  # not listening yet, or still loading the AOF
                pass
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        client.close()
        return self

    def shutdown(self) -> None:
        """A graceful stop: Redis writes what it holds to the AOF, then exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)  # what `redis-cli shutdown` does
        self.proc.wait(timeout=30)

    def crash(self) -> None:
        """`kill -9`: whatever was not yet fsynced (up to a second of writes) is gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def restart(self, down_for_s: float = 0.0, *, crash: bool = False) -> None:
        self.crash() if crash else self.shutdown()
        time.sleep(down_for_s)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class SentinelSet:
    """A primary, a replica and three sentinels (`redis-server --sentinel`), each on a free
    port in its own directory, AOF on: what Sentinel's documentation calls the minimal
    set-up. Sentinels judge a Redis down after `down_after_ms` (small: tests are lean)."""

    MASTER = "mirrorq-test"

    def __init__(self, directory: Path, *, down_after_ms: int = 1000) -> None:
        self.directory = directory
        self.down_after_ms = down_after_ms
        first, second = directory / "redis-a", directory / "redis-b"
        first.mkdir()
        second.mkdir()
        self.primary = RedisServer(first)
        self.replica = RedisServer(second, extra=("--replicaof", "127.0.0.1", "0"))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def url(self, db: int = 0) -> str:
        """MIRRORQ_BROKER_URL's Sentinel form: every sentinel, the database in the first."""
        return ";".join(
            f"sentinel://127.0.0.1:{port}" + (f"/{db}" if n == 0 else "")
            for n, port in enumerate(self.sentinel_ports)
        )

    def start(self) -> SentinelSet:
        self.primary.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        wait_for(lambda: self.role(self.replica.port) == ("slave", "up"), "replica sync")
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        for n, port in enumerate(self.sentinel_ports):
            home = self.directory / f"sentinel-{n}"
            home.mkdir()
            config = home / "sentinel.conf"  # a sentinel rewrites its file: one each
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {home}\nlogfile {home / 'sentinel.log'}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [binary, str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_for(self._sentinels_see_each_other, "the sentinels to find each other")
        return self

    def sentinel(self, n: int = 0) -> Any:  # redis-py types SENTINEL's answers loosely
        return redis.Redis(port=self.sentinel_ports[n], socket_timeout=2)

    def master_port(self) -> int:
        _host, port = self.sentinel().sentinel_get_master_addr_by_name(self.MASTER)
        return int(port)

    def role(self, port: int) -> tuple[str, str]:
        """(role, master link status) as a Redis on `port` reports them."""
        try:
            info = redis.Redis(port=port, socket_timeout=2).info("replication")
        except redis.RedisError:
            return ("down", "")
        return (str(info["role"]), str(info.get("master_link_status", "")))

    def failover(self) -> None:
        """A graceful failover (`SENTINEL FAILOVER`): the replica promoted, the primary made
        its replica; waits until the new primary has its replica."""
        old = self.master_port()
        self.sentinel().execute_command("SENTINEL", "FAILOVER", self.MASTER)
        wait_for(lambda: self.master_port() != old, "the sentinels to promote the replica")
        self.primary, self.replica = self.replica, self.primary
        wait_for(lambda: self.role(self.replica.port) == ("slave", "up"), "replica sync")

    def _sentinels_see_each_other(self) -> bool:
        try:
            return all(
                len(self.sentinel(n).sentinel_sentinels(self.MASTER)) == 2
                and len(self.sentinel(n).sentinel_slaves(self.MASTER)) == 1
                for n in range(3)
            )
        except redis.RedisError:
            return False

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        self.primary.stop()
        self.replica.stop()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
