"""Intake's pure parts: the keys an event's jobs are claimed under, and one event's failure
kept to itself when a batch fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from config import Settings
from mirrorq.events import Event
from mirrorq.intake import Intake, Outcome, event_key, origin_id
from mirrorq.rules import Rule
from tasks.producer import MAX_KEY_LENGTH

LONG = "x" * 300


def test_a_key_that_fits_is_the_event_id_eni_and_rule_as_it_always_was() -> None:
    assert event_key("6a7e8feb", "eni-0123456789abcdef0", "prod-web") == (
        "6a7e8feb:eni-0123456789abcdef0:prod-web"
    )
    assert event_key("own-1") == "own-1"
    assert origin_id("own-1") == "own-1"


def test_an_id_too_long_for_a_key_is_named_by_its_digest_stable_and_unique() -> None:
    key = event_key(LONG, "eni-0123456789abcdef0", "r" * 128)
    assert len(key) <= MAX_KEY_LENGTH
    assert key.startswith("sha256:")
    assert key.endswith(":eni-0123456789abcdef0:" + "r" * 128)
    assert key == event_key(LONG, "eni-0123456789abcdef0", "r" * 128)  # every redelivery
    others = {
        event_key(LONG + "y", "eni-0123456789abcdef0", "r" * 128),
        event_key(LONG, "eni-0123456789abcdef1", "r" * 128),
        event_key(LONG, "eni-0123456789abcdef0", "other"),
    }
    assert key not in others
    assert len(others) == 3
    assert len(event_key(LONG)) <= MAX_KEY_LENGTH
    assert origin_id(LONG) == event_key(LONG)
    assert origin_id("y" * 256) == "y" * 256  # what a job's record holds: up to 256


class Poisoned(Intake):
    """An intake whose batch step fails as `error` for a batch holding the event `poison`."""

    def __init__(self, error: Exception) -> None:
        super().__init__([], Settings(), None, None)  # type: ignore[arg-type]
        self.error = error
        self.batches: list[list[str]] = []

    async def _handle_together(self, rules: list[Rule], events: Sequence[Event]) -> list[Outcome]:
        self.batches.append([e.event_id for e in events])
        if any(e.event_id == "poison" for e in events):
            raise self.error
        return [Outcome(e.event_id, job_ids=[f"job-{e.event_id}"]) for e in events]


def events(*ids: str) -> list[Event]:
    return [Event(i, None, instance_ids=("i-0123456789abcdef0",)) for i in ids]


def test_a_batch_that_fails_is_handled_again_one_event_at_a_time() -> None:
    intake = Poisoned(KeyError("eni-0123456789abcdef0"))
    outcomes = asyncio.run(intake.handle(events("a", "poison", "b", "a")))
    assert intake.batches == [["a", "poison", "b", "a"], ["a"], ["poison"], ["b"], ["a"]]
    by_id = {o.event_id: o for o in outcomes}
    assert list(by_id) == ["a", "poison", "b"]  # one outcome per event id, as a batch has
    assert by_id["a"].done
    assert by_id["b"].done
    assert not by_id["poison"].done
    assert "KeyError" in by_id["poison"].error
    assert intake.counts["unhandled"] == 1
    assert intake.counts["events"] == 3


@pytest.mark.parametrize("error", [RedisConnectionError("down"), TimeoutError()])
def test_a_batch_that_fails_for_a_transient_reason_is_not_split(error: Exception) -> None:
    """Redis or EC2 away: every event would fail alike; the whole receive comes back."""
    intake = Poisoned(error)
    with pytest.raises(type(error)):
        asyncio.run(intake.handle(events("a", "poison")))
    assert intake.batches == [["a", "poison"]]


def test_one_event_that_fails_raises_as_it_did() -> None:
    """POST /v1/events answers what it failed with (503 for Redis, 502 for EC2...)."""
    intake = Poisoned(KeyError("x"))
    with pytest.raises(KeyError):
        asyncio.run(intake.handle(events("poison")))
