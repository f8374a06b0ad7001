"""mirrorq's own processes, started and watched from Python: the emulator and workers.

The demo, the integration tests and the benchmarks all run the real thing this way.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar, Self

MIRRORQ = [sys.executable, "-m", "mirrorq"]
LOG_DIR = Path(tempfile.gettempdir()) / "mirrorq-logs"


def _http(url: str, payload: dict[str, Any] | None = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def free_port() -> int:
    """A port nothing listens on now (for a process of ours to take)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmulatorProcess:
    """`mirrorq emulator --port 0` in a subprocess, with its control endpoints as methods."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, startup_timeout: float = 120.0
    ) -> None:
        """Start it with these CLI arguments; return once it serves (its lab seeded)."""
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*MIRRORQ, "emulator", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
        )
        try:
            line = self._ready_line(startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.ready: dict[str, Any] = json.loads(line)
        self.url: str = self.ready["endpoint_url"]

    def _ready_line(self, timeout: float) -> str:
        """The line it prints once serving, without hanging on one that never does."""
        stdout = self.proc.stdout
        assert stdout is not None
        lines: queue.Queue[str] = queue.Queue(maxsize=1)
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"emulator not ready after {timeout:.0f}s") from None
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:].decode(errors="replace")
            raise RuntimeError(
                f"emulator exited with {self.proc.wait()} before it was ready:\n{tail}"
            )
        return line

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stderr_text(self) -> str:
        """What it wrote to stderr so far (its log lines), read without moving the offset it
        writes at; before `stop()`."""
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stats(self) -> dict[str, Any]:
        return _http(f"{self.url}/_mirrorq/stats")["calls"]  # type: ignore[no-any-return]

    @property
    def events_queue_url(self) -> str | None:
        """The events queue's URL (started with --events-queue), else None."""
        return self.ready.get("events_queue_url")

    def events(self) -> dict[str, Any]:
        """The events queue and what was sent to it: GET /_mirrorq/events."""
        return _http(f"{self.url}/_mirrorq/events")  # type: ignore[no-any-return]

    def set_faults(self, **changes: float) -> dict[str, Any]:
        return _http(f"{self.url}/_mirrorq/faults", changes)  # type: ignore[no-any-return]

    def reset(self) -> None:
        self.set_faults(error_rate=0, drop_rate=0, latency_ms=0, throttle_rate=0, throttle_burst=50)
        _http(f"{self.url}/_mirrorq/reset", {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


class ServiceProcess:
    """A long-running `mirrorq` command (worker, listener, API) with its own log file."""

    command: tuple[str, ...] = ()
    ready_marker = b""  # what it logs once it serves
    # What starts it: subprocess.Popen, or what takes Popen's arguments and returns a Popen
    # (the tests' fork server, tests/forkserver.py, with every module imported already).
    launcher: ClassVar[Callable[..., subprocess.Popen[bytes]]] = subprocess.Popen

    def __init__(self, name: str, env: dict[str, str], *args: str, log_dir: Path = LOG_DIR) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        # Its own file, whatever else runs under the same name (other test processes, demos).
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:8]}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = ServiceProcess.launcher(
            [*MIRRORQ, *self.command, *self.arguments(name), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def arguments(self, name: str) -> list[str]:
        return []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} died: {self.log_path.read_text()[-3000:]}")
            if self.ready_marker in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no acks, no goodbyes."""
        with contextlib.suppress(ProcessLookupError):  # it died already
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class WorkerProcess(ServiceProcess):
    """A real `mirrorq worker`."""

    command = ("worker",)
    ready_marker = b"ready."

    def arguments(self, name: str) -> list[str]:
        return ["--hostname", f"{name}@%h"]


class ListenerProcess(ServiceProcess):
    """A real `mirrorq listen` (its queues and policy are its arguments)."""

    command = ("listen",)
    ready_marker = b"listening on"


class ApiProcess(ServiceProcess):
    """A real `mirrorq api` on a port of its own (`--port`, `--policy` are its arguments)."""

    command = ("api",)
    ready_marker = b"Uvicorn running on"
