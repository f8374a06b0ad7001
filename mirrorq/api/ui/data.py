"""What the dashboard shows, read from Redis (and the coverage source) and shaped for its
templates: batches with their progress, the fleet's samples over the last minutes, coverage.
Reads are blocking Redis calls, run in a thread by the feeds; the shaping is pure."""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from tasks import keys
from tasks.producer import Producer
from tasks.records import TERMINAL_STATUSES

RECENT_SHOWN = 20  # finished batches listed
RATE_WINDOW_S = 30.0  # a running batch's rate: jobs done over about the last this many seconds
JOBS_PAGE = 100  # a batch's jobs per page
ENIS_SHOWN = 500  # rows of the coverage ENI list; the filter narrows the rest
CODES_READ = 1000  # failed records read to count a finished batch's failure codes


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- batches ---


@dataclass
class BatchRates:
    """Each running batch's (time, done) over the last RATE_WINDOW_S, for its rate and ETA."""

    seen: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def rate(self, batch_id: str, now: float, done: int, submitted: float) -> float:
        points = self.seen.setdefault(batch_id, deque())
        points.append((now, done))
        while len(points) > 2 and now - points[1][0] >= RATE_WINDOW_S:
            points.popleft()
        first_t, first_done = points[0]
        if now - first_t >= 2.0:
            return max(0.0, (done - first_done) / (now - first_t))
        # Too soon for a window of our own: the average since submission.
        return done / (now - submitted) if now > submitted else 0.0

    def forget_all_but(self, running: Iterable[str]) -> None:
        for gone in set(self.seen) - set(running):
            del self.seen[gone]


def iso_seconds(text: str | None) -> float | None:
    from datetime import datetime

    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def progress(status: dict[str, Any], rate: float | None) -> dict[str, Any]:
    """A batch's status as the views show it: done/total, percent, rate, ETA."""
    total, done = int(status["total"]), int(status["done"])
    left = total - done
    eta = left / rate if rate and left > 0 else None
    return {
        **status,
        "percent": 100.0 if total == 0 else round(100.0 * done / total, 1),
        "rate": rate,
        "eta_s": eta,
        "running": status.get("finished_at") is None,
        "failure_codes": {},  # read once it has finished (BatchReader.failure_codes)
    }


class BatchReader:
    """Running and recent batches, each with its progress; a finished batch's failure codes
    read once (it no longer changes)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.client: redis.Redis = producer.store.client
        self.rates = BatchRates()
        self._codes: dict[str, dict[str, int]] = {}

    def overview(self) -> dict[str, Any]:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.smembers(keys.RUNNING_BATCHES)
            pipe.zrevrange(keys.RECENT_BATCHES, 0, RECENT_SHOWN * 3)
            running_ids, recent_ids = pipe.execute()
        running_ids = sorted(_text(b) for b in running_ids)
        recent_ids = [_text(b) for b in recent_ids if _text(b) not in set(running_ids)]
        now = time.time()
        running: list[dict[str, Any]] = []
        recent: list[dict[str, Any]] = []
        for batch_id in running_ids:
            status = self.producer.batch_status(batch_id)
            if status is None:
                continue
            submitted = iso_seconds(status["submitted_at"]) or now
            rate = self.rates.rate(batch_id, now, int(status["done"]), submitted)
            running.append(progress(status, rate))
        self.rates.forget_all_but(running_ids)
        for batch_id in recent_ids:
            if len(recent) == RECENT_SHOWN:
                break
            status = self.producer.batch_status(batch_id)
            if status is None or status.get("finished_at") is None:
                continue
            entry = progress(status, None)
            entry["failure_codes"] = self.failure_codes(batch_id, status)
            recent.append(entry)
        return {"running": running, "recent": recent}

    def failure_codes(self, batch_id: str, status: dict[str, Any]) -> dict[str, int]:
        if not status["counts"].get("failed"):
            return {}
        if batch_id not in self._codes:
            failed: list[str] = []
            statuses = keys.batch(batch_id).statuses
            for job_id, job_status in self.client.hscan_iter(statuses, count=1000):
                if _text(job_status) == "failed":
                    failed.append(_text(job_id))
                    if len(failed) >= CODES_READ:
                        break
            codes: Counter[str] = Counter()
            for record in self.producer.store.load_many(failed):
                if record is not None:
                    error: dict[str, Any] = dict(record.get("error") or {})
                    codes[str(error.get("code") or "unknown")] += 1
            self._codes[batch_id] = dict(codes.most_common())
        return self._codes[batch_id]

    def jobs(self, batch_id: str, page: int, status: str | None) -> dict[str, Any] | None:
        """A page of the batch's jobs in submission order (of one status, if given)."""
        found = self.producer.batch_status(batch_id)
        if found is None:
            return None
        batch = keys.batch(batch_id)
        skip, more = (page - 1) * JOBS_PAGE, False
        rows: list[dict[str, Any]] = []
        for chunk in self.producer.store.batches.job_ids(batch_id):
            statuses = [
                _text(s) if s else "expired" for s in self.client.hmget(batch.statuses, chunk)
            ]
            for job_id, job_status in zip(chunk, statuses, strict=True):
                if status and job_status != status:
                    continue
                if skip:
                    skip -= 1
                elif len(rows) < JOBS_PAGE:
                    rows.append({"job_id": job_id, "status": job_status})
                else:
                    more = True
                    break
            if more:
                break
        records = self.producer.store.load_many([r["job_id"] for r in rows])
        for row, record in zip(rows, records, strict=True):
            row.update(job_row(record))
        submitted = iso_seconds(found["submitted_at"]) or time.time()
        rate = None
        if found.get("finished_at") is None:
            rate = self.rates.rate(batch_id, time.time(), int(found["done"]), submitted)
        entry = progress(found, rate)
        if not entry["running"]:
            entry["failure_codes"] = self.failure_codes(batch_id, found)
        return {"batch": entry, "jobs": rows, "page": page, "more": more, "status": status}


