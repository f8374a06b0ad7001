"""The fleet-wide EC2 rate limiter: one GCRA schedule per account, Region and action in Redis.

Every worker process on every host takes its slot from the same Redis script, so together
they stay under the bucket's rate. That rate (and burst) is one value for the fleet, kept in
the bucket's hash beside its schedule: set by `mirrorq rate set` (`set_bucket_config`), or
else by the first process to use the bucket, from its own settings. A process whose own
settings disagree follows the bucket's, and says so once. When EC2 still answers
RequestLimitExceeded (another tool shares the account, or the account's limit is lower), the
shared rate is cut multiplicatively and grows back additively while calls succeed (AIMD),
relative to the bucket's rate. `worker.gcra` is the
same arithmetic in Python: the specification these scripts implement, held to them by tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, overload

import redis
import redis.asyncio as aioredis

from config import Settings
from tasks import keys
from tasks.scripts import arguments
from worker.timing import Clock, Sleep, Timing

# Each script takes the bucket's key as KEYS[1] and its other arguments by name, as one JSON
# object in ARGV[1] (tasks/scripts.py says how), typed by the TypedDicts below: every one
# starts `local a = cjson.decode(ARGV[1])`.


class FleetArguments(TypedDict):
    """The caller's own rate and burst, as text: written to the bucket as given where it
    keeps none (`fleet`), so they read back as they were set."""

    own_rate: str
    own_burst: str


class ClockedArguments(FleetArguments):
    now: NotRequired[float]  # Unix time by the tests' clock; else Redis TIME


class AcquireArguments(ClockedArguments):
    recovery: float  # the share of the fleet's rate regained per second


class AdmitArguments(ClockedArguments):
    jobs: int  # the message's jobs
    horizon: float  # a job whose slot comes within this many seconds runs now
    grace: float  # the jobs last admitted hold their slots this long
    line: bool  # take the slots (false: only say how many would run now)


class ThrottledArguments(ClockedArguments):
    decrease: float  # the cut: the rate is multiplied by this
    cooldown: float  # reports within this of the last event are of the same one
    quiet: float  # an event after this long without one is taken for jitter


class ConfigureArguments(TypedDict):
    rate: str  # the fleet's rate, as text (0: no limit)
    burst: str
    now: NotRequired[float]


def own_arguments(own: FleetRate) -> FleetArguments:
    """A process's own rate and burst as the scripts take them: as text, as redis-py sends a
    number, so the bucket keeps the text it always has (`10.0`, `5`)."""
    return {"own_rate": repr(own.rate), "own_burst": repr(own.burst)}


# Redis TIME is the one clock every host shares, and a GCRA schedule kept by several hosts
# needs one clock. Tests pass their own `now` instead (the arguments' `now`). The scripts
# that take a clock are registered with this prefix.
_CLOCK = """
local function clock(given)
  if given then return given end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# The bucket's configuration, kept beside its schedule: its rate and burst are the fleet's,
# whoever calls. The caller's own (`a.own_rate`, `a.own_burst`: FleetArguments) is written
# only where none is kept, and not at all when its rate is 0 (a process without a limit of
# its own follows the fleet's; only `mirrorq rate set --rate 0` lifts the limit for all). A
# configuration set for the fleet (source 'set') is kept until changed; a process's own
# expires with the schedule.
_FLEET = """
local function fleet(key, a)
  local own_rate, own_burst = a.own_rate, a.own_burst
  local kept = redis.call('HMGET', key, 'configured', 'burst', 'source')
  local configured, burst, source = tonumber(kept[1]), tonumber(kept[2]), kept[3]
  if configured == nil then
    if tonumber(own_rate) <= 0 then return nil, nil, source end
    configured, source = tonumber(own_rate), 'setting'
    redis.call('HSET', key, 'configured', own_rate, 'source', source)
  end
  if burst == nil then
    burst = tonumber(own_burst)
    redis.call('HSET', key, 'burst', own_burst)
  end
  return configured, burst, source
end
local function keep(key, source)
  if source ~= 'set' then redis.call('EXPIRE', key, 86400) end
end
local function kept(key, wait)
  local fields = redis.call('HMGET', key, 'epoch', 'configured', 'burst')
  return {wait, fields[1] or '0', fields[2], fields[3]}
end
"""

