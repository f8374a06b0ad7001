"""Intake's pure parts: the keys an event's jobs are claimed under, and one event's failure
kept to itself when a batch fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from config import Settings
from mirrorq.events import Event
from mirrorq.intake import Intake, Outcome, _rules_at, event_key, origin_id, policy_accounts
from mirrorq.rules import Rule, Selectors
from tasks.contract import NOWHERE, Placement
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

    async def _handle_together(
        self, place: Placement, rules: list[Rule], events: Sequence[Event]
    ) -> list[Outcome]:
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


ANY = Selectors(eni_ids=("eni-0123456789abcdef0",))
ROLE_A = "arn:aws:iam::111111111111:role/mirrorq"
ROLE_B = "arn:aws:iam::222222222222:role/mirrorq"


def placed_rules() -> list[Rule]:
    """Two [[accounts]]: A in two Regions, B in one; the second rule applies to B only."""
    a = [Placement(region=r, role_arn=ROLE_A) for r in ("us-east-1", "eu-west-1")]
    b = [Placement(region="eu-west-1", role_arn=ROLE_B, external_id="x-b")]
    return [
        Rule("all", ANY, targets=("tmt-0a",), filter_id="tmf-0a", places=(*a, *b)),
        Rule("b-only", ANY, targets=("tmt-0a",), filter_id="tmf-0a", places=tuple(b)),
    ]


def place_of(rules: list[Rule], account: str | None, region: str | None) -> Placement | str:
    intake = Intake(rules, Settings(region="us-east-1", aws_account_id="999999999999"), None, None)  # type: ignore[arg-type]
    event = Event("e", region, instance_ids=("i-0123456789abcdef0",), account=account)
    return asyncio.run(intake._place_of(policy_accounts(rules), event))


def test_an_event_runs_in_its_account_and_region_as_the_policy_names_them() -> None:
    rules = placed_rules()
    assert place_of(rules, "111111111111", "eu-west-1") == Placement(
        region="eu-west-1", role_arn=ROLE_A
    )
    assert place_of(rules, "222222222222", "eu-west-1") == Placement(
        region="eu-west-1", role_arn=ROLE_B, external_id="x-b"
    )
    assert place_of(rules, "333333333333", "us-east-1") == (
        "account 333333333333 (the policy's [[accounts]] do not name it)"
    )
    assert place_of(rules, "222222222222", "us-east-1") == (
        "region us-east-1 of account 222222222222 (its [[accounts]] entry names eu-west-1)"
    )
    # The fleet's own account, with no entry: its own place, in its own Region only.
    assert place_of(rules, "999999999999", "us-east-1") == NOWHERE
    assert place_of(rules, None, None) == NOWHERE
    assert str(place_of(rules, "999999999999", "eu-west-1")).startswith(
        "region eu-west-1 of the fleet's own account"
    )
    there = Placement(region="eu-west-1", role_arn=ROLE_B, external_id="x-b")
    assert [r.name for r in _rules_at(rules, there)] == ["all", "b-only"]
    assert [r.name for r in _rules_at(rules, rules[0].places[0])] == ["all"]
    assert [r.name for r in _rules_at(rules, NOWHERE)] == ["all", "b-only"]


def test_without_accounts_an_event_runs_at_the_fleets_place_whatever_its_account() -> None:
    rules = [Rule("r", ANY, targets=("tmt-0a",), filter_id="tmf-0a")]
    assert place_of(rules, "333333333333", "us-east-1") == NOWHERE
    assert place_of(rules, "333333333333", None) == NOWHERE
    assert place_of(rules, None, "eu-west-1") == "region eu-west-1 (this listener serves us-east-1)"


class Placed(Intake):
    """An intake whose place `broken` fails as `error`; the others make a job per event."""

    def __init__(self, error: Exception) -> None:
        super().__init__(placed_rules(), Settings(region="us-east-1"), None, None)  # type: ignore[arg-type]
        self.error = error

    async def _handle_together(
        self, place: Placement, rules: list[Rule], events: Sequence[Event]
    ) -> list[Outcome]:
        if place.role_arn == ROLE_B:
            raise self.error
        return [Outcome(e.event_id, job_ids=[f"job-{e.event_id}"]) for e in events]


@pytest.mark.parametrize("error", [RedisConnectionError("down"), TimeoutError(), KeyError("x")])
def test_a_place_that_fails_fails_only_its_own_events(error: Exception) -> None:
    batch = [
        Event("a1", "us-east-1", eni_ids=("eni-0123456789abcdef0",), account="111111111111"),
        Event("b1", "eu-west-1", eni_ids=("eni-0123456789abcdef1",), account="222222222222"),
        Event("b2", "eu-west-1", eni_ids=("eni-0123456789abcdef2",), account="222222222222"),
        Event("a2", "eu-west-1", eni_ids=("eni-0123456789abcdef3",), account="111111111111"),
        Event("c1", "eu-west-1", eni_ids=("eni-0123456789abcdef4",), account="333333333333"),
    ]
    intake = Placed(error)
    by_id = {o.event_id: o for o in asyncio.run(intake.handle(batch))}
    assert by_id["a1"].job_ids == ["job-a1"]
    assert by_id["a2"].job_ids == ["job-a2"]
    assert not by_id["b1"].done
    assert not by_id["b2"].done
    assert by_id["c1"].done
    assert by_id["c1"].ignored
    assert intake.counts["unhandled"] == 2
    assert intake.counts["other_place"] == 1
    assert intake.counts["ignored"] == 1
