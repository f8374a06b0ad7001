"""Prometheus metrics of the whole fleet, read from Redis at each scrape, so any API process
reports every worker's jobs: jobs by status, failures by code, submission-to-outcome times,
the queue and the pending index, batches running, and the shared EC2 rate per action."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mirrorq.coverage import stored_view
from tasks import keys
from tasks.producer import Producer
from tasks.store import DURATION_BUCKETS


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FleetCollector(Collector):
    def __init__(self, producer: Producer) -> None:
        self._results = producer.store.client
        self._broker = producer.redis
        self._queue = producer.scope.queue  # this fleet's (MIRRORQ_AWS_ACCOUNT_ID, region)

    def collect(self) -> Iterator[Metric]:
        with self._results.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.STATS_STATUS)
            pipe.hgetall(keys.STATS_FAILED)
            pipe.hgetall(keys.STATS_DURATION)
            pipe.zcard(keys.PENDING)
            pipe.scard(keys.RUNNING_BATCHES)
            pipe.hgetall(keys.STATS_PLACED)
            statuses, failures, durations, pending, batches, placed = pipe.execute()
        jobs = CounterMetricFamily(
            "mirrorq_jobs", "Jobs that entered each status", labels=["status"]
        )
        for status, count in sorted(statuses.items()):
            jobs.add_metric([_text(status)], int(count))
        yield jobs
        by_place = CounterMetricFamily(
            "mirrorq_jobs_by_place",
            "Jobs that entered each status, by the account and Region they run in",
            labels=["account", "region", "status"],
        )
        for field, count in sorted(placed.items()):
            account, region, status = _text(field).split("/", 2)
            by_place.add_metric([account, region, status], int(count))
        yield by_place
        failed = CounterMetricFamily(
            "mirrorq_jobs_failed", "Jobs that ended failed, by error code", labels=["code"]
        )
        for code, count in sorted(failures.items()):
            failed.add_metric([_text(code)], int(count))
        yield failed
        yield self._durations({_text(k): v for k, v in durations.items()})
        yield GaugeMetricFamily(
            "mirrorq_queue_messages",
            "Messages waiting in this fleet's queue (a batch's carry 8 jobs)",
            value=int(self._broker.llen(self._queue)),
        )
        yield GaugeMetricFamily(
            "mirrorq_jobs_pending", "Jobs accepted and not finished", value=int(pending)
        )
        yield GaugeMetricFamily(
            "mirrorq_batches_running", "Batches not finished", value=int(batches)
        )
        yield from self._rates()
        yield from self._coverage()

    def _durations(self, counts: dict[str, Any]) -> Metric:
        cumulative, buckets = 0, []
        for bound in (*(repr(b) for b in DURATION_BUCKETS), "+Inf"):
            cumulative += int(counts.get(bound, 0))
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(
            "mirrorq_job_seconds",
            "Seconds from a job's submission to its outcome",
            buckets=buckets,
            sum_value=float(counts.get("sum", 0)),
        )

    def _rates(self) -> Iterator[Metric]:
        labels = ["account", "region", "action"]
        rate = GaugeMetricFamily(
            "mirrorq_ec2_rate", "The fleet's shared EC2 rate (calls/s)", labels=labels
        )
        configured = GaugeMetricFamily(
            "mirrorq_ec2_rate_configured",
            "The EC2 rate the workers are configured for",
            labels=labels,
        )
        throttles = CounterMetricFamily(
            "mirrorq_ec2_throttles", "RequestLimitExceeded answers seen by the fleet", labels=labels
        )
        prefix = keys.rate_limit("", "", "").rstrip(":")
        for key in sorted(self._broker.scan_iter(match=f"{prefix}*", count=100)):
            account, region, action = _text(key)[len(prefix) :].lstrip(":").rsplit(":", 2)
            state = {_text(k): _text(v) for k, v in self._broker.hgetall(key).items()}
            names = [account, region, action]
            rate.add_metric(names, float(state.get("rate") or state.get("configured") or 0))
            configured.add_metric(names, float(state.get("configured") or 0))
            throttles.add_metric(names, int(state.get("throttles") or 0))
        yield rate
        yield configured
        yield throttles

    def _coverage(self) -> Iterator[Metric]:
        """The last reconcile pass's coverage (mirrorq/coverage.py store_view), if any."""
        view = stored_view(self._results)
        if view is None:
            return
        labels = ["rule", "account", "region"]
        enis = GaugeMetricFamily(
            "mirrorq_coverage_enis",
            "ENIs a rule matches, by state (live, dark, missing, unsupported), at the last "
            "reconcile pass",
            labels=[*labels, "state"],
        )
        missing = GaugeMetricFamily(
            "mirrorq_coverage_missing_enis",
            "ENIs a rule matches that are not mirrored, by reason, at the last reconcile pass",
            labels=[*labels, "reason"],
        )
        percent = GaugeMetricFamily(
            "mirrorq_coverage_percent",
            "A rule's ENIs mirrored to a live target, of those that can be, at the last pass",
            labels=labels,
        )
        for row in view["rules"]:
            names = [row["rule"], row["account_id"] or "", row["region"] or ""]
            missed = sum(row["missing"].values())
            for state, count in (
                ("live", row["live"]),
                ("dark", row["dark"]),
                ("missing", missed),
                ("unsupported", row["unsupported"]),
            ):
                enis.add_metric([*names, state], count)
            for reason, count in sorted(row["missing"].items()):
                missing.add_metric([*names, reason], count)
            percent.add_metric(names, row["percent"])
        yield enis
        yield missing
        yield percent
        yield GaugeMetricFamily(
            "mirrorq_coverage_percent_total",
            "ENIs mirrored to a live target, of those that can be, every rule, at the last pass",
            value=view["percent"],
        )
        yield GaugeMetricFamily(
            "mirrorq_coverage_unwanted_sessions",
            "Managed sessions no rule wants, at the last reconcile pass",
            value=view["totals"]["unwanted"],
        )