# Reserve the next slot (AcquireArguments). The rate first recovers additively for the time
# since the last call; the slot is `tat`, pushed one interval on; a caller may run `burst`
# intervals ahead. Redis truncates a Lua number it is returned to an integer, so floats come
# back as strings. The answer: the wait, the epoch, and the bucket's configuration (rate,
# burst; nil when it has none).
_ACQUIRE = """
local a = cjson.decode(ARGV[1])
local now = clock(a.now)
local configured, burst, source = fleet(KEYS[1], a)
local recovery = a.recovery
if configured == nil or configured <= 0 then return kept(KEYS[1], '0') end
local state = redis.call('HMGET', KEYS[1], 'rate', 'updated', 'tat')
local rate = tonumber(state[1]) or configured
local updated = tonumber(state[2]) or now
local tat = tonumber(state[3]) or now
rate = math.min(configured, rate + recovery * configured * math.max(0, now - updated))
if tat < now then tat = now end
local interval = 1 / rate
tat = tat + interval
local wait = math.max(0, tat - burst * interval - now)
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'updated', tostring(now), 'tat', tostring(tat))
keep(KEYS[1], source)
return kept(KEYS[1], tostring(wait))
"""

# Admit a message of `a.jobs` jobs (worker/admission.py) with a horizon of `a.horizon` s
# (AdmitArguments): how many run now, the wait until the first of the others' turn, the
# interval and the epoch (gcra.admit).
_ADMIT = """
local a = cjson.decode(ARGV[1])
local now = clock(a.now)
local jobs, horizon, grace, line = a.jobs, a.horizon, a.grace, a.line
local configured, burst, source = fleet(KEYS[1], a)
local epoch = redis.call('HGET', KEYS[1], 'epoch') or '0'
if configured == nil or configured <= 0 then return {jobs, '0', '0', epoch} end
local state = redis.call('HMGET', KEYS[1], 'rate', 'tat', 'defer_tat', 'admit_tat', 'admitted')
local rate = tonumber(state[1]) or configured
local start = math.max(tonumber(state[2]) or now, now)
local admitted = tonumber(state[5])
if admitted ~= nil and now - admitted <= grace and tonumber(state[4]) ~= nil then
  start = math.max(start, tonumber(state[4]))
end
local interval = 1 / rate
local first = start + interval - burst * interval
local soon = 0
if first - now <= horizon then
  soon = math.min(jobs, math.floor((now + horizon - first) / interval) + 1)
end
if soon > 0 and line then
  redis.call('HSET', KEYS[1], 'admit_tat', tostring(start + soon * interval),
             'admitted', tostring(now))
end
keep(KEYS[1], source)
if soon == jobs or not line then return {soon, '0', tostring(interval), epoch} end
local turn = first + soon * interval
turn = math.max(turn, tonumber(state[3]) or turn)
redis.call('HSET', KEYS[1], 'defer_tat', tostring(turn + (jobs - soon) * interval))
return {soon, tostring(math.max(0, turn - now)), tostring(interval), epoch}
"""

