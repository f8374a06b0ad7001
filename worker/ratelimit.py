"""The fleet-wide EC2 rate limiter: one GCRA schedule per account, Region and action in Redis.

Every worker process on every host takes its slot from the same Redis script, so together
they stay under the configured rate. When EC2 still answers RequestLimitExceeded (another
tool shares the account, or the account's limit is lower), the shared rate is cut
multiplicatively and grows back additively while calls succeed (AIMD). `worker.gcra` is the
same arithmetic in Python: the specification these scripts implement, held to them by tests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from config import Settings
from tasks import keys
from worker.timing import Clock, Sleep

# Redis TIME is the one clock every host shares, and a GCRA schedule kept by several hosts
# needs one clock. Tests pass their own `now` instead, as the scripts' last argument. Both
# scripts are registered with this prefix.
_CLOCK = """
local function clock(given)
  if given then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# Reserve the next slot. The rate first recovers additively for the time since the last
# call; the slot is `tat`, pushed one interval on; a caller may run `burst` intervals ahead.
# Redis truncates Lua numbers to integers, so floats travel as strings.
_ACQUIRE = """
local now = clock(ARGV[4])
local configured, burst, recovery = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'rate', 'updated', 'tat')
local rate = tonumber(state[1]) or configured
local updated = tonumber(state[2]) or now
local tat = tonumber(state[3]) or now
rate = math.min(configured, rate + recovery * configured * math.max(0, now - updated))
if tat < now then tat = now end
local interval = 1 / rate
tat = tat + interval
local wait = math.max(0, tat - burst * interval - now)
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'updated', tostring(now), 'tat', tostring(tat),
           'configured', ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400)
return tostring(wait) .. ' ' .. (redis.call('HGET', KEYS[1], 'epoch') or '0')
"""

# EC2 said RequestLimitExceeded. In-flight calls report one event many times: only the first
# report within `cooldown` acts. An event after a quiet spell is taken for jitter: EC2's
# bucket is empty, so our burst is spent, but the rate stands. An event soon after another
# means the rate is too high: cut it and start a new epoch, voiding the slots reserved at
# the old rate (their holders take new ones).
_THROTTLED = """
local now = clock(ARGV[7])
local configured, burst, decrease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local floor, cooldown, quiet = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local state = redis.call('HMGET', KEYS[1], 'rate', 'last_event', 'tat')
local rate = tonumber(state[1]) or configured
local last_event = tonumber(state[2]) or 0
local tat = tonumber(state[3]) or now
redis.call('HINCRBY', KEYS[1], 'throttles', 1)
if now - last_event < cooldown then return tostring(rate) end
if now - last_event < quiet then
  rate = math.max(floor, rate * decrease)
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  tat = now + burst / rate
else
  tat = math.max(tat, now + burst / rate)
end
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'last_event', tostring(now),
           'updated', tostring(now), 'tat', tostring(tat))
return tostring(rate)
"""

COOLDOWN_S = 0.5  # reports of one throttling event arrive within this
QUIET_S = 10.0  # a throttle after this long without one is taken for jitter


@dataclass(frozen=True)
class RateSnapshot:
    rate: float
    configured: float
    throttles: int


