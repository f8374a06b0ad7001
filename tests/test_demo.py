"""The README's first command, as a user runs it: `mirrorq demo` and `mirrorq demo --events`,
each starting its own emulator, worker (and listener) against the tests' Redis."""

from __future__ import annotations

import os
import subprocess

from mirrorq.processes import MIRRORQ


def demo(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MIRRORQ_"))}
    return subprocess.run(
        [*MIRRORQ, "demo", *args],
        env={**env, "MIRRORQ_BROKER_URL": redis_url, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )


def test_the_demo_runs_every_job_to_one_session_under_faults(redis_url: str) -> None:
    done = demo(redis_url, "--jobs", "40")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every job created exactly one session" in done.stdout
    assert "│ jobs created                " in done.stdout
    assert "│ duplicate sessions" in done.stdout


def test_the_events_demo_mirrors_what_its_policy_asks_and_shows_the_policy(
    redis_url: str,
) -> None:
    done = demo(redis_url, "--events", "--instances", "6")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every matching ENI mirrored once per rule" in done.stdout
    # Found in a run: rich took the policy's `[[rules]]` for markup and printed `[]`.
    assert done.stdout.count("[[rules]]") == 2