def job_row(record: Any) -> dict[str, Any]:
    """What a batch's page shows of one job's record (any kind: a create's session is in
    its answer, a delete's or modify's in its request)."""
    if record is None:
        return {"eni": "", "session_id": "", "attempts": "", "error": "record expired"}
    request = record.get("request") or {}
    answer = (record.get("response") or {}).get("TrafficMirrorSession") or {}
    error = record.get("error") or {}
    return {
        "eni": request.get("NetworkInterfaceId") or record.get("network_interface_id") or "",
        "session_id": answer.get("TrafficMirrorSessionId")
        or request.get("TrafficMirrorSessionId")
        or "",
        "attempts": record.get("attempts", ""),
        "error": error.get("code") or "",
    }


# --- the fleet ---


@dataclass(frozen=True)
class Bucket:
    account: str
    region: str
    action: str
    rate: float  # the fleet's shared rate now (cut by throttles, regrown)
    configured: float
    throttles: int


@dataclass(frozen=True)
class Sample:
    at: float
    workers: int | None  # None: not asked this time
    queue: int
    pending: int
    batches_running: int
    buckets: list[Bucket]
    # "<account>/<region>/<status>" -> jobs of that place that reached that terminal status
    finished: dict[str, int]


def read_sample(producer: Producer, workers: int | None) -> Sample:
    results = producer.store.client
    with results.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.PENDING)
        pipe.scard(keys.RUNNING_BATCHES)
        pipe.hgetall(keys.STATS_PLACED)
        pending, running, placed = pipe.execute()
    finished: dict[str, int] = {}
    terminal = {str(status) for status in TERMINAL_STATUSES}
    for name, count in placed.items():
        if _text(name).rsplit("/", 1)[-1] in terminal:
            finished[_text(name)] = int(count)
    broker = producer.redis
    buckets = []
    prefix = keys.rate_limit("", "", "").rstrip(":") + ":"
    for key in sorted(_text(k) for k in broker.scan_iter(match=f"{prefix}*", count=100)):
        parts = key.removeprefix(prefix).rsplit(":", 2)
        if len(parts) != 3:
            continue
        account, region, action = parts
        state = {_text(k): _text(v) for k, v in broker.hgetall(key).items()}
        configured = float(state.get("configured") or 0)
        buckets.append(
            Bucket(
                account,
                region,
                action,
                rate=float(state.get("rate") or configured),
                configured=configured,
                throttles=int(state.get("throttles") or 0),
            )
        )
    return Sample(
        time.time(),
        workers,
        int(broker.llen(producer.scope.queue)),
        int(pending),
        int(running),
        buckets,
        finished,
    )


def count_workers(producer: Producer, timeout_s: float) -> int:
    """Workers that answer a ping (Celery's remote control, over the broker) within the
    timeout."""
    return len(producer.app.control.ping(timeout=timeout_s) or [])


CHART_W, CHART_H = 600, 120
# The outcomes of each mutating action's jobs: what a job of that kind ends in when its call
# went through (a failure is not told apart by kind in the fleet's counters).
DONE_BY = {
    "CreateTrafficMirrorSession": ("created", "dry_run_ok"),
    "DeleteTrafficMirrorSession": ("deleted",),
    "ModifyTrafficMirrorSession": ("modified",),
}


def _done(sample: Sample, place: str, action: str) -> int:
    return sum(sample.finished.get(f"{place}/{status}", 0) for status in DONE_BY[action])


def _points(values: list[tuple[float, float]], t0: float, t1: float, top: float) -> str:
    span = max(t1 - t0, 1.0)
    return " ".join(
        f"{(t - t0) / span * CHART_W:.1f},{CHART_H - min(v, top) / top * CHART_H:.1f}"
        for t, v in values
    )


