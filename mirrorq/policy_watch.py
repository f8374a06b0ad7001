"""A policy file kept current under a long-running command (`reconcile --every`, `listen`,
`api --policy`): read again when it changes, the last good rules kept when it turns invalid.

Each pass, event batch or readiness probe asks for the rules in use (`current()`). That costs
one stat of the file; the file is read and hashed only when the stat differs from the last
read's, or when the last read came within a timestamp tick of the file's last change (a
file system that keeps mtime to the second, or a copy that sets it back, must not hide an
edit: the content decides), and parsed only when its content changed. SIGHUP (`hangup()`)
reads it at once, stat or not. A valid edit replaces the rules and is logged at INFO; an
invalid one (or a missing file) keeps the last good rules, is logged once at ERROR naming the
file, the rule and the field, and shows in `error` and in the `mirrorq_policy_*` metrics until
the file is good again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mirrorq.policy import read_policy
from mirrorq.rules import Rule
from tasks.errors import PolicyError

log = logging.getLogger("mirrorq.policy")
# Rules as a long-running command takes them: fixed, or asked for at each pass or batch.
RulesSource = Sequence[Rule] | Callable[[], Sequence[Rule]]
# Coarser than any file system's timestamps (FAT's 2 s): a change this close to a read may
# share its stat, so the content is read again until a read comes later than that.
RACY_NS = 2_000_000_000


def rules_now(source: RulesSource) -> Sequence[Rule]:
    """The rules to use for this pass or batch."""
    return source() if callable(source) else source


def _stamp(stat: os.stat_result) -> tuple[int, ...]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _file_error(path: Path, error: OSError) -> PolicyError:
    return PolicyError(str(path), [{"field": "(file)", "message": str(error)}])


def _count(rules: Sequence[Rule]) -> str:
    return f"{len(rules)} rule{'' if len(rules) == 1 else 's'}"


class WatchedPolicy:
    """A policy file and the rules in use from it; safe to ask from any thread."""

    def __init__(self, path: Path) -> None:
        """Read it now: PolicyError (naming the file, rule and field) if it is invalid."""
        self.path = path
        self._lock = threading.Lock()
        self._forced = False
        self._stamp: tuple[int, ...] | None
        self._stamp, self._read_at, content = self._snapshot()
        self._digest = hashlib.sha256(content).digest()
        self._rules: list[Rule] = read_policy(content, str(path))
        self.error: PolicyError | None = None  # the file's problem while the last good is in use
        self.loaded_at = time.time()  # when the rules in use were read

    @property
    def rules(self) -> list[Rule]:
        """The rules in use, as last read (no look at the file)."""
        return self._rules

    def current(self) -> list[Rule]:
        """The rules in use, after a look at the file (read again only if it changed)."""
        with self._lock:
            self._check()
            return self._rules

    def hangup(self) -> None:
        """SIGHUP: read the file now, whatever its stat says. Safe in a signal handler: the
        read runs in a thread of its own, so it never waits on a lock this thread holds."""
        self._forced = True
        threading.Thread(target=self.current, name="policy reload", daemon=True).start()

    def _check(self) -> None:
        try:
            stat = self.path.stat()
        except OSError as error:
            self._gone(_file_error(self.path, error))
            return
        trusted = _stamp(stat) == self._stamp and stat.st_mtime_ns < self._read_at - RACY_NS
        if trusted and not self._forced:
            return
        self._forced = False
        try:
            self._stamp, self._read_at, content = self._snapshot()
        except PolicyError as error:
            self._gone(error)
            return
        digest = hashlib.sha256(content).digest()
        if digest == self._digest:
            return
        self._digest = digest
        try:
            rules = read_policy(content, str(self.path))
        except PolicyError as error:
            self._refuse(error)
            return
        self._rules, self.error, self.loaded_at = rules, None, time.time()
        log.info("policy %s reloaded: %s", self.path, _count(rules))

    def _snapshot(self) -> tuple[tuple[int, ...], int, bytes]:
        """The file's stat, when it was read (taken first: a later change is never older),
        and its content; PolicyError naming the file if it cannot be read."""
        try:
            stamp = _stamp(self.path.stat())
            read_at = time.time_ns()
            return stamp, read_at, self.path.read_bytes()
        except OSError as error:
            raise _file_error(self.path, error) from None

    def _gone(self, error: PolicyError) -> None:
        """The file cannot be read: whatever appears there next is read and parsed."""
        self._stamp, self._digest = None, b""
        self._refuse(error)

    def _refuse(self, error: PolicyError) -> None:
        """Keep the last good rules; say so once per problem."""
        if self.error is not None and str(self.error) == str(error):
            return
        self.error = error
        log.error(
            "policy %s is invalid, the last good one (%s) stays in use: %s",
            self.path,
            _count(self._rules),
            "; ".join(f"{e['field']}: {e['message']}" for e in error.errors),
        )


class PolicyCollector(Collector):
    """`mirrorq_policy_valid` (0 while the file is invalid and the last good policy is in use),
    `mirrorq_policy_rules` and `mirrorq_policy_loaded_timestamp_seconds`; the file is looked
    at with each scrape."""

    def __init__(self, policy: WatchedPolicy) -> None:
        self._policy = policy

    def collect(self) -> Iterator[Metric]:
        rules = self._policy.current()
        labels, values = ["path"], [str(self._policy.path)]
        for name, meaning, value in (
            (
                "valid",
                "1 if the policy file is the policy in use, 0 if invalid (last good kept)",
                float(self._policy.error is None),
            ),
            ("rules", "Rules in the policy in use", float(len(rules))),
            ("loaded_timestamp_seconds", "When the policy in use was read", self._policy.loaded_at),
        ):
            gauge = GaugeMetricFamily(f"mirrorq_policy_{name}", meaning, labels=labels)
            gauge.add_metric(values, value)
            yield gauge


def serve_metrics(policy: WatchedPolicy, port: int) -> None:
    """The policy's metrics on 127.0.0.1:PORT (what an operator watches on `listen` and
    `reconcile --every`), as `mirrorq worker --metrics-port` serves its own."""
    from prometheus_client import REGISTRY, start_http_server

    REGISTRY.register(PolicyCollector(policy))
    start_http_server(port, addr="127.0.0.1")
