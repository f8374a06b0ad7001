"""A real mirrorq worker run inside the test process, for tests whose subject is a job's logic.

`mirrorq worker` is Celery's worker on tasks.jobs's app. This runs the same: Celery's
WorkController on that app and its thread pool, the broker transport of tasks/broker.py
reading the test's real Redis, the tasks' strategy and request classes, the remote control
(revokes), the worker_ready and worker_shutdown handlers of tasks/jobs.py (the EC2 runtime,
the lost-message repair, the fleet-rate check), and the jobs calling the emulator over HTTP.
It is not eager mode: messages travel through Redis and are consumed, acked and redelivered
as a worker process's are.

What it saves is the process: a `mirrorq worker` pays Python's start, the imports of Celery
and botocore and botocore's EC2 model, seconds of CPU, at every start, and a warm shutdown at
every stop; here the imports are paid once per test process. Tests whose subject is a process
(SIGKILL, restarts, several workers side by side, the worker's CLI flags, what a process
logs) keep `start_worker`.

One at a time per test process: a worker's runtime, repairer and settings are its process's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from celery import signals
from celery.result import _set_task_join_will_block  # type: ignore[attr-defined]
from celery.worker import WorkController
from celery.worker import state as worker_state

from mirrorq.processes import LOG_DIR

READY_TIMEOUT_S = 30.0
POLL_S = 0.2  # the longest an idle worker's BRPOP blocks (kombu's default: 1 s)
STOP_TIMEOUT_S = 60.0
SCOPED_ENV = ("AWS_", "MIRRORQ_")  # what a worker reads from its environment
state: Any = worker_state  # Celery's process-wide worker state (its stubs type it loosely)


class _Controller(WorkController):
    """Celery's worker as `celery worker` runs it (celery.apps.worker.Worker) but for what
    only a program's main thread may do: signal handlers, the banner, logging setup."""

    def __init__(self, *, hostname: str, **kwargs: Any) -> None:
        self.ready = threading.Event()
        self.node = hostname
        super().__init__(hostname=hostname, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        try:
            signals.worker_ready.send(sender=consumer)
            logging.getLogger("celery.apps.worker").info("%s ready.", self.node)
        finally:
            self.ready.set()


class _NotTheTest(logging.Filter):
    """The worker's log lines: none of the threads the test had before the worker started
    (its own, an emulator's reader, a fault proxy's server)."""

    def __init__(self) -> None:
        super().__init__()
        self.test_threads = {(thread.ident, thread.name) for thread in threading.enumerate()}

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.thread, record.threadName) not in self.test_threads


