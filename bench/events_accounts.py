"""Events from many accounts: a burst of 500 EventBridge events across 3 accounts x 2 Regions,
put into one SQS queue per Region, until each session exists in its own account-Region.

The emulator throttles every action in each (account, Region) on its own token bucket
(EC2_RATE/s, burst EC2_BURST); the fleet's buckets for CreateTrafficMirrorSession are set to
the same rate (worker.ratelimit.set_bucket_config) with a burst a little under EC2's. With
`per_scope` events in each of 6 account-Regions, the theoretical bound for the last session of
a place is (per_scope - burst) / rate seconds after the burst is put in (the smaller burst,
the fleet's): the creates of the 6 places refill side by side; it is set against the span from
the first event sent to the last session made (`span_s`; sending 500 events takes `put_s`).
An event's latency runs from its SQS send (wall clock) to its job's `finished_at` (the
worker writes it when EC2 has answered); p50 and p99 over the burst.

The listener plans each receive's events per place (intake.py): the Describe calls it spends
are read from the emulator's per-scope counters (`/_mirrorq/stats` `scopes`) around the
burst, and reported per event, by action.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from bench.common import REDIS_URL, flush, worker_env, workers
from emulator.event_shapes import eni_created
from emulator.lab import lab_sqs_client
from emulator.org_lab import control, role_arn, seed_org_lab
from mirrorq.processes import EmulatorProcess, ListenerProcess
from worker.ratelimit import CREATE_ACTION, set_bucket_config

REGIONS = ("us-east-1", "eu-west-1")
ACCOUNTS = 3
BURST = 500
EC2_RATE, EC2_BURST = 20.0, 50  # the emulator's buckets in every account-Region, per action
FLEET_BURST = 40  # the fleet's create burst per bucket, below EC2's
DESCRIBE_BURST = 40  # and its Describe bursts (default 90: over the emulator's 50)
WARM = 1  # events per place before timing: its role assumed, its targets read
POLL_S = 0.05


def _event(account: str, region: str, eni: str) -> dict[str, Any]:
    return eni_created(account, region, eni, user_agent="bench")


def _policy(lab: dict[str, Any]) -> str:
    targets = [lab["security"]["regions"][r]["target_ids"][0] for r in REGIONS]
    filters = [p["filter_id"] for s in lab["accounts"].values() for p in s["regions"].values()]
    entries = "".join(
        f'[[accounts]]\nname = "a{n}"\nrole_arn = "{role_arn(account)}"\n'
        f"regions = {json.dumps(list(REGIONS))}\n\n"
        for n, account in enumerate(lab["accounts"])
    )
    return (
        entries
        + f'[[rules]]\nname = "org"\ntag = ["mirrorq-lab=1"]\ntargets = {json.dumps(targets)}\n'
        + f'choose = "least-loaded"\nfilters = {json.dumps(filters)}\n'
    )


def _scope_calls(url: str) -> Counter[tuple[str, str]]:
    """Calls per action and outcome, every account-Region summed."""
    scopes: dict[str, dict[str, dict[str, int]]] = control(url, "stats")["scopes"]
    calls: Counter[tuple[str, str]] = Counter()
    for actions in scopes.values():
        for action, outcomes in actions.items():
            for outcome, n in outcomes.items():
                calls[(action, outcome)] += n
    return calls


def _created(url: str) -> int:
    scopes: dict[str, dict[str, dict[str, int]]] = control(url, "stats")["scopes"]
    return sum(a.get(CREATE_ACTION, {}).get("ok", 0) for a in scopes.values())


def _finished(client: redis.Redis) -> dict[str, float]:
    """Each created job's event id and when it finished (epoch seconds)."""
    keys = list(client.scan_iter("celery-task-meta-*", count=1000))
    found: dict[str, float] = {}
    for raw in client.mget(keys) if keys else []:
        if not raw:
            continue
        record = json.loads(raw)["result"]
        if record.get("status") == "created" and record.get("event_id"):
            found[record["event_id"]] = datetime.fromisoformat(record["finished_at"]).timestamp()
    return found


def _percentiles(values: list[float]) -> dict[str, float]:
    cut = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": cut[49] * 1000, "p99_ms": cut[98] * 1000, "max_ms": max(values) * 1000}


