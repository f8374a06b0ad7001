"""`mirrorq demo --events`: instances launched in the emulator, mirrored by the listener within
seconds through a two-rule policy; then what was made, by rule, and how long it took."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from emulator.lab import sessions
from emulator.zoned_lab import (
    ZonedLab,
    expected_mirrors,
    launch_instance,
    policy_text,
    seed_zoned_lab,
)
from mirrorq.demo import worker_env
from mirrorq.processes import EmulatorProcess, ListenerProcess, WorkerProcess

Mirror = tuple[str, str, str]  # ENI, target, filter


def _made(endpoint_url: str) -> Counter[Mirror]:
    return Counter(
        (s["NetworkInterfaceId"], s["TrafficMirrorTargetId"], s["TrafficMirrorFilterId"])
        for s in sessions(endpoint_url)
    )


def run_events_demo(instances: int, timeout_s: float = 120.0) -> int:
    console = Console()
    console.print(
        f"[bold]mirrorq demo --events[/]: {instances} instances launched in the emulator; "
        "EC2's EventBridge events go to SQS, a listener turns them into jobs through a policy"
    )
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess("--events-queue", "events") as em:
        lab = seed_zoned_lab(em.url)
        policy = Path(tmp) / "policy.toml"
        policy.write_text(policy_text(lab))
        console.print(f"policy ({policy}):")
        console.print(policy_text(lab), markup=False, highlight=False)  # `[[rules]]` as written
        env = worker_env(em.url)
        queue = em.ready["events_queue_url"]
        with (
            WorkerProcess("demo-events-worker", env) as worker,
            ListenerProcess(
                "demo-listener", env, "--sqs-queue-url", queue, "--policy", str(policy)
            ) as listener,
        ):
            worker.wait_ready()
            listener.wait_ready()
            console.print(
                f"worker and listener ready (logs: {worker.log_path}, {listener.log_path})"
            )
            launched: dict[Mirror, float] = {}
            enis: list[str] = []

            def fleet() -> None:  # instances come up while the sessions are watched for
                for i in range(instances):
                    made = launch_instance(em.url, lab, i)
                    enis.extend(made)
                    now = time.monotonic()
                    launched.update(dict.fromkeys(expected_mirrors(lab, made), now))

            launching = threading.Thread(target=fleet, name="fleet")
            launching.start()
            seen: dict[Mirror, float] = {}
            deadline = time.monotonic() + timeout_s
            while (launching.is_alive() or set(seen) < set(launched)) and (
                time.monotonic() < deadline
            ):
                now = time.monotonic()
                for mirror in _made(em.url):
                    seen.setdefault(mirror, now)
                time.sleep(0.05)
            launching.join()
            wanted = set(launched)
        final = _made(em.url)
    return _report(console, instances, len(enis), lab, wanted, final, launched, seen)


def _report(
    console: Console,
    instances: int,
    enis: int,
    lab: ZonedLab,
    wanted: set[Mirror],
    final: Counter[Mirror],
    launched: dict[Mirror, float],
    seen: dict[Mirror, float],
) -> int:
    latencies = sorted(seen[m] - launched[m] for m in wanted if m in seen)
    by_filter = Counter(f for (_, _, f) in final)
    table = Table(title="results")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("instances launched", str(instances))
    table.add_row("ENIs (1 to 3 an instance)", str(enis))
    table.add_row("mirrors the policy asks for", str(len(wanted)))
    table.add_row("sessions made by rule prod-web (same-az)", str(by_filter[lab["f_web"]]))
    table.add_row("sessions made by rule db", str(by_filter[lab["f_db"]]))
    table.add_row("asked for but missing", str(len(wanted - set(final))))
    table.add_row("made but not asked for", str(len(set(final) - wanted)))
    table.add_row("duplicate sessions", str(sum(n - 1 for n in final.values())))
    if latencies:
        table.add_row("launch → session, median", f"{statistics.median(latencies) * 1000:.0f} ms")
        table.add_row("launch → session, slowest", f"{latencies[-1] * 1000:.0f} ms")
    console.print(table)
    ok = set(final) == wanted and max(final.values(), default=1) == 1
    console.print(
        "[green]every matching ENI mirrored once per rule, to the target in its zone[/]"
        if ok
        else "[red]the sessions do not match the policy[/]"
    )
    return 0 if ok else 1