class SharedRateLimiter:
    """`await acquire()` before each EC2 call; `await throttled()` when EC2 said so."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        rate: float,
        burst: int,
        *,
        decrease: float = 0.7,
        recovery: float = 0.05,
        sleep: Sleep = asyncio.sleep,
        clock: Clock | None = None,
    ) -> None:
        """`clock` None reads Redis TIME, as production must; tests pass a clock they drive."""
        self.key = key
        self.rate = rate
        self.burst = burst
        # Never below one call per 10 s.
        self.floor = max(0.1, rate / 100)
        self._decrease = decrease
        self._recovery = recovery
        self._sleep = sleep
        self._clock = clock
        self._acquire = client.register_script(_CLOCK + _ACQUIRE)
        self._throttled = client.register_script(_CLOCK + _THROTTLED)
        self._redis = client

    async def acquire(self) -> float:
        """Wait for this caller's slot; return how long that was.

        A slot reserved before a cut is given up for a new one at the new rate: otherwise
        every call already scheduled would still go out at the rate EC2 just refused.
        """
        waited = 0.0
        while True:
            answer = await self._acquire(
                keys=[self.key], args=[self.rate, self.burst, self._recovery, *self._now()]
            )
            wait, epoch = (answer.decode() if isinstance(answer, bytes) else answer).split()
            if float(wait) <= 0:
                return waited
            await self._sleep(float(wait))
            waited += float(wait)
            current = await self._redis.hget(self.key, "epoch")
            if (current.decode() if isinstance(current, bytes) else current or "0") == epoch:
                return waited

    async def throttled(self) -> float:
        """Report RequestLimitExceeded; return the shared rate now in force."""
        # One cut per event, however many in-flight calls report it: calls answered within
        # the cooldown were sent before the cut.
        args = [self.rate, self.burst, self._decrease, self.floor, COOLDOWN_S, QUIET_S]
        return float(await self._throttled(keys=[self.key], args=[*args, *self._now()]))

    def _now(self) -> list[float]:
        return [] if self._clock is None else [self._clock()]

    async def snapshot(self) -> RateSnapshot:
        return _snapshot(await self._redis.hgetall(self.key), self.rate)


def _snapshot(state: dict[Any, Any], configured: float) -> RateSnapshot:
    """What the workers last wrote; their configured rate wins over the reader's own."""
    text = {(k.decode() if isinstance(k, bytes) else k): v for k, v in state.items()}
    configured = float(text.get("configured") or configured)
    return RateSnapshot(
        float(text.get("rate") or configured), configured, int(text.get("throttles") or 0)
    )


CREATE_ACTION = "CreateTrafficMirrorSession"
DESCRIBE_ACTION = "DescribeTrafficMirrorSessions"


class Limiters:
    """The fleet's limiters of one account and Region, one per EC2 action, made as they are
    first asked for: EC2 keeps a bucket per action (sized by the action's category), so each
    action's throttles slow only that action. Creates and other mutating actions are held to
    MIRRORQ_EC2_RATE, each Describe action (non-mutating) to MIRRORQ_EC2_DESCRIBE_RATE."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        *,
        account: str | None = None,
        region: str | None = None,
    ) -> None:
        self.account = account or settings.aws_account_id
        self.region = region or settings.region
        self._client = client
        self._settings = settings
        self._made: dict[str, SharedRateLimiter | None] = {}

    @property
    def create(self) -> SharedRateLimiter | None:
        return self.of(CREATE_ACTION)

    def of(self, action: str | None) -> SharedRateLimiter | None:
        """The limiter `action`'s calls are paid at; None when its rate is 0 (unlimited)."""
        if not action:
            return None
        if action not in self._made:
            self._made[action] = self._limiter(action)
        return self._made[action]

    def _limiter(self, action: str) -> SharedRateLimiter | None:
        s = self._settings
        describe = action.startswith("Describe")
        rate = s.ec2_describe_rate if describe else s.ec2_rate
        if rate <= 0:
            return None
        return SharedRateLimiter(
            self._client,
            keys.rate_limit(self.account, self.region, action),
            rate,
            s.ec2_describe_burst if describe else s.ec2_burst,
            decrease=s.ec2_rate_decrease,
            recovery=s.ec2_rate_recovery,
        )


def read_create_rate(client: redis.Redis, settings: Settings) -> RateSnapshot | None:
    """The shared create rate as the workers left it (for the CLI); None if none is kept."""
    key = keys.rate_limit(settings.aws_account_id, settings.region, CREATE_ACTION)
    state = client.hgetall(key)
    return _snapshot(state, settings.ec2_rate) if state else None
