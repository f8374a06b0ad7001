"""Many accounts and Regions: one fleet riding every account-Region's limit at once.

The emulator throttles CreateTrafficMirrorSession in each (account, Region) on its own token
bucket; the fleet keeps one bucket per (account, Region, action) in Redis. With 3 accounts x
2 Regions at 20/s each, a fleet that rides each bucket as `bench.limits` rides one should
create at 6 x 20/s, and one slow account must not slow the others: the buckets are
independent on both sides, and so should be the fleet's waiting.

A bucket's rate is measured as `bench.limits` measures one: "theoretical" is the burst at
once, then the refill rate, i.e. (jobs - burst) / rate seconds, against the seconds from the
batch's submission until that account-Region's last create succeeded (read from the
emulator's per-scope counters, `/_mirrorq/stats` `scopes`, polled every 50 ms).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import redis

from bench.common import REDIS_URL, flush, producer, workers
from emulator.org_lab import account_client, control, seed_org_lab
from mirrorq.processes import EmulatorProcess
from tasks.contract import parse_placement, parse_request
from worker.ratelimit import CREATE_ACTION, set_bucket_config

EC2_RATE, EC2_BURST = 20.0, 50  # the emulator's bucket in every account-Region
FLEET_BURST = 40  # the fleet's burst per bucket, below EC2's so a refill never overshoots
POLL_S = 0.05
Scope = tuple[str, str]  # (account, Region)


def _scope_key(scope: Scope) -> str:
    return f"{scope[0]}/{scope[1]}"


def _create_calls(url: str) -> dict[str, dict[str, int]]:
    """CreateTrafficMirrorSession's outcomes per "ACCOUNT/REGION", from the emulator."""
    scopes: dict[str, dict[str, dict[str, int]]] = control(url, "stats")["scopes"]
    return {key: actions.get(CREATE_ACTION, {}) for key, actions in scopes.items()}


def _duplicates(url: str, scopes: list[Scope]) -> tuple[int, int]:
    """Sessions in all the scopes, and those beyond the first on an ENI."""
    sessions = duplicates = 0
    for account, region in scopes:
        pages = (
            account_client(url, account, region)
            .get_paginator("describe_traffic_mirror_sessions")
            .paginate()
        )
        per_eni = Counter(
            s["NetworkInterfaceId"] for p in pages for s in p["TrafficMirrorSessions"]
        )
        sessions += sum(per_eni.values())
        duplicates += sum(n - 1 for n in per_eni.values())
    return sessions, duplicates


