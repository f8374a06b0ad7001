"""The retry policy and the error table, driven without real sleeps or a network."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from tenacity import RetryCallState

from tasks.errors import LeaseLostError
from tests.timing import VirtualTime
from worker.errors import classify, is_transient
from worker.retry import retry_policy


def client_error(code: str, status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "CreateTrafficMirrorSession")


@pytest.mark.parametrize(
    "code",
    ["RequestLimitExceeded", "Throttling", "InternalError", "ServiceUnavailable", "Unavailable"],
)
def test_throttling_and_5xx_are_transient(code: str) -> None:
    assert is_transient(client_error(code, 503))


@pytest.mark.parametrize(
    "code",
    [
        "InvalidParameterValue",
        "InvalidNetworkInterfaceID.NotFound",
        "InvalidTrafficMirrorTargetNoFound",
        "TrafficMirrorSessionsPerInterfaceLimitExceeded",
        "IdempotentParameterMismatch",
        "UnauthorizedOperation",
        "DryRunOperation",
        "MissingParameter",
    ],
)
def test_everything_else_ec2_says_is_permanent(code: str) -> None:
    failure = classify(client_error(code))
    assert (failure.code, failure.retryable) == (code, False)


def test_connection_errors_and_timeouts_are_transient() -> None:
    assert is_transient(ConnectionClosedError(endpoint_url="http://ec2"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://ec2"))
    assert is_transient(TimeoutError())
    assert not is_transient(ValueError("a bug"))


async def run(policy: Any, outcomes: list[BaseException | str]) -> tuple[str, int]:
    calls = 0
    async for attempt in policy:
        with attempt:
            calls += 1
            outcome = outcomes.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome, calls
    raise AssertionError("unreachable")


def test_transient_errors_are_retried_until_success() -> None:
    clock = VirtualTime()
    p = retry_policy(deadline_s=60, backoff_base_s=0.1, backoff_cap_s=2.0, timing=clock.timing)
    outcome = asyncio.run(
        run(
            p,
            [
                client_error("RequestLimitExceeded", 503),
                ConnectionClosedError(endpoint_url="x"),
                "created",
            ],
        )
    )
    assert outcome == ("created", 3)
    assert len(clock.slept) == 2


def test_permanent_errors_are_not_retried() -> None:
    clock = VirtualTime()
    p = retry_policy(deadline_s=60, backoff_base_s=0.1, backoff_cap_s=2.0, timing=clock.timing)
    with pytest.raises(ClientError):
        asyncio.run(run(p, [client_error("InvalidParameterValue"), "never"]))
    assert clock.slept == []


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    clock = VirtualTime()
    p = retry_policy(deadline_s=10_000, backoff_base_s=0.1, backoff_cap_s=2.0, timing=clock.timing)
    errors: list[BaseException | str] = [client_error("Throttling", 400) for _ in range(30)]
    asyncio.run(run(p, [*errors, "created"]))
    for n, slept in enumerate(clock.slept, start=1):
        assert 0 <= slept <= min(2.0, 0.1 * 2**n)
    assert max(clock.slept[10:]) <= 2.0
    assert len(set(clock.slept)) > 20  # jittered, not a fixed ladder


def test_a_lost_lease_is_taken_again_soon_whatever_came_before() -> None:
    """Found in a graceful Sentinel failover: a job whose ENI lease was found lost, again and
    again while its worker's connections reached both primaries, backed off like a throttled
    EC2 call, seconds more each time. Nothing was sent to EC2: a LeaseLost attempt is retried
    within the backoff's base, however many failures came before; EC2's failures after it
    back off as before."""
    clock = VirtualTime()
    p = retry_policy(deadline_s=10_000, backoff_base_s=0.1, backoff_cap_s=10.0, timing=clock.timing)
    throttled: list[BaseException | str] = [client_error("Throttling", 400) for _ in range(8)]
    lost: list[BaseException | str] = [LeaseLostError("lost") for _ in range(8)]
    asyncio.run(run(p, [*throttled, *lost, client_error("Throttling", 400), "created"]))
    assert all(0 <= slept <= 0.1 for slept in clock.slept[8:16])
    assert len(clock.slept) == 17


def test_retries_stop_at_the_deadline_on_the_workers_clock() -> None:
    """The deadline is read on the worker's clock, as the backoff sleeps on it: 30 s of
    retries take no real time."""
    clock = VirtualTime()
    p = retry_policy(deadline_s=30, backoff_base_s=0.1, backoff_cap_s=2.0, timing=clock.timing)
    errors: list[BaseException | str] = [client_error("InternalError", 500) for _ in range(1000)]
    with pytest.raises(ClientError):
        asyncio.run(run(p, errors))
    # The last attempt started within the deadline; the next would not have (waits <= 2 s).
    assert 30 - 2.0 <= clock.monotonic() < 30
    assert clock.monotonic() == pytest.approx(sum(clock.slept))


def failed_attempt(
    policy: Any, error: BaseException, number: int, at: float, clock: VirtualTime
) -> RetryCallState:
    """tenacity's own state after attempt `number` failed `at` seconds into the job (on the
    worker's clock, which the policy's deadline reads)."""
    clock.now = clock.start + at
    state = RetryCallState(retry_object=policy, fn=None, args=(), kwargs={})
    state.attempt_number = number
    state.set_exception((type(error), error, None))
    return state


def test_the_deadline_stops_retrying() -> None:
    clock = VirtualTime()
    policy = retry_policy(deadline_s=5, backoff_base_s=1.0, backoff_cap_s=4.0, timing=clock.timing)
    error = client_error("InternalError", 500)
    early = failed_attempt(policy, error, number=2, at=0.5, clock=clock)
    early.upcoming_sleep = policy.wait(early)
    assert policy.retry(early)
    assert 0 <= early.upcoming_sleep <= 4.0
    assert not policy.stop(early)  # the next attempt starts within the deadline
    late = failed_attempt(policy, error, number=9, at=4.5, clock=clock)
    late.upcoming_sleep = 0.6
    assert policy.stop(late)  # it would start past the deadline: the job ends now
    late.upcoming_sleep = 0.4
    assert not policy.stop(late)


def test_a_permanent_error_is_not_retried_whatever_the_time_left() -> None:
    clock = VirtualTime()
    policy = retry_policy(deadline_s=60, backoff_base_s=1.0, backoff_cap_s=4.0, timing=clock.timing)
    error = client_error("InvalidParameterValue")
    state = failed_attempt(policy, error, number=1, at=0.1, clock=clock)
    assert not policy.retry(state)
