"""A private redis-server for fault tests: its own port and directory, AOF on, stoppable.

Tests that stop or crash Redis use one of these, never the machine's Redis on 6379.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from mirrorq.processes import free_port


class RedisServer:
    """`redis-server` with `appendonly yes` and `appendfsync everysec`, as mirrorq ships it
    (or, for the test session's own Redis, nothing kept on disk)."""

    def __init__(self, directory: Path, port: int | None = None, *, aof: bool = True) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.aof = aof
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
