"""`mirrorq reconcile --every` over a slow rate: passes overlap queued jobs. A pass submits no
job for a mirror a queued or running job will make (it counts it `pending`), and a pass that
creates nothing stores nothing. Real Redis, a real worker, a real reconcile process, the
emulator over HTTP.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from emulator.lab import seed_lab
from mirrorq.planning import Outcome, Pending, PlannedJob, Target, plan
from mirrorq.processes import EmulatorProcess, ServiceProcess, WorkerProcess
from mirrorq.rules import Choose, Rule, Selectors
from tasks import keys
from tasks.contract import parse_request
from tasks.producer import Producer
from tests.helpers import producer_for, sessions, wait_until
from worker.repair import repair_lost_jobs

PASS_LINE = re.compile(r"pass (\d+): (.*)")


class ReconcileProcess(ServiceProcess):
    """A real `mirrorq reconcile --every` (its policy and period are its arguments)."""

    command = ("reconcile",)
    ready_marker = b"pass 1:"

    def passes(self) -> dict[int, str]:
        """Each pass's summary line, by number."""
        found = PASS_LINE.findall(self.log_path.read_text())
        return {int(n): line for n, line in found}


def pass_keys_memory(client: redis.Redis) -> tuple[int, int]:
    """What the passes hold in Redis: (bytes by MEMORY USAGE, number of keys), over every
    key of a batch, of reconcile's own, and the gaps' claims."""
    names = [
        *client.scan_iter("mirrorq:batch:*"),
        *client.scan_iter("mirrorq:reconcile*"),
        *client.scan_iter("mirrorq:gap-claim:*"),
    ]
    return sum(int(client.memory_usage(n) or 0) for n in names), len(names)


def records(client: redis.Redis) -> list[dict[str, Any]]:
    names = list(client.scan_iter("celery-task-meta-*"))
    return [json.loads(v)["result"] for v in client.mget(names) if v] if names else []


def test_passes_over_queued_jobs_submit_each_gap_once_and_empty_passes_store_nothing(
    emulator: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 200)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "[[rules]]\n"
        'name = "all"\n'
        f'vpc = ["{lab["vpc_id"]}"]\n'
        f'target = "{lab["target_ids"]["nlb"]}"\n'
        f'filter = "{lab["filter_id"]}"\n'
    )
    # 20 creates a second: the 200 take about 10 s, so some four passes find jobs queued.
    start_worker(MIRRORQ_EC2_RATE="20", MIRRORQ_EC2_BURST="1")
    client = redis.Redis.from_url(redis_url)
    before = pass_keys_memory(client)
    reconcile = ReconcileProcess("reconcile", env, "--policy", str(policy), "--every", "2s")
    try:
        reconcile.wait_ready(timeout=60)
        wait_until(
            lambda: len(sessions(emulator.url)) >= 200,
            timeout=120,
            interval=0.5,
            what="200 sessions",
        )
        # A pass that began before the last session was made may still submit; the ones that
        # begin after it find nothing to do.
        last = max(reconcile.passes())
        wait_until(lambda: last + 2 in reconcile.passes(), timeout=30, what="another pass")
        after_busy = pass_keys_memory(client)
        wait_until(lambda: last + 4 in reconcile.passes(), timeout=30, what="two more passes")
        after_idle = pass_keys_memory(client)
        assert reconcile.proc.poll() is None, "reconcile stopped"
    finally:
        reconcile.stop()
    wait_until(lambda: client.zcard(keys.PENDING) == 0, timeout=120, what="every job to finish")

    lines = reconcile.passes()
    made = records(client)
    outcomes = Counter(r["status"] if r["status"] != "failed" else r["error"]["code"] for r in made)
    print(f"{len(lines)} passes; {len(made)} jobs: {dict(outcomes)}")
    print(f"pass keys: before {before}, after the busy passes {after_busy}, idle {after_idle}")
    for n in sorted(lines):
        print(f"  pass {n}: {lines[n]}")

    mirrored = Counter(s["NetworkInterfaceId"] for s in sessions(emulator.url))
    assert sorted(mirrored) == sorted(lab["eni_ids"])
    assert set(mirrored.values()) == {1}
    jobs_per_eni = Counter(r["request"]["NetworkInterfaceId"] for r in made)
    assert max(jobs_per_eni.values()) == 1, f"a gap got {max(jobs_per_eni.values())} jobs"
    assert len(made) == 200
    assert outcomes == {"created": 200}
    # Some pass found the queued jobs and counted them pending, not to create.
    assert any("pending" in line for line in lines.values())
    # The passes after the last session stored nothing: no batch, no plan.
    assert all("batch none" in lines[n] for n in range(last + 2, last + 5)), lines
    assert after_idle == after_busy
    batch_records = [
        n
        for n in client.scan_iter("mirrorq:batch:*")
        if client.type(n) == b"hash" and not n.decode().endswith((":counts", ":statuses"))
    ]
    totals = [int(client.hget(n, "total") or 0) for n in batch_records]
    assert all(totals), f"a batch of no jobs was stored: {totals}"
    assert sum(totals) == 200
    # What a pass's batch keeps of its plan: counts, not the 200 ENIs.
    stored = json.loads(client.hget(batch_records[0], "plan") or "{}")
    assert "skipped" not in stored
    assert stored["counts"]["create"] >= 1


