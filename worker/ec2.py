"""Every EC2 call mirrorq makes goes one way: through an `Ec2Road`.

A job's creates and its `auto` reads (worker/execute.py), the planner's Describe calls for
`mirror`, `reconcile` and `policy plan` and the listener's and the API's reads
(mirrorq/inventory.py) all take the same steps, here and nowhere else:

- a slot from the fleet's shared limiter for the call's action (worker/ratelimit.py);
- the call on the road's aiobotocore client (worker/aws.py), timed in
  `mirrorq_ec2_call_seconds` by action and outcome (worker/metrics.py);
- the limiter told of every RequestLimitExceeded, by whoever made the call, so a planner's
  burst slows the fleet as a worker's does (and counts in the fleet's throttles);
- the retry policy and the error table (worker/retry.py, worker/errors.py);
- pagination, each page a call paid for at the limiter.

The few Elastic Load Balancing v2 reads (DescribeLoadBalancers: is an NLB target's load
balancer alive, mirrorq/targets.py) take the same steps on the road's elbv2 client, opened
with the road's credentials and Region on first use (`road.elbv2_pages`), and paid at a
limiter of their own in the road's account bucket (seeded as a Describe action).

A road is one account and Region: its client and its limiters are that bucket's. Serving
many is a cache of roads keyed by place (role, Region), each built the same way
(worker/roads.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiobotocore.session import ClientCreatorContext
from botocore import xform_name
from tenacity import AsyncRetrying

from config import Settings
from tasks.connections import async_pool, primary_followed
from worker.aws import ec2_client, elbv2_client
from worker.errors import classify
from worker.metrics import ec2_call
from worker.ratelimit import Limiters
from worker.retry import OnRetry, retry_policy
from worker.timing import REAL, Timing

if TYPE_CHECKING:  # stubs only: a development dependency
    from types_aiobotocore_ec2 import EC2Client

log = logging.getLogger(__name__)
SLOW_SLOT_WARNING_EVERY_S = 60.0
_last_slow_slot_warning = -SLOW_SLOT_WARNING_EVERY_S
PLANNER_REDIS_CONNECTIONS = 4  # a planner's calls run a few at a time


class LazyClient:
    """A client opened on its first use (most roads never read a load balancer) and closed
    with the stack that owns the road."""

    def __init__(self, opener: Callable[[], ClientCreatorContext[Any]], stack: AsyncExitStack):
        self._opener = opener
        self._stack = stack
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = await self._stack.enter_async_context(self._opener())
        return self._client


class Ec2Road:
    """`await road.call("DescribeInstances", InstanceIds=[...])`, or a page at a time with
    `paginate`. Actions go by EC2's own names, as the limiters and the metrics know them.

    A caller that must act between the slot and the call (the job's create, fenced by its
    ENI's lease) takes the two steps itself: `await road.slot(action)`, then
    `await road.send(action, ...)` under its own retry policy (`road.retrying(...)`).
    """

    def __init__(
        self,
        client: EC2Client,
        limiters: Limiters,
        settings: Settings,
        timing: Timing,
        *,
        own: bool = True,
        elbv2: LazyClient | None = None,
    ) -> None:
        """`timing`: how the road's retries wait and its calls are timed. `own`: the road is
        to the fleet's own account and Region, whose ENI leases keep the keys they had before
        other places (tasks/keys.py eni_lease). `elbv2`: the place's Elastic Load Balancing
        client (None: the road reads no load balancer)."""
        self.client = client
        self.elbv2 = elbv2
        self.limiters = limiters
        self.settings = settings
        self.timing = timing
        self.own = own

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        """One call, its slot taken and retried under the policy until it is answered."""
        async for attempt in self.retrying():
            with attempt:
                await self.slot(action)
                return await self.send(action, **params)
        raise AssertionError("unreachable: the policy reraises")  # pragma: no cover

    async def paginate(
        self, action: str, key: str, *, retry: bool = True, **params: Any
    ) -> list[dict[str, Any]]:
        """Every item under `key` of a paginated call, each page a call of its own (a client
        that forgets the NextToken misses items). With `retry` False a failed page fails the
        whole reading: the caller's own policy reads again from the start."""
        items: list[dict[str, Any]] = []
        token: dict[str, Any] = {}
        while True:
            if retry:
                page = await self.call(action, **params, **token)
            else:
                await self.slot(action)
                page = await self.send(action, **params, **token)
            items += [dict(item) for item in page.get(key, [])]
            if not page.get("NextToken"):
                return items
            token = {"NextToken": page["NextToken"]}

    async def elbv2_pages(self, action: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item under `key` of an Elastic Load Balancing v2 call, page by page (its
        Marker/NextMarker), each page retried and paid for as an EC2 call is."""
        if self.elbv2 is None:
            raise RuntimeError("this road has no Elastic Load Balancing client")
        client = await self.elbv2.get()
        items: list[dict[str, Any]] = []
        marker: dict[str, Any] = {}
        while True:
            page: dict[str, Any] = {}
            async for attempt in self.retrying():
                with attempt:
                    await self.slot(action)
                    page = await self.send(action, _client=client, **params, **marker)
            items += [dict(item) for item in page.get(key, [])]
            if not page.get("NextMarker"):
                return items
            marker = {"Marker": page["NextMarker"]}

    def retrying(self, before_sleep: OnRetry | None = None) -> AsyncRetrying:
        """The retry policy, as every EC2 call is retried, within the job's deadline."""
        return retry_policy(
            deadline_s=self.settings.job_deadline_s,
            backoff_base_s=self.settings.backoff_base_s,
            backoff_cap_s=self.settings.backoff_cap_s,
            timing=self.timing,
            before_sleep=before_sleep,
        )

    async def slot(self, action: str) -> None:
        """Wait for a slot from the shared limiter of `action` (none if it has none)."""
        global _last_slow_slot_warning  # noqa: PLW0603 - one warning a minute per process
        limiter = self.limiters.of(action)
        if limiter is None:
            return
        warning = slow_slot_warning(await limiter.acquire(), self.settings, limiter.fleet_rate)
        now = self.timing.monotonic()
        if warning and now - _last_slow_slot_warning >= SLOW_SLOT_WARNING_EVERY_S:
            _last_slow_slot_warning = now
            log.warning(warning)

    async def send(
        self,
        action: str,
        *,
        timeout_s: float | None = None,
        _client: Any = None,
        **params: Any,
    ) -> dict[str, Any]:
        """One attempt, its slot already taken: timed, and a throttle told to the limiter.

        `timeout_s` bounds the whole call (botocore's timeouts bound each read), for a caller
        that must know when an unanswered call can no longer land. `_client`: another
        service's client of the road (elbv2), else EC2's.
        """
        method = getattr(_client or self.client, xform_name(action))
        try:
            async with ec2_call(action, self.timing.monotonic):
                answer = await asyncio.wait_for(method(**params), timeout_s)
        except Exception as error:
            if classify(error).throttled and (limiter := self.limiters.of(action)) is not None:
                await limiter.throttled()
            raise
        return dict(answer)


def slow_slot_warning(waited_s: float, settings: Settings, rate: float | None = None) -> str | None:
    """A slot wait long enough to threaten the visibility timeout, explained; else None.

    Every job a worker holds waits for its slot while its message stays unacked: when the
    fleet holds more jobs than the shared rate serves within the visibility timeout, Redis
    hands messages still waiting to a second worker (`rate`: the fleet's, which this
    process's MIRRORQ_EC2_RATE may not be). Harmless (same tokens, and a copy waits
    for the job's lease) but wasteful, and a sign the fleet is sized past the account's rate.
    """
    if waited_s < settings.visibility_timeout_s / 4:
        return None
    rate = settings.ec2_rate if rate is None else rate
    return (
        f"waited {waited_s:.0f} s for an EC2 slot: the fleet holds more jobs than "
        f"{rate:g} calls/s can serve within the {settings.visibility_timeout_s} s "
        "visibility timeout, so waiting messages may be handed to a second worker; lower "
        "MIRRORQ_CONCURRENCY or run fewer workers, or raise MIRRORQ_VISIBILITY_TIMEOUT_S"
    )


@asynccontextmanager
async def open_road(settings: Settings) -> AsyncIterator[Ec2Road]:
    """A planner's road (`mirror`, `reconcile`, `policy plan`, the listener, the API): its
    own client, and the fleet's limiters through a small Redis pool of its own."""
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(ec2_client(settings))
        redis = async_pool(settings.broker_url, settings, max_connections=PLANNER_REDIS_CONNECTIONS)
        stack.push_async_callback(redis.aclose)
        await stack.enter_async_context(primary_followed(redis))  # Sentinel: a failover
        elbv2 = LazyClient(lambda: elbv2_client(settings), stack)
        yield Ec2Road(client, Limiters(redis, settings, REAL), settings, REAL, elbv2=elbv2)