def ride_accounts(
    emulator: EmulatorProcess,
    accounts: int,
    regions: tuple[str, ...],
    per_scope: int,
    slow: dict[str, float] | None = None,
) -> dict[str, Any]:
    """4 workers creating `per_scope` sessions in each of `accounts` x `regions`, submitted
    as one batch with each job's role_arn and region; the emulator and the fleet at
    EC2_RATE in every account-Region but the accounts of `slow` (account -> rate), which
    both throttle at their own rate in each of their Regions."""
    slow = slow or {}
    emulator.reset()
    flush()
    lab = seed_org_lab(emulator.url, accounts=accounts, regions=regions, enis=per_scope)
    target_of = {r: lab["security"]["regions"][r]["target_ids"][0] for r in regions}
    requests, placements, rates = [], [], {}
    for account, entry in lab["accounts"].items():
        for region, seeded in entry["regions"].items():
            rates[(account, region)] = slow.get(account, EC2_RATE)
            for i, eni in enumerate(seeded["eni_ids"]):
                requests.append(
                    parse_request(
                        {
                            "NetworkInterfaceId": eni,
                            "TrafficMirrorTargetId": target_of[region],
                            "TrafficMirrorFilterId": seeded["filter_id"],
                            "SessionNumber": 1,
                            "ClientToken": f"bench-{account}-{region}-{i}",
                        }
                    )
                )
                placements.append(parse_placement(region=region, role_arn=entry["role_arn"]))
    control(emulator.url, "faults", {"throttle_rate": EC2_RATE, "throttle_burst": EC2_BURST})
    for account, rate in slow.items():
        control(emulator.url, "faults", {"account": account, "throttle_rate": rate})
    client = redis.Redis.from_url(REDIS_URL)
    for (account, region), rate in rates.items():
        set_bucket_config(client, account, region, CREATE_ACTION, rate=rate, burst=FLEET_BURST)
    finished: dict[Scope, float] = {}
    first: dict[Scope, float] = {}  # the first create that succeeded: the fleet's start-up
    with workers(
        emulator,
        4,
        MIRRORQ_EC2_RATE=str(EC2_RATE),
        MIRRORQ_EC2_BURST=str(FLEET_BURST),
        MIRRORQ_JOB_DEADLINE_S="600",
        MIRRORQ_VISIBILITY_TIMEOUT_S="900",
    ):
        p = producer()
        started = time.monotonic()
        batch_id = p.submit_batch(requests, placements=placements)
        submitted_s = time.monotonic() - started
        while True:
            now = time.monotonic() - started
            _progress(_create_calls(emulator.url), per_scope, now, first, finished, rates)
            status = p.batch_status(batch_id) or {}
            if status.get("finished_at"):
                break
            if now > 900:
                raise TimeoutError(f"batch unfinished after 900 s: {status}")
            time.sleep(POLL_S)
        elapsed = time.monotonic() - started
    calls = _create_calls(emulator.url)
    sessions, duplicates = _duplicates(emulator.url, list(rates))
    per_bucket = {}
    for scope, rate in rates.items():
        outcomes = calls.get(_scope_key(scope), {})
        seconds = finished.get(scope)
        theoretical_s = max(per_scope - EC2_BURST, 0) / rate
        per_bucket[_scope_key(scope)] = {
            "ec2_rate": rate,
            "seconds": seconds,
            "first_create_s": first.get(scope),
            "steady_rate": (per_scope - EC2_BURST) / seconds if seconds else None,
            "ratio_to_theoretical": theoretical_s / seconds if seconds else None,
            "throttled_fraction": _throttled(outcomes),
            "calls": outcomes,
        }
    total = Counter[str]()
    for outcomes in calls.values():
        total.update(outcomes)
    created = status["counts"].get("created", 0)
    jobs = len(requests)
    # Every bucket's burst is free and the buckets refill side by side: at even rates the
    # whole batch takes one bucket's theoretical seconds, at the sum of their rates.
    theoretical_s = max(per_scope - EC2_BURST, 0) / min(rates.values())
    even = len(set(rates.values())) == 1
    return {
        "accounts": accounts,
        "regions": list(regions),
        "jobs": jobs,
        "per_scope": per_scope,
        "ec2_burst": EC2_BURST,
        "fleet_burst": FLEET_BURST,
        "slow_accounts": slow,
        "seconds": elapsed,
        "submitted_s": submitted_s,
        "achieved_rate": created / elapsed,
        "theoretical_rate": sum(rates.values()),
        "steady_rate": (created - EC2_BURST * len(rates)) / elapsed,
        "ratio_to_theoretical": theoretical_s / elapsed if even and created == jobs else None,
        "throttled_fraction": _throttled(dict(total)),
        "calls": dict(total),
        "outcome": status["counts"],
        "sessions": sessions,
        "duplicates": duplicates,
        "buckets": per_bucket,
    }


def _progress(
    calls: dict[str, dict[str, int]],
    per_scope: int,
    now: float,
    first: dict[Scope, float],
    finished: dict[Scope, float],
    scopes: Iterable[Scope],
) -> None:
    """Note when each scope's first create succeeded, and when its last did."""
    for scope in scopes:
        ok = calls.get(_scope_key(scope), {}).get("ok", 0)
        if scope not in first and ok:
            first[scope] = now
        if scope not in finished and ok >= per_scope:
            finished[scope] = now


def _throttled(calls: dict[str, int]) -> float:
    n = sum(calls.values())
    return calls.get("RequestLimitExceeded", 0) / n if n else 0.0


def bench_accounts(emulator: EmulatorProcess, per_scope: int = 300) -> dict[str, Any]:
    """The three cases side by side: one account-Region (the limits bench's ride, through a
    role), 3 accounts x 2 Regions at 20/s each, and the same with one account at 5/s."""
    regions = ("us-east-1", "eu-west-1")
    one = ride_accounts(emulator, 1, regions[:1], per_scope)
    six = ride_accounts(emulator, 3, regions, per_scope)
    slow_account = next(iter(six["buckets"])).split("/")[0]
    slowed = ride_accounts(emulator, 3, regions, per_scope, slow={slow_account: EC2_RATE / 4})
    return {"single_bucket": one, "six_buckets": six, "one_account_quarter_rate": slowed}