class InProcessWorker:
    """A mirrorq worker on threads of this process, started with the environment a `mirrorq
    worker` would be given; `log_path` holds what it logs, as a WorkerProcess's does."""

    _current: InProcessWorker | None = None

    def __init__(self, name: str, env: dict[str, str], log_dir: Path = LOG_DIR) -> None:
        self.name = name
        self.env = {k: v for k, v in env.items() if k.startswith(SCOPED_ENV)}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:8]}.log"
        self._handler: logging.Handler | None = None
        self._thread: threading.Thread | None = None
        self._controller: _Controller | None = None
        self._saved_env: dict[str, str] | None = None
        self._app_conf: dict[str, Any] | None = None

    def start(self) -> InProcessWorker:
        assert InProcessWorker._current is None, "one in-process worker at a time"
        InProcessWorker._current = self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from worker.redaction import install

        install()  # as `mirrorq`'s CLI does in every process
        self._set_environment()
        app = _app()
        self._app_conf = dict(app.conf.changes or {})  # the test process's, put back at stop
        _configure(app, _worker_conf())
        self._settings_read()
        self._log_to_file(app)
        _fresh_state()
        controller = _Controller(
            app=app,
            hostname=f"{self.name}@{socket.gethostname()}",
            loglevel=logging.INFO,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=None,
        )
        self._controller = controller
        self._thread = threading.Thread(target=controller.start, name=self.name, daemon=True)
        self._thread.start()
        if not controller.ready.wait(READY_TIMEOUT_S):
            raise TimeoutError(f"{self.name} not ready after {READY_TIMEOUT_S}s: {self.log_path}")
        # Celery's worker marks its process as one where waiting on a result would block a
        # task; the test's own thread is no task (celery.contrib.testing does the same).
        _set_task_join_will_block(False)

    def alive(self) -> bool:
        """Still consuming: Celery stops a worker on an error it cannot recover from, which
        ends a worker process, and this thread."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """A warm shutdown, as SIGTERM gives a worker process: running messages finish, the
        runtime closes (tasks/jobs.py's worker_shutdown handler) and the repair stops."""
        if self._thread is not None:
            state.should_stop = 0  # what Celery's SIGTERM handler sets
            self._thread.join(STOP_TIMEOUT_S)
            # Still running: it stays this process's worker, and no other starts beside it.
            assert not self._thread.is_alive(), f"{self.name} did not stop: {self.log_path}"
            state.should_stop = None
            self._thread = None
        try:
            for thread in threading.enumerate():  # the repair thread ends within its wait
                if thread.name == "mirrorq-repair":
                    thread.join(STOP_TIMEOUT_S)
        finally:
            if self._handler is not None:
                logging.getLogger().removeHandler(self._handler)
                self._handler.close()
                self._handler = None
            self._restore_environment()
            if self._app_conf is not None:
                _configure(_app(), self._app_conf)
                self._app_conf = None
            if InProcessWorker._current is self:
                InProcessWorker._current = None

    def _set_environment(self) -> None:
        """The worker's environment in place of the test's: its settings are read from it
        (config.get_settings, kept for the process), botocore reads AWS_* whenever it makes a
        client (a role's, at its first job), so those stay until the worker stops."""
        self._saved_env = {k: v for k, v in os.environ.items() if k.startswith(SCOPED_ENV)}
        for name in self._saved_env:
            del os.environ[name]
        os.environ.update(self.env)
        _forget_settings()

    def _settings_read(self) -> None:
        """The test's own MIRRORQ_* back: a Settings the test makes must not take the
        worker's (the worker keeps what get_settings read)."""
        for name in [k for k in os.environ if k.startswith("MIRRORQ_")]:
            del os.environ[name]
        os.environ.update(
            {k: v for k, v in (self._saved_env or {}).items() if k.startswith("MIRRORQ_")}
        )

    def _restore_environment(self) -> None:
        if self._saved_env is None:
            return
        for name in [k for k in os.environ if k.startswith(SCOPED_ENV)]:
            del os.environ[name]
        os.environ.update(self._saved_env)
        self._saved_env = None
        _forget_settings()

    def _log_to_file(self, app: Any) -> None:
        """What the worker logs, to its file, in Celery's format. (Celery's logging setup
        would take the root logger over, pytest's handlers with it: its signal is sent.)"""
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter(app.conf.worker_log_format))
        handler.addFilter(_NotTheTest())
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        self._handler = handler
        signals.after_setup_logger.send(
            sender=None, logger=root, loglevel=logging.INFO, logfile=None, format="", colorize=False
        )


def _fresh_state() -> None:
    """Celery's worker state as a new process has it: no stop asked, no id revoked, no
    message held or counted (an earlier worker of this process may have left some)."""
    state.should_stop = None
    state.should_terminate = None
    for held in (
        state.requests,
        state.reserved_requests,
        state.active_requests,
        state.scheduled_requests,
        state.successful_requests,
        state.total_count,
        state.revoked,
        state.revoked_stamps,
    ):
        held.clear()
    state.all_total_count[0] = 0


def _forget_settings() -> None:
    """What the process read from its environment and made from it: read again at next use."""
    import tasks.jobs
    import tasks.messages
    from config import get_settings

    get_settings.cache_clear()
    tasks.messages.store.cache_clear()
    tasks.jobs._producer.cache_clear()


def _app() -> Any:
    """tasks.jobs's app, its tasks registered on it (typed loosely: Celery's private parts
    are reset below)."""
    import tasks.jobs

    return tasks.jobs.app


def _configure(app: Any, conf: dict[str, Any]) -> None:
    """The app as if made with `conf`: pools, producers and backends made under an earlier
    configuration are looked up again (kombu keeps one pool per broker URL, still open)."""
    app.conf.update(conf)
    app._pool = None
    app.__dict__.pop("amqp", None)
    app._backend_cache = None
    app._local = threading.local()


def _worker_conf() -> dict[str, Any]:
    """The configuration a worker process started with this environment gives its app."""
    from config import get_settings
    from tasks.app import create_app

    fresh = create_app(get_settings())
    conf = dict(fresh.conf.changes or {})
    fresh.close()
    # But one thing: a warm shutdown reads the answer of the BRPOP in flight, which Redis gives
    # after the BRPOP's timeout (kombu's polling_interval, a second): a fifth of that here.
    conf["broker_transport_options"] = {
        **conf["broker_transport_options"],
        "polling_interval": POLL_S,
    }
    return conf