def fleet_view(samples: list[Sample]) -> dict[str, Any]:
    """The latest sample's figures, and per account-Region bucket of a mutating action a
    chart over the samples kept: its jobs done a second (created, deleted or modified: one
    call each, at least) against the fleet's shared rate and the configured one, throttles
    marked."""
    if not samples:
        return {"latest": None, "charts": []}
    latest = samples[-1]
    workers = next((s.workers for s in reversed(samples) if s.workers is not None), None)
    t0, t1 = samples[0].at, latest.at
    charts = []
    for bucket in latest.buckets:
        if bucket.action not in DONE_BY:  # Describe actions: reads, charted in the table only
            continue
        place = f"{bucket.account}/{bucket.region}"
        shared, configured, done, throttled = [], [], [], []
        previous: Sample | None = None
        for sample in samples:
            mine = next(
                (
                    b
                    for b in sample.buckets
                    if (b.account, b.region, b.action)
                    == (bucket.account, bucket.region, bucket.action)
                ),
                None,
            )
            if mine is None:
                previous = sample
                continue
            shared.append((sample.at, mine.rate))
            configured.append((sample.at, mine.configured))
            if previous is not None and sample.at > previous.at:
                gap = sample.at - previous.at
                finished = _done(sample, place, bucket.action) - _done(
                    previous, place, bucket.action
                )
                done.append((sample.at, max(0, finished) / gap))
                before = next(
                    (
                        b.throttles
                        for b in previous.buckets
                        if b.action == bucket.action
                        and (b.account, b.region) == (bucket.account, bucket.region)
                    ),
                    mine.throttles,
                )
                if mine.throttles > before:
                    throttled.append((sample.at, mine.throttles - before))
            previous = sample
        top = max([v for _, v in (*shared, *configured, *done)] + [1.0]) * 1.1
        span = max(t1 - t0, 1.0)
        charts.append(
            {
                "bucket": bucket,
                "place": place,
                "done_now": done[-1][1] if done else 0.0,
                "throttles_shown": sum(n for _, n in throttled),
                "top": top,
                "minutes": round((t1 - t0) / 60, 1),
                "lines": {
                    "configured": _points(configured, t0, t1, top),
                    "shared": _points(shared, t0, t1, top),
                    "done": _points(done, t0, t1, top),
                },
                "throttles": [(t - t0) / span * CHART_W for t, _ in throttled],
                "width": CHART_W,
                "height": CHART_H,
            }
        )
    return {"latest": latest, "workers": workers, "charts": charts}


# --- coverage ---

STATES = ("live", "dark", "missing", "unsupported")


def coverage_view(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The coverage report (mirrorq/coverage.py's JSON) with what the table needs: each
    rule's bar segments, its place shown only where the rules span several."""
    if report is None:
        return None
    rules = report.get("rules", [])
    places = {(r.get("account_id"), r.get("region")) for r in rules}
    shaped = []
    for index, rule in enumerate(rules):
        missing = rule.get("missing") or {}
        missing_total = sum(missing.values()) if isinstance(missing, dict) else int(missing)
        eligible = int(rule.get("eligible") or 0)
        segments, x = [], 0.0
        for state, n in (
            ("live", rule.get("live", 0)),
            ("dark", rule.get("dark", 0)),
            ("missing", missing_total),
        ):
            width = 100.0 * n / eligible if eligible else 0.0
            segments.append({"state": state, "x": x, "width": width, "n": n})
            x += width
        shaped.append(
            {**rule, "index": index, "missing_total": missing_total, "segments": segments}
        )
    totals = dict(report.get("totals") or {})
    return {
        "generated_at": report.get("generated_at"),
        "percent": report.get("percent"),
        "totals": totals,
        "rules": shaped,
        "several_places": len(places) > 1,
        "unwanted": report.get("unwanted") or [],
        # what these numbers do not count: places not read, rules with no target there
        "notes": list(report.get("notes") or []),
        "complete": bool(report.get("complete", True)),
    }


def coverage_enis(
    report: dict[str, Any] | None,
    rule: int | None,
    state: str | None,
    reason: str | None,
    search: str | None,
) -> dict[str, Any]:
    """The ENIs behind the numbers, filtered: by rule (its index), state, reason, and a
    search in any of the ENI's fields; at most ENIS_SHOWN rows."""
    rows: list[dict[str, Any]] = []
    matched, reasons = 0, set()
    needle = (search or "").strip().lower()
    for index, entry in enumerate((report or {}).get("rules", [])):
        if rule is not None and index != rule:
            continue
        for eni in entry.get("enis") or []:
            if eni.get("reason"):
                reasons.add(eni["reason"])
            if state and eni.get("state") != state:
                continue
            if reason and eni.get("reason") != reason:
                continue
            if needle and needle not in json.dumps(eni).lower() + entry["rule"].lower():
                continue
            matched += 1
            if len(rows) < ENIS_SHOWN:
                rows.append({**eni, "rule": entry["rule"]})
    return {"rows": rows, "matched": matched, "shown": len(rows), "reasons": sorted(reasons)}
