"""How a batch's jobs become messages: one queue and one place to a message, the places
taken in turn (pure: tasks/batches.py `messages_of`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tasks.batches import messages_of
from tasks.records import JobResult

PLACES = [
    ("mirrorq", None, None, None),
    ("mirrorq", "111111111111", "us-east-1", "arn:aws:iam::111111111111:role/m"),
    ("mirrorq", "111111111111", "eu-west-1", "arn:aws:iam::111111111111:role/m"),
    ("mirrorq", "222222222222", "us-east-1", "arn:aws:iam::222222222222:role/m"),
    ("mirrorq.333333333333.us-east-1", "333333333333", "us-east-1", None),
]


def _job(n: int, place: tuple[Any, ...]) -> JobResult:
    queue, account, region, role = place
    record: Any = {
        "job_id": f"job-{n}",
        "queue": queue,
        "account_id": account,
        "region": region,
        "role_arn": role,
    }
    return record  # type: ignore[no-any-return]


def _place(record: JobResult) -> tuple[Any, ...]:
    return (record["queue"], record["account_id"], record["region"], record["role_arn"])


def test_a_batch_listing_its_places_in_turn_is_published_taking_them_in_turn() -> None:
    jobs = [_job(n, PLACES[1 + n // 24]) for n in range(72)]  # 24 jobs of each of 3 places
    messages = messages_of(jobs, 8)
    assert [len(m) for m in messages] == [8] * 9
    assert [_place(m[0])[1:3] for m in messages[:3]] == [
        ("111111111111", "us-east-1"),
        ("111111111111", "eu-west-1"),
        ("222222222222", "us-east-1"),
    ]
    assert [m[0]["job_id"] for m in messages[::3]] == ["job-0", "job-8", "job-16"]


@given(
    places=st.lists(st.sampled_from(range(len(PLACES))), max_size=200),
    per_message=st.integers(1, 16),
)
def test_every_job_goes_once_in_a_message_of_one_queue_and_place(
    places: list[int], per_message: int
) -> None:
    jobs = [_job(n, PLACES[p]) for n, p in enumerate(places)]
    messages = messages_of(jobs, per_message)
    assert Counter(r["job_id"] for m in messages for r in m) == Counter(r["job_id"] for r in jobs)
    for message in messages:
        assert 1 <= len(message) <= per_message
        assert len({_place(r) for r in message}) == 1
    # Each place's jobs keep their order, and no place waits behind another's backlog:
    # among the first k messages, every place still having messages has one of them.
    for place in {_place(r) for r in jobs}:
        own = [r["job_id"] for m in messages for r in m if _place(r) == place]
        assert own == [r["job_id"] for r in jobs if _place(r) == place]
    firsts = [_place(m[0]) for m in messages]
    distinct = len(set(firsts))
    assert len(set(firsts[:distinct])) == distinct