# Planning counts what pending jobs will make ---------------------------------------------------


def eni(n: int) -> dict[str, Any]:
    return {"NetworkInterfaceId": f"eni-{n}", "InterfaceType": "interface"}


def two_target_rule(name: str = "r", targets: tuple[str, ...] = ("tmt-a", "tmt-b")) -> Rule:
    return Rule(
        name=name,
        selectors=Selectors(eni_ids=tuple(f"eni-{n}" for n in range(5))),
        targets=targets,
        filter_id="tmf-1",
        choose=Choose.LEAST_LOADED,
    )


TARGETS = {t: Target(t) for t in ("tmt-a", "tmt-b", "tmt-c")}


def test_a_mirror_a_pending_job_will_make_is_pending_not_to_create() -> None:
    rule = two_target_rule()
    pending = [
        Pending("job-0", "eni-0", "tmt-b", "tmf-1"),  # to another of the rule's targets
        Pending("job-1", "eni-1", "tmt-a", "tmf-2"),  # another filter: not this mirror
        Pending("job-2", "eni-2", "tmt-c", "tmf-1", ("tmt-a",)),  # makes tmt-c's, not ours
        Pending("job-3", "eni-3", "tmt-a", "tmf-1"),  # will end AlreadyMirrored: one exists
    ]
    existing = [
        {
            "NetworkInterfaceId": "eni-3",
            "TrafficMirrorTargetId": "tmt-b",
            "TrafficMirrorFilterId": "tmf-1",
            "TrafficMirrorSessionId": "tms-3",
        }
    ]
    result = plan([rule], [eni(n) for n in range(4)], existing, TARGETS, set(), pending)
    outcomes = {i.eni_id: (i.outcome, i.detail) for i in result.items}
    assert outcomes["eni-0"] == (Outcome.PENDING, "job-0")
    assert outcomes["eni-1"][0] is Outcome.CREATE
    assert outcomes["eni-2"][0] is Outcome.CREATE
    assert outcomes["eni-3"] == (Outcome.ALREADY_MIRRORED, "tms-3")
    assert result.counts() == {"create": 2, "already_mirrored": 1, "pending": 1}


def test_pending_jobs_count_toward_an_enis_three_sessions_and_a_targets_load() -> None:
    pending = [Pending(f"job-{t}", "eni-0", t, "tmf-9") for t in ("tmt-a", "tmt-b", "tmt-c")]
    pending.append(Pending("job-x", "eni-1", "tmt-a", "tmf-9"))
    result = plan([two_target_rule()], [eni(0), eni(1)], [], TARGETS, set(), pending)
    by_eni = {i.eni_id: i for i in result.items}
    assert by_eni["eni-0"].outcome is Outcome.SESSION_LIMIT
    # least-loaded: tmt-a has two pending sessions, tmt-b one.
    assert by_eni["eni-1"].target_id == "tmt-b"


def test_a_pending_record_says_what_it_will_make_and_a_dry_run_makes_nothing() -> None:
    request = {
        "NetworkInterfaceId": "eni-0",
        "TrafficMirrorTargetId": "tmt-a",
        "TrafficMirrorFilterId": "tmf-1",
    }
    record = {"job_id": "j", "request": request, "alternatives": ["tmt-b"]}
    assert Pending.of(record) == Pending("j", "eni-0", "tmt-a", "tmf-1", ("tmt-b",))
    assert Pending.of({**record, "request": {**request, "DryRun": True}}) is None
    assert Pending.of({"job_id": "k", "request": None}) is None
    assert Pending.of({"job_id": "k", "request": {"NetworkInterfaceId": "eni-0"}}) is None


def gap(name: str, target: str, targets: tuple[str, ...], dry_run: bool = False) -> str:
    request = {
        "NetworkInterfaceId": "eni-0",
        "TrafficMirrorTargetId": target,
        "TrafficMirrorFilterId": "tmf-1",
        **({"DryRun": True} if dry_run else {}),
    }
    return PlannedJob(request, name, [t for t in targets if t != target]).gap