# EC2 said RequestLimitExceeded. In-flight calls report one event many times: only the first
# report within `cooldown` acts. An event after a quiet spell is taken for jitter: EC2's
# bucket is empty, so our burst is spent, but the rate stands. An event soon after another
# means the rate is too high: cut it (never below 1 % of the fleet's rate, nor one call per
# 10 s) and start a new epoch, voiding the slots reserved at the old rate (their holders take
# new ones). ThrottledArguments.
_THROTTLED = """
local a = cjson.decode(ARGV[1])
local now = clock(a.now)
local configured, burst, source = fleet(KEYS[1], a)
local decrease, cooldown, quiet = a.decrease, a.cooldown, a.quiet
redis.call('HINCRBY', KEYS[1], 'throttles', 1)
keep(KEYS[1], source)
if configured == nil or configured <= 0 then return '0' end
local floor = math.max(0.1, configured / 100)
local state = redis.call('HMGET', KEYS[1], 'rate', 'last_event', 'tat')
local rate = tonumber(state[1]) or configured
local last_event = tonumber(state[2]) or 0
local tat = tonumber(state[3]) or now
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

# The bucket's configuration as a process finds it at start: written from its own where
# none is kept, as the first acquire would (FleetArguments). The answer: rate, burst (nil
# when none).
_AGREE = """
local a = cjson.decode(ARGV[1])
local configured, burst, source = fleet(KEYS[1], a)
keep(KEYS[1], source)
local answer = kept(KEYS[1], '0')
return {answer[3], answer[4]}
"""

# `mirrorq rate set` (and a policy's accounts): the fleet's rate and burst, kept until
# changed, in force at once. A new epoch voids the slots reserved at the old rate; the
# schedule is held to a spent burst ahead at the new rate, so callers queued behind a slow
# rate are not kept waiting once it is raised (ConfigureArguments).
_CONFIGURE = """
local a = cjson.decode(ARGV[1])
local now = clock(a.now)
local rate, burst = tonumber(a.rate), tonumber(a.burst)
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat'))
if tat and rate > 0 then
  redis.call('HSET', KEYS[1], 'tat', tostring(math.min(tat, now + burst / rate)))
end
redis.call('HSET', KEYS[1], 'configured', a.rate, 'burst', a.burst, 'source', 'set',
           'rate', a.rate)
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HDEL', KEYS[1], 'defer_tat')
redis.call('PERSIST', KEYS[1])
return 1
"""

COOLDOWN_S = 0.5  # reports of one throttling event arrive within this
QUIET_S = 10.0  # a throttle after this long without one is taken for jitter


RATE_SETTINGS = ("MIRRORQ_EC2_RATE", "MIRRORQ_EC2_BURST")
DESCRIBE_RATE_SETTINGS = ("MIRRORQ_EC2_DESCRIBE_RATE", "MIRRORQ_EC2_DESCRIBE_BURST")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetRate:
    """A bucket's configuration: its rate (calls/s, 0 = no limit) and burst."""

    rate: float
    burst: int

    def __str__(self) -> str:
        return "no limit" if self.rate <= 0 else f"{self.rate:g}/s (burst {self.burst})"


@dataclass(frozen=True)
class RateSnapshot:
    rate: float  # in force now (cut by AIMD after throttles)
    configured: float  # the fleet's
    throttles: int
    burst: int | None = None
    source: str | None = None  # gcra.SET (for the fleet, kept) or gcra.SETTING (a process's)


