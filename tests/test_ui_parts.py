"""The dashboard's pure parts (mirrorq/api/ui/): session cookies, feeds that answer within a
bound with the last good figures, and the shaping of coverage, batches and fleet samples.
The pages themselves are tested in a real browser (tests/test_dashboard.py)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from mirrorq.api.ui import data
from mirrorq.api.ui.feeds import Feed
from mirrorq.api.ui.session import Sessions

TOKENS = ["first-token-0123456789", "second-token-0123456789"]


def test_a_session_cookie_is_signed_expiring_and_carries_no_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions = Sessions(TOKENS, ttl_s=60)
    assert sessions.login("not-a-token-0123456789") is None
    assert sessions.login("") is None
    assert sessions.login(TOKENS[0][:-1]) is None
    cookie = sessions.login(f" {TOKENS[1]} ")
    assert cookie is not None
    assert all(token not in cookie for token in TOKENS)
    found = sessions.check(cookie)
    assert found is not None
    assert sessions.check(sessions.login(TOKENS[1])) != found  # a session id each login
    # Tampered: a signature's first character changes its first bytes (its last character's
    # low bits are base64 padding, which a decoder may ignore: no test of tampering).
    signed, signature = cookie.rsplit(".", 1)
    tampered = signature.replace(signature[0], "A" if signature[0] != "A" else "B", 1)
    assert sessions.check(f"{signed}.{tampered}") is None
    assert sessions.check(cookie.replace(signed[0], "x" if signed[0] != "x" else "y", 1)) is None
    assert sessions.check(None) is None
    assert sessions.check("garbage") is None
    # Another set of tokens (one revoked) signs with another key: old sessions end.
    assert Sessions(TOKENS[:1], ttl_s=60).check(cookie) is None
    # Expired after its lifetime.
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert sessions.check(cookie) is None
    with pytest.raises(ValueError, match="no API token"):
        Sessions([], ttl_s=60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_feed_reads_once_per_period_and_keeps_the_last_good_value_when_reads_fail() -> None:
    clock, reads = Clock(), itertools.count(1)
    failing = {"now": False}

    async def read() -> int:
        if failing["now"]:
            raise ConnectionError("Redis away")
        return next(reads)

    async def scenario() -> None:
        feed = Feed(read, every_s=5, wait_s=1, what="Redis", clock=clock)
        first = await feed.get()
        assert (first.value, first.read_at, first.error) == (1, 1000.0, None)
        clock.now += 1
        assert (await feed.get()).value == 1  # within the period: not read again
        clock.now += 5
        assert (await feed.get()).value == 2
        failing["now"] = True
        clock.now += 5
        stale = await feed.get()
        assert stale.value == 2
        assert stale.read_at == 1006.0
        assert stale.error == "Redis does not answer (ConnectionError)"
        failing["now"] = False
        clock.now += 5
        assert (await feed.get()).error is None

    asyncio.run(scenario())


def test_a_slow_read_is_shared_and_the_page_answers_within_the_bound() -> None:
    started = []
    release = asyncio.Event()

    async def read() -> str:
        started.append(1)
        await release.wait()
        return "fresh"

    async def scenario() -> None:
        feed = Feed(read, every_s=0, wait_s=0.05, what="Coverage")
        answers = await asyncio.gather(*(feed.get() for _ in range(5)))
        assert len(started) == 1  # one read, however many asked
        assert {a.value for a in answers} == {None}
        assert all(a.error and "Coverage does not answer (asked" in a.error for a in answers)
        release.set()
        await asyncio.sleep(0.01)
        assert (await feed.get()).value == "fresh"

    asyncio.run(scenario())


REPORT: dict[str, Any] = {
    "generated_at": "2026-12-06T14:10:12Z",
    "percent": 75.0,
    "totals": {
        "matched": 5,
        "eligible": 4,
        "live": 3,
        "dark": 1,
        "missing": 0,
        "unsupported": 1,
        "unwanted": 0,
    },
    "rules": [
        {
            "rule": "web",
            "account_id": "111111111111",
            "region": "us-east-1",
            "matched": 5,
            "eligible": 4,
            "live": 2,
            "dark": 1,
            "missing": {"session_limit": 1},
            "unsupported": 1,
            "percent": 50.0,
            "enis": [
                {
                    "eni": "eni-1",
                    "instance_id": "i-1",
                    "zone": "us-east-1a",
                    "state": "live",
                    "reason": None,
                    "session_id": "tms-1",
                    "target": "tmt-a",
                },
                {
                    "eni": "eni-2",
                    "instance_id": "i-2",
                    "zone": "us-east-1b",
                    "state": "dark",
                    "reason": "instance_terminated",
                    "session_id": "tms-2",
                    "target": "tmt-b",
                },
                {
                    "eni": "eni-3",
                    "instance_id": "i-3",
                    "zone": "us-east-1a",
                    "state": "missing",
                    "reason": "session_limit",
                    "session_id": None,
                    "target": None,
                },
            ],
        },
        {
            "rule": "web",
            "account_id": "222222222222",
            "region": "eu-west-1",
            "matched": 1,
            "eligible": 1,
            "live": 1,
            "dark": 0,
            "missing": {},
            "unsupported": 0,
            "percent": 100.0,
            "enis": [
                {
                    "eni": "eni-9",
                    "instance_id": "i-9",
                    "zone": "eu-west-1a",
                    "state": "live",
                    "reason": None,
                    "session_id": "tms-9",
                    "target": "tmt-c",
                },
            ],
        },
    ],
    "unwanted": [],
}


def test_coverage_bars_and_places_and_the_enis_behind_each_number() -> None:
    view = data.coverage_view(REPORT)
    assert view is not None
    assert view["several_places"]
    web = view["rules"][0]
    assert web["missing_total"] == 1
    assert [(s["state"], s["x"], s["width"]) for s in web["segments"]] == [
        ("live", 0.0, 50.0),
        ("dark", 50.0, 25.0),
        ("missing", 75.0, 25.0),
    ]
    assert data.coverage_view(None) is None
    assert not data.coverage_view({**REPORT, "rules": REPORT["rules"][:1]})["several_places"]  # type: ignore[index]

    def enis(**chosen: Any) -> list[str]:
        found = data.coverage_enis(
            REPORT, **{"rule": None, "state": None, "reason": None, "search": None, **chosen}
        )
        assert found["matched"] == len(found["rows"])
        return [row["eni"] for row in found["rows"]]

    assert enis() == ["eni-1", "eni-2", "eni-3", "eni-9"]
    assert enis(rule=1) == ["eni-9"]
    assert enis(state="dark") == ["eni-2"]
    assert enis(reason="session_limit") == ["eni-3"]
    assert enis(search="US-EAST-1A") == ["eni-1", "eni-3"]
    assert enis(search="tmt-c") == ["eni-9"]
    assert enis(rule=0, state="live", search="nothing") == []
    assert data.coverage_enis(None, None, None, None, None)["rows"] == []


def test_a_running_batch_s_rate_is_over_its_recent_window() -> None:
    rates = data.BatchRates()
    assert rates.rate("b", now=110.0, done=50, submitted=100.0) == 5.0  # since submission
    assert rates.rate("b", now=112.0, done=70, submitted=100.0) == 10.0  # its own window
    for t in range(113, 160):
        rates.rate("b", now=float(t), done=70 + 2 * (t - 112), submitted=100.0)
    assert rates.rate("b", now=160.0, done=166, submitted=100.0) == pytest.approx(2.0)
    rates.forget_all_but([])
    assert rates.seen == {}
    shown = data.progress({"total": 200, "done": 50, "finished_at": None}, 10.0)
    assert (shown["percent"], shown["eta_s"], shown["running"]) == (25.0, 15.0, True)
    assert data.progress({"total": 0, "done": 0, "finished_at": "x"}, None)["percent"] == 100.0


def test_the_fleet_chart_plots_jobs_finished_against_the_rates_and_marks_throttles() -> None:
    def sample(at: float, finished: int, rate: float, throttles: int) -> data.Sample:
        buckets = [
            data.Bucket("default", "us-east-1", "CreateTrafficMirrorSession", rate, 5.0, throttles),
            data.Bucket("default", "us-east-1", "DescribeInstances", 20.0, 20.0, 0),
        ]
        done = {"default/us-east-1/created": finished, "default/us-east-1/failed": 7}
        return data.Sample(at, None, 0, 0, 0, buckets, done)

    samples = [sample(0, 0, 5.0, 0), sample(5, 25, 5.0, 0), sample(10, 40, 2.5, 3)]
    samples[0] = data.Sample(0, 2, 0, 0, 0, samples[0].buckets, samples[0].finished)
    view = data.fleet_view(samples)
    assert view["workers"] == 2
    (chart,) = view["charts"]  # Describe buckets are not charted
    assert chart["place"] == "default/us-east-1"
    assert chart["done_now"] == 3.0
    assert chart["throttles_shown"] == 3
    assert chart["throttles"] == [600.0]
    assert len(chart["lines"]["done"].split()) == 2
    assert data.fleet_view([]) == {"latest": None, "charts": []}