def test_a_gap_is_one_whatever_target_was_chosen_or_rule_name_and_a_dry_run_is_another() -> None:
    both = ("tmt-a", "tmt-b")
    assert gap("r", "tmt-a", both) == gap("other-name", "tmt-b", both)
    assert gap("r", "tmt-a", both) != gap("r", "tmt-a", both, dry_run=True)
    assert gap("r", "tmt-a", ("tmt-a",)) != gap("r", "tmt-a", both)


def test_a_plan_stored_without_its_skipped_enis_keeps_its_counts() -> None:
    result = plan([two_target_rule()], [eni(n) for n in range(3)], [], TARGETS, {"eni-2"})
    assert result.summary()["skipped"] == {"is_mirror_target": ["eni-2"]}
    compact = result.summary(skipped=False)
    assert "skipped" not in compact
    assert compact["counts"] == {"create": 2, "is_mirror_target": 1}


def test_a_plan_holds_the_gaps_a_pending_job_claimed() -> None:
    result = plan([two_target_rule()], [eni(0), eni(1)], [], TARGETS, set())
    result.hold({("r", "eni-1"): "job-9"})
    assert [(i.eni_id, i.outcome, i.detail) for i in result.items][1] == (
        "eni-1",
        Outcome.PENDING,
        "job-9",
    )
    assert result.counts() == {"create": 1, "pending": 1}


# Claims on real Redis ------------------------------------------------------------------------


def test_racing_claimers_take_each_gap_once(redis_url: str) -> None:
    producers = [producer_for(redis_url) for _ in range(4)]
    gaps = [gap("r", "tmt-a", (f"tmt-{n}",)) for n in range(5)]
    taken: list[str] = []
    start = threading.Barrier(len(producers))

    def claim(producer: Producer) -> None:
        start.wait()
        for _ in range(20):
            taken.extend(c.job_id for c in producer.claim_gaps(gaps) if c.holder is None)

    threads = [threading.Thread(target=claim, args=(p,)) for p in producers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 5
    holders = [c.holder for c in producers[0].claim_gaps(gaps)]
    assert sorted(h for h in holders if h) == sorted(taken)


def test_a_gap_is_free_again_once_its_job_failed_or_was_never_recorded(
    emulator: EmulatorProcess,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    producer = producer_for(redis_url)
    lab = seed_lab(emulator.url, 1)
    # An ENI that does not exist: its job fails at once.
    job = PlannedJob(
        {
            "NetworkInterfaceId": "eni-0000000000000dead",
            "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
            "TrafficMirrorFilterId": lab["filter_id"],
            "SessionNumber": "auto",
        },
        "r",
        [],
    )
    (first,) = producer.claim_gaps([job.gap])
    assert first.holder is None
    producer.submit_batch([parse_request(job.request)], job_ids=[first.job_id])
    (while_queued,) = producer.claim_gaps([job.gap])
    assert while_queued.holder == first.job_id
    start_worker()
    assert producer.wait(first.job_id, timeout=60)["status"] == "failed"
    (after_failure,) = producer.claim_gaps([job.gap])
    assert after_failure.holder is None  # a later pass tries again

    # Claimed by a producer that died before it wrote the job: the repair drops the job from
    # the pending index (it has no record), and the gap is free.
    orphan_gap = job.gap + "-orphan"
    (orphan,) = producer.claim_gaps([orphan_gap])
    assert producer.claim_gaps([orphan_gap])[0].holder == orphan.job_id
    repair_lost_jobs(producer.redis, producer.store, producer.publish, -1, time.time())
    assert producer.claim_gaps([orphan_gap])[0].holder is None


def test_only_the_newest_finished_pass_batches_are_kept(redis_url: str) -> None:
    producer = producer_for(redis_url)
    batches = producer.store.batches
    request = parse_request(
        {
            "NetworkInterfaceId": "eni-0123456789abcdef0",
            "TrafficMirrorTargetId": "tmt-0123456789abcdef0",
            "TrafficMirrorFilterId": "tmf-0123456789abcdef0",
            "SessionNumber": "auto",
        }
    )
    running = producer.submit_batch([request])  # no worker: it stays queued
    batches.keep_latest(keys.RECONCILE_PASSES, running, 0.0, 3)
    ended = [producer.submit_batch([]) for _ in range(6)]
    for n, batch_id in enumerate(ended):
        batches.keep_latest(keys.RECONCILE_PASSES, batch_id, 1.0 + n, 3)
    stored: list[bytes] = producer.redis.zrange(keys.RECONCILE_PASSES, 0, -1)  # type: ignore[assignment]
    kept = [b.decode() for b in stored]
    assert kept == [running, *ended[-3:]]  # the unfinished one stays until it finishes
    assert all(batches.status(b) is None for b in ended[:-3])
    assert not any(producer.redis.exists(k) for b in ended[:-3] for k in keys.batch(b).all())