class SharedRateLimiter:
    """`await acquire()` before each EC2 call; `await throttled()` when EC2 said so.

    `rate` and `burst` are this process's own settings (named by `settings`): they become the
    bucket's only if it has no configuration yet. Whatever the bucket keeps is what the
    schedule runs at, for every process; one whose own disagrees says so once (`fleet`).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        rate: float,
        burst: int,
        *,
        decrease: float = 0.7,
        recovery: float = 0.05,
        sleep: Sleep,
        settings: tuple[str, str] = RATE_SETTINGS,
        clock: Clock | None = None,
    ) -> None:
        """`sleep`: how a caller waits for its slot (the worker's). `clock` None reads Redis
        TIME, the schedule's, as production must; tests pass a clock they drive."""
        self.key = key
        self.rate = rate
        self.burst = burst
        self.settings = settings
        self.fleet: FleetRate | None = None  # the bucket's, as last seen (None: it has none)
        self._decrease = decrease
        self._recovery = recovery
        self._sleep = sleep
        self._clock = clock
        self._acquire = client.register_script(_CLOCK + _FLEET + _ACQUIRE)
        self._throttled = client.register_script(_CLOCK + _FLEET + _THROTTLED)
        self._admit = client.register_script(_CLOCK + _FLEET + _ADMIT)
        self._redis = client

    @property
    def fleet_rate(self) -> float:
        """The rate this limiter's calls are paid at: the fleet's once seen, else our own."""
        return self.rate if self.fleet is None else self.fleet.rate

    async def acquire(self) -> float:
        """Wait for this caller's slot; return how long that was.

        A slot reserved before a cut is given up for a new one at the new rate: otherwise
        every call already scheduled would still go out at the rate EC2 just refused.
        """
        waited = 0.0
        while True:
            named: AcquireArguments = {**self._own(), "recovery": self._recovery}
            answer = await self._acquire(keys=[self.key], args=arguments(named))
            wait, epoch, configured, burst = (_text(part) for part in answer)
            self.fleet = _fleet_rate(configured, burst)
            warn_if_disagreeing(
                self.key, FleetRate(self.rate, self.burst), self.fleet, self.settings
            )
            if float(wait or 0) <= 0:
                return waited
            await self._sleep(float(wait or 0))
            waited += float(wait or 0)
            if (_text(await self._redis.hget(self.key, "epoch")) or "0") == epoch:
                return waited

    async def admit(
        self, jobs: int, horizon: float, grace: float, *, line: bool = True
    ) -> tuple[int, float, float, int]:
        """Admit a message of `jobs` jobs (worker/admission.py): how many run now, the
        seconds until the first of the others' turn, the interval between turns, and the
        bucket's epoch (a rate set or cut since voids the turn)."""
        named: AdmitArguments = {
            **self._own(),
            "jobs": jobs,
            "horizon": horizon,
            "grace": grace,
            "line": line,
        }
        soon, later, interval, epoch = await self._admit(keys=[self.key], args=arguments(named))
        return int(soon), float(_text(later) or 0), float(_text(interval) or 0), int(epoch)

    async def epoch(self) -> int:
        """The bucket's epoch now: one more with each rate set and each AIMD cut."""
        return int(_text(await self._redis.hget(self.key, "epoch")) or 0)

    async def throttled(self) -> float:
        """Report RequestLimitExceeded; return the shared rate now in force (0: no limit)."""
        # One cut per event, however many in-flight calls report it: calls answered within
        # the cooldown were sent before the cut.
        named: ThrottledArguments = {
            **self._own(),
            "decrease": self._decrease,
            "cooldown": COOLDOWN_S,
            "quiet": QUIET_S,
        }
        return float(await self._throttled(keys=[self.key], args=arguments(named)))

    def _own(self) -> ClockedArguments:
        """What every call passes: this process's own rate and burst, and the tests' clock's
        `now` if there is one (else the script reads Redis TIME)."""
        own = own_arguments(FleetRate(self.rate, self.burst))
        named: ClockedArguments = {"own_rate": own["own_rate"], "own_burst": own["own_burst"]}
        if self._clock is not None:
            named["now"] = self._clock()
        return named

    async def snapshot(self) -> RateSnapshot:
        return _snapshot(await self._redis.hgetall(self.key), self.rate)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _fleet_rate(configured: str | None, burst: str | None) -> FleetRate | None:
    if configured is None:
        return None
    return FleetRate(float(configured), int(burst or 0))


def _snapshot(state: dict[Any, Any], configured: float) -> RateSnapshot:
    """The bucket as the fleet left it: its configured rate wins over the reader's own."""
    text = {_text(k): _text(v) for k, v in state.items()}
    configured = float(text.get("configured") or configured)
    return RateSnapshot(
        float(text.get("rate") or configured),
        configured,
        int(text.get("throttles") or 0),
        int(text.get("burst") or 0) or None,
        text.get("source"),
    )


def bucket_of(key: str) -> tuple[str, str, str] | None:
    """(account, Region, action) of a limiter's key; None for a key not made by
    `keys.rate_limit`."""
    prefix = keys.rate_limit("", "", "").rstrip(":") + ":"
    parts = key.removeprefix(prefix).rsplit(":", 2)
    if not key.startswith(prefix) or len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


# One warning per bucket, own settings and fleet configuration in a process, however many
# limiters (the worker's start-up check, its runtime's, a planner's) see it.
_warned: set[tuple[str, FleetRate, FleetRate]] = set()


def disagreement(
    key: str, own: FleetRate, fleet: FleetRate | None, settings: tuple[str, str]
) -> str | None:
    """What to tell the operator when this process's own setting is not the bucket's; None
    when they agree (or the bucket has none yet, so this process's is the one in force)."""
    if fleet is None or (own.rate == fleet.rate and (own.rate <= 0 or own.burst == fleet.burst)):
        return None
    mine = f"{settings[0]}={own.rate:g}"
    if own.rate > 0 and own.burst != fleet.burst:
        mine += f" and {settings[1]}={own.burst}"
    account, region, action = bucket_of(key) or (key, "REGION", "ACTION")
    return (
        f"{mine} here, but the fleet's rate for {account} {region} {action} is {fleet}, kept "
        "in Redis: this process follows the fleet's. To change it for every process: mirrorq "
        f"rate set --account {account} --region {region} --action {action} --rate N [--burst N]"
    )


def warn_if_disagreeing(
    key: str, own: FleetRate, fleet: FleetRate | None, settings: tuple[str, str]
) -> None:
    if fleet is None or (key, own, fleet) in _warned:
        return
    message = disagreement(key, own, fleet, settings)
    if message is not None:
        _warned.add((key, own, fleet))
        log.warning(message)


CREATE_ACTION = "CreateTrafficMirrorSession"
DESCRIBE_ACTION = "DescribeTrafficMirrorSessions"
# Every Describe action mirrorq calls (mirrorq/inventory.py, worker/sessions.py): what
# `mirrorq rate set --describe` sets.
DESCRIBE_ACTIONS = (
    "DescribeInstanceTypes",
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "DescribeTrafficMirrorFilters",
    "DescribeTrafficMirrorSessions",
    "DescribeTrafficMirrorTargets",
    "DescribeVpcEndpoints",
    # Elastic Load Balancing's, not EC2's (mirrorq/targets.py): a bucket of its own too.
    "DescribeLoadBalancers",
)


def own_rate(settings: Settings, action: str) -> tuple[FleetRate, tuple[str, str]]:
    """This process's own rate and burst for `action`'s category, and the settings naming
    them: mutating actions MIRRORQ_EC2_RATE, each Describe action MIRRORQ_EC2_DESCRIBE_RATE."""
    if action.startswith("Describe"):
        return FleetRate(settings.ec2_describe_rate, settings.ec2_describe_burst), (
            DESCRIBE_RATE_SETTINGS
        )
    return FleetRate(settings.ec2_rate, settings.ec2_burst), RATE_SETTINGS


class Limiters:
    """The fleet's limiters of one account and Region, one per EC2 action, made as they are
    first asked for: EC2 keeps a bucket per action (sized by the action's category), so each
    action's throttles slow only that action. The rate each runs at is its bucket's, kept in
    Redis for the fleet; this process's settings (MIRRORQ_EC2_RATE for creates and other
    mutating actions, MIRRORQ_EC2_DESCRIBE_RATE for each Describe action) only seed a bucket
    that has none. A limiter exists even where this process's own rate is 0: the fleet's may
    not be."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        timing: Timing,
        *,
        account: str | None = None,
        region: str | None = None,
    ) -> None:
        self.account = account or settings.aws_account_id
        self.region = region or settings.region
        self._client = client
        self._settings = settings
        self._timing = timing
        self._made: dict[str, SharedRateLimiter] = {}

    @property
    def create(self) -> SharedRateLimiter:
        return self.of(CREATE_ACTION)

    @overload
    def of(self, action: str) -> SharedRateLimiter: ...
    @overload
    def of(self, action: None) -> None: ...
    def of(self, action: str | None) -> SharedRateLimiter | None:
        """The limiter `action`'s calls are paid at; None for no action."""
        if not action:
            return None
        if action not in self._made:
            self._made[action] = self._limiter(action)
        return self._made[action]

    def _limiter(self, action: str) -> SharedRateLimiter:
        own, names = own_rate(self._settings, action)
        return SharedRateLimiter(
            self._client,
            keys.rate_limit(self.account, self.region, action),
            own.rate,
            own.burst,
            decrease=self._settings.ec2_rate_decrease,
            recovery=self._settings.ec2_rate_recovery,
            sleep=self._timing.sleep,
            settings=names,
        )


def check_fleet_rates(
    client: redis.Redis, settings: Settings, actions: tuple[str, ...] = (CREATE_ACTION,)
) -> dict[str, FleetRate | None]:
    """At a worker's start: each bucket's configuration (this process's own written where
    there is none), and one warning for each that disagrees with this process's settings."""
    agree = client.register_script(_FLEET + _AGREE)
    found: dict[str, FleetRate | None] = {}
    for action in actions:
        key = keys.rate_limit(settings.aws_account_id, settings.region, action)
        own, names = own_rate(settings, action)
        answer = agree(keys=[key], args=arguments(own_arguments(own)))
        configured, burst = (_text(part) for part in answer)
        found[action] = _fleet_rate(configured, burst)
        warn_if_disagreeing(key, own, found[action], names)
    return found


def set_bucket_config(
    client: redis.Redis,
    account: str,
    region: str,
    action: str,
    *,
    rate: float,
    burst: int,
    now: float | None = None,
) -> None:
    """Set one bucket's rate (0 = no limit) and burst for the whole fleet, kept in Redis until
    changed: every process's next slot runs at it. `mirrorq rate set` calls this, as will a
    policy's `[[accounts]]` table. `now` is for tests (Redis TIME otherwise)."""
    if rate < 0 or burst < 1:
        raise ValueError("a rate is 0 (no limit) or more, a burst 1 or more")
    configure = client.register_script(_CLOCK + _CONFIGURE)
    named: ConfigureArguments = {"rate": repr(rate), "burst": repr(burst)}
    if now is not None:
        named["now"] = now
    configure(keys=[keys.rate_limit(account, region, action)], args=arguments(named))


def bucket_snapshots(
    client: redis.Redis, account: str | None = None, region: str | None = None
) -> dict[tuple[str, str, str], RateSnapshot]:
    """Every bucket kept in Redis, by (account, Region, action): for `mirrorq rate show`."""
    prefix = keys.rate_limit("", "", "").rstrip(":") + ":"
    found = {}
    for key in client.scan_iter(match=f"{prefix}*", count=100):
        bucket = bucket_of(_text(key) or "")
        if bucket is None or (account or bucket[0], region or bucket[1]) != bucket[:2]:
            continue
        state = client.hgetall(key)
        if state:
            found[bucket] = _snapshot(state, 0.0)
    return dict(sorted(found.items()))


def read_create_rate(client: redis.Redis, settings: Settings) -> RateSnapshot | None:
    """The shared create rate as the fleet left it (for the CLI); None if none is kept."""
    key = keys.rate_limit(settings.aws_account_id, settings.region, CREATE_ACTION)
    state = client.hgetall(key)
    return _snapshot(state, settings.ec2_rate) if state else None