def _events(
    lab: dict[str, Any], burst: int
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The warm-up events by Region, and the burst: `burst` events, the places interleaved as
    a busy bus interleaves them."""
    warm: dict[str, list[dict[str, Any]]] = {r: [] for r in REGIONS}
    timed: list[list[dict[str, Any]]] = []
    for account, entry in lab["accounts"].items():
        for region, seeded in entry["regions"].items():
            enis = seeded["eni_ids"]
            warm[region] += [_event(account, region, e) for e in enis[:WARM]]
            timed.append([_event(account, region, e) for e in enis[WARM:]])
    mixed = [e for group in zip(*timed, strict=False) for e in group]
    return warm, mixed[:burst]


def _put(
    sqs: dict[str, Any], queues: dict[str, str], events: list[dict[str, Any]]
) -> dict[str, float]:
    """Send the events to their Region's queue, 10 a call, the Regions in turn; when each
    event was sent (epoch seconds)."""
    sent: dict[str, float] = {}
    chunks: dict[str, list[list[dict[str, Any]]]] = {}
    for region in REGIONS:
        mine = [e for e in events if e["region"] == region]
        chunks[region] = [mine[i : i + 10] for i in range(0, len(mine), 10)]
    while any(chunks.values()):
        for region, left in chunks.items():
            if left:
                chunk = left.pop(0)
                now = time.time()
                sqs[region].send_message_batch(
                    QueueUrl=queues[region],
                    Entries=[
                        {"Id": str(n), "MessageBody": json.dumps(e)} for n, e in enumerate(chunk)
                    ],
                )
                sent.update(dict.fromkeys((e["id"] for e in chunk), now))
    return sent


def bench_events_accounts(burst: int = BURST, pollers: int = 4) -> dict[str, Any]:
    flush()
    places = ACCOUNTS * len(REGIONS)
    per_scope = -(-burst // places)
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess() as emulator:
        url = emulator.url
        lab = seed_org_lab(url, accounts=ACCOUNTS, regions=REGIONS, enis=per_scope + WARM)
        policy = Path(tmp) / "policy.toml"
        policy.write_text(_policy(lab))
        queues = {
            r: lab_sqs_client(url, r).create_queue(QueueName="bench-events")["QueueUrl"]
            for r in REGIONS
        }
        client = redis.Redis.from_url(REDIS_URL)
        for account in lab["accounts"]:
            for region in REGIONS:
                set_bucket_config(
                    client, account, region, CREATE_ACTION, rate=EC2_RATE, burst=FLEET_BURST
                )
        limits = {
            "MIRRORQ_EC2_RATE": str(EC2_RATE),
            "MIRRORQ_EC2_BURST": str(FLEET_BURST),
            "MIRRORQ_EC2_DESCRIBE_RATE": str(EC2_RATE),
            "MIRRORQ_EC2_DESCRIBE_BURST": str(DESCRIBE_BURST),
        }
        env = worker_env(emulator, **limits)
        warm, mixed = _events(lab, burst)
        sqs = {r: lab_sqs_client(url, r) for r in REGIONS}

        with (
            workers(
                emulator,
                4,
                MIRRORQ_JOB_DEADLINE_S="600",
                MIRRORQ_VISIBILITY_TIMEOUT_S="900",
                **limits,
            ),
            ListenerProcess(
                "bench-listener-accounts",
                env,
                *(a for r, q in queues.items() for a in ("--sqs-queue-url", f"{r}={q}")),
                "--policy",
                str(policy),
                "--pollers",
                str(pollers),
            ) as listener,
        ):
            listener.wait_ready(60)
            _put(sqs, queues, [e for es in warm.values() for e in es])
            deadline = time.monotonic() + 60
            while _created(url) < places * WARM and time.monotonic() < deadline:
                time.sleep(POLL_S)
            control(url, "faults", {"throttle_rate": EC2_RATE, "throttle_burst": EC2_BURST})
            time.sleep(EC2_BURST / EC2_RATE)  # every bucket full again
            before = _scope_calls(url)
            started = time.time()
            sent = _put(sqs, queues, mixed)
            deadline = time.monotonic() + 600
            while _created(url) < places * WARM + len(mixed):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{_created(url)} sessions of {len(mixed)} after 600 s")
                time.sleep(POLL_S)
            elapsed = time.time() - started
            after = _scope_calls(url)
            log = listener.log_path.read_text()
        finished = _finished(client)
    latencies = sorted(finished[i] - t for i, t in sent.items() if i in finished)
    spent: Counter[str] = Counter()
    throttled: Counter[str] = Counter()
    for (action, outcome), n in (after - before).items():
        spent[action] += n
        if outcome == "RequestLimitExceeded":
            throttled[action] += n
    describes = {a: n for a, n in spent.items() if a.startswith("Describe")}
    per_place = Counter(e["account"] + "/" + e["region"] for e in mixed)
    # The tighter of the two buckets (the fleet's burst is under EC2's): its burst at once,
    # then its rate, in every place side by side.
    theoretical_s = max(max(per_place.values()) - min(EC2_BURST, FLEET_BURST), 0) / EC2_RATE
    span_s = max(finished[i] for i in sent if i in finished) - min(sent.values())
    put_s = max(sent.values()) - min(sent.values())
    # Workers read the sessions once a job for SessionNumber `auto`; the rest is the listener's.
    listener_describes = {
        a: n - (len(mixed) if a == "DescribeTrafficMirrorSessions" else 0)
        for a, n in describes.items()
    }
    flush()
    return {
        "events": len(mixed),
        "places": places,
        "per_place": dict(per_place),
        "pollers_per_queue": pollers,
        "ec2_rate": EC2_RATE,
        "ec2_burst": EC2_BURST,
        "fleet_burst": FLEET_BURST,
        "seconds": elapsed,
        "span_s": span_s,
        "put_s": put_s,
        "latency": _percentiles(latencies),
        "measured": len(latencies),
        "theoretical_last_s": theoretical_s,
        "ratio_to_theoretical": theoretical_s / span_s if span_s else None,
        "calls": dict(spent),
        "throttled_calls": dict(throttled),
        "describe_calls_per_event": {a: n / len(mixed) for a, n in sorted(describes.items())},
        "describe_calls_per_event_total": sum(describes.values()) / len(mixed),
        "listener_describe_calls_per_event": {
            a: n / len(mixed) for a, n in sorted(listener_describes.items())
        },
        "listener_throttled": "RequestLimitExceeded" in log,
    }
