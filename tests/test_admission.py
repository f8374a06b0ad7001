"""Admission per bucket: a slow account's jobs never hold the workers its neighbours need.

Real `mirrorq worker` processes, real Redis, the emulator over HTTP. One worker of small
concurrency (two messages at a time) gets a batch over two accounts, one of them limited to a
rate far below the other's. Without admission the worker takes the slow account's messages
in turn with the fast one's and holds each until its slow bucket serves it, so the fast
account finishes only as late as the slow one; with it, a worker holds only the slow jobs
their bucket serves within 2 s, the others wait for their turn without a thread, and the
fast account is done long before.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import redis

from emulator.org_lab import control, role_arn, seed_org_lab, sessions_in
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.contract import parse_placement, parse_request
from tasks.producer import Producer
from tasks.records import JobResult
from tests.helpers import wait_all
from worker.ratelimit import CREATE_ACTION, set_bucket_config

REGION = "us-east-1"
SLOW_RATE, FAST_RATE = 2.0, 200.0


def _finished(record: JobResult) -> float:
    assert record["finished_at"] is not None
    return datetime.fromisoformat(record["finished_at"]).timestamp()


def test_a_slow_accounts_jobs_wait_for_their_turn_without_holding_the_worker(
    emulator: EmulatorProcess,
    redis_url: str,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_org_lab(emulator.url, accounts=2, regions=(REGION,), enis=48)
    slow, fast = list(lab["accounts"])
    target = lab["security"]["regions"][REGION]["target_ids"][0]
    client = redis.Redis.from_url(redis_url)
    set_bucket_config(client, slow, REGION, CREATE_ACTION, rate=SLOW_RATE, burst=1)
    set_bucket_config(client, fast, REGION, CREATE_ACTION, rate=FAST_RATE, burst=50)
    control(emulator.url, "faults", {"account": slow, "throttle_rate": SLOW_RATE})
    requests, placements, account_of = [], [], []
    for account in (slow, fast):
        place = lab["accounts"][account]["regions"][REGION]
        n = 32 if account == slow else 48  # 16 s of the slow bucket, a moment of the fast
        for eni in place["eni_ids"][:n]:
            requests.append(
                parse_request(
                    {
                        "NetworkInterfaceId": eni,
                        "TrafficMirrorTargetId": target,
                        "TrafficMirrorFilterId": place["filter_id"],
                        "SessionNumber": 1,
                    }
                )
            )
            placements.append(parse_placement(region=REGION, role_arn=role_arn(account)))
            account_of.append(account)
    # Two messages of 8 jobs at a time: two held slow messages would hold the whole worker.
    start_worker(MIRRORQ_CONCURRENCY="16", MIRRORQ_JOBS_PER_MESSAGE="8")
    batch_id = producer.submit_batch(requests, placements=placements)
    job_ids = [j for chunk in producer.store.batches.job_ids(batch_id) for j in chunk]
    records = wait_all(producer, job_ids, timeout=120)
    assert Counter(r["status"] for r in records) == {"created": 80}, [r["error"] for r in records]
    assert all(r["attempts"] == 1 for r in records)  # waiting for a turn is no attempt
    by_account: dict[str, list[float]] = {slow: [], fast: []}
    for record, account in zip(records, account_of, strict=True):
        by_account[account].append(_finished(record))
    # The fast account is done before half the slow one's jobs are (they need 16 s at 2/s).
    assert max(by_account[fast]) < statistics.median(by_account[slow]), by_account
    for account, n in ((slow, 32), (fast, 48)):
        place = lab["accounts"][account]["regions"][REGION]
        assert sessions_in(emulator.url, account, REGION) == dict.fromkeys(place["eni_ids"][:n], 1)
