"""A fork server for the tests' long-running `mirrorq` processes (workers, listeners, APIs).

Each such process spent about 1.2 CPU seconds importing Celery, kombu, botocore, aiobotocore,
pydantic... before it served, and a run of the suite starts over two hundred of them. This
server imports those modules once, reading no settings, opening no sockets and starting no
threads, then forks a child per start: the child takes the start's argv, environment, working
directory and standard streams, and runs `python -m mirrorq`'s own entry, exiting the way that
process would. It is a real process of its own (its own pid and session, the tests' signals
reach it, its log is the same file) and, forked twice, a child of the test process that asked
for it (which is made a subreaper), so that process waits for it and reads its exit status.

`mirrorq.processes.ServiceProcess.launcher` is pointed here by tests/conftest.py; the tests
whose subject is a launch (the demo, the CLI, `mirrorq emulator`) keep `subprocess`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import locale
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# What `mirrorq worker`, `listen`, `api` and `reconcile` import, none of which reads settings
# (tasks.app builds its Celery app from them on import, so it and its importers are left to
# each child).
PRELOAD = (
    "mirrorq.cli",
    "mirrorq.api",
    "mirrorq.api.deadline",
    "mirrorq.listener",
    "mirrorq.policy_watch",
    "mirrorq.reconcile",
    "mirrorq.events",
    "tasks.producer",
    "tasks.store",
    "worker.admission",
    "worker.logs",
    "worker.ratelimit",
    "worker.repair",
    "worker.runner",
    "worker.runtime",
    "celery.bin.celery",
    "celery.apps.worker",
    "celery.worker.consumer",
    "celery.worker.components",
    "celery.concurrency.thread",
    "celery.backends.redis",
    "kombu.transport.redis",
    "aiobotocore.session",
    "prometheus_client",
    "uvicorn",
    "uvicorn.loops.auto",
    "uvicorn.protocols.http.auto",
    "uvicorn.lifespan.on",
)
PR_SET_CHILD_SUBREAPER = 36
ROOT = Path(__file__).resolve().parent.parent


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


# The server's side --------------------------------------------------------------------------


def _serve(sock: socket.socket) -> dict[str, Any]:
    """Answer starts until the test process hangs up, closing its end when it ends, even
    killed (then exit); return only in a child, with its start's request, its streams in
    place."""
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        if not message:
            os._exit(0)
        request: dict[str, Any] = json.loads(message)
        report_r, report_w = os.pipe()
        middle = os.fork()
        if middle == 0:
            child = os.fork()
            if child == 0:
                sock.close()
                os.close(report_r)
                os.close(report_w)
                for target, fd in enumerate(fds):
                    if fd != target:
                        os.dup2(fd, target)
                        os.close(fd)
                return request
            os.write(report_w, str(child).encode())
            os._exit(0)
        for fd in fds:
            os.close(fd)
        os.close(report_w)
        os.waitpid(middle, 0)  # its child is now the test process's (the subreaper's)
        with os.fdopen(report_r, "rb") as report:
            pid = report.read()
        sock.sendall(pid or b"0")


def _become(request: dict[str, Any]) -> None:
    """Turn this fork into the process `python -m mirrorq ARGS` would be."""
    if request["new_session"]:
        os.setsid()
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [str(ROOT / "mirrorq" / "__main__.py"), *request["args"]]


def main() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    from config.settings import get_settings

    assert get_settings.cache_info().currsize == 0, "the fork server read settings"
    assert "tasks.app" not in sys.modules, "the fork server built the Celery app"
    assert threading.active_count() == 1, "the fork server started a thread"
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.sendall(b"ready")
    request = _serve(sock)
    _become(request)
    import runpy

    runpy.run_module("mirrorq", run_name="__main__", alter_sys=True)


# The test process's side --------------------------------------------------------------------


class ForkedProcess(subprocess.Popen[bytes]):
    """A process the fork server started, as a `subprocess.Popen` (pid, poll, wait,
    returncode, send_signal, terminate, kill): it is this process's child."""

    def __init__(self, args: list[str], pid: int) -> None:  # no super(): nothing to spawn
        self.args = args
        self.pid = pid
        self.returncode: int | Any = None
        self.stdin = self.stdout = self.stderr = None
        self._child_created = False  # Popen.__del__ has nothing to do

    def poll(self) -> int | Any:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | Any:
        if timeout is None:
            if self.returncode is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """This test process's fork server, started on first use; `launch` takes what
    `subprocess.Popen` takes for a `python -m mirrorq` command."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None

    def _start(self) -> socket.socket:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MIRRORQ_"))}
        self._server = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        ours.settimeout(120)
        if ours.recv(5) != b"ready":
            raise RuntimeError(f"the fork server did not start: {self._server.wait()}")
        ours.settimeout(None)
        self._sock = ours
        return ours

    def launch(
        self,
        args: list[str],
        *,
        stdout: Any,
        stderr: Any,
        env: dict[str, str] | None = None,
        start_new_session: bool = False,
    ) -> subprocess.Popen[bytes]:
        """What `subprocess.Popen(args, stdout=, stderr=, env=, start_new_session=)` starts
        (stdin /dev/null): `mirrorq.processes.ServiceProcess.launcher`."""
        out = stdout.fileno()
        err = out if stderr == subprocess.STDOUT else stderr.fileno()
        with open(os.devnull, "rb") as stdin:
            return self._fork(args, env, [stdin.fileno(), out, err], start_new_session)

    def run(
        self,
        args: list[str],
        *,
        env: dict[str, str],
        input: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """What `subprocess.run(args, env=, input=, timeout=, check=, capture_output=True,
        text=True)` does."""
        fds = [os.pipe(), os.pipe(), os.pipe()]
        try:
            process = self._fork(args, env, [fds[0][0], fds[1][1], fds[2][1]], False)
        finally:
            for end in (fds[0][0], fds[1][1], fds[2][1]):
                os.close(end)
        feed, outputs = fds[0][1], {fds[1][0]: bytearray(), fds[2][0]: bytearray()}
        threading.Thread(target=_feed, args=(feed, (input or "").encode()), daemon=True).start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            for fd in outputs:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    process.kill()
                    process.wait()
                    for fd in outputs:
                        os.close(fd)
                    raise subprocess.TimeoutExpired(args, timeout or 0)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        outputs[key.fd] += chunk
                    else:
                        selector.unregister(key.fd)
                        os.close(key.fd)
        code = process.wait()
        stdout, stderr = (_text(bytes(data)) for data in outputs.values())
        if check and code:
            raise subprocess.CalledProcessError(code, args, stdout, stderr)
        return subprocess.CompletedProcess(args, code, stdout, stderr)

    def _fork(
        self, args: list[str], env: dict[str, str] | None, fds: list[int], new_session: bool
    ) -> ForkedProcess:
        if args[:3] != [sys.executable, "-m", "mirrorq"]:
            raise ValueError(f"the fork server starts `python -m mirrorq` only: {args}")
        request = {
            "args": args[3:],
            "env": dict(os.environ if env is None else env),
            "cwd": os.getcwd(),
            "new_session": new_session,
        }
        with self._lock:
            sock = self._sock or self._start()
            socket.send_fds(sock, [json.dumps(request).encode()], fds)
            pid = int(sock.recv(32))
        if not pid:
            raise RuntimeError(f"the fork server could not start {args[3:]}")
        return ForkedProcess(args, pid)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()  # the server exits on the hang-up
                self._sock = None
            if self._server is not None:
                try:
                    self._server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._server.kill()
                    self._server.wait()
                self._server = None


def _feed(fd: int, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError), os.fdopen(fd, "wb") as stdin:
        stdin.write(data)


def _text(data: bytes) -> str:
    """As `subprocess.run(text=True)` decodes: the locale's encoding, universal newlines."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


# The server of this test process, while the session's fixture has one up.
current: ForkServer | None = None


def run_mirrorq(
    args: list[str],
    *,
    env: dict[str, str],
    input: str | None = None,
    timeout: float | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(args, capture_output=True, text=True, ...)` for a `python -m mirrorq`
    command, forked from the session's server when it has one."""
    if current is None:
        return subprocess.run(
            args, env=env, input=input, timeout=timeout, check=check, capture_output=True, text=True
        )
    return current.run(args, env=env, input=input, timeout=timeout, check=check)


if __name__ == "__main__":
    main()
