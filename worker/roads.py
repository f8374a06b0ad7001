"""Where a job runs, and the road (worker/ec2.py) to each place: a bounded cache of them.

A *place* is the Region a job runs in and the IAM role it runs as (with the ExternalId the
role's trust policy asks for); a job that names neither runs at the fleet's default place:
the process's default credentials in MIRRORQ_REGION, on the road every worker had before
places. `place_of` is the one reading of a job's place, from its record or its envelope.

Each other place in use has a road of its own: its own aiobotocore client, signed with that
role's credentials, and its own limiters, keyed by the place's account and Region, so a
throttled account slows only itself. `Roads` keeps at most MIRRORQ_CLIENT_CACHE of them
open besides the default one, closing the least recently used idle one first; a road a
running job still uses is never closed (each use is counted), so the cache may stand over
its size while more places than that are running at once. All are closed on shutdown.

Credentials come from STS AssumeRole, made by botocore's own machinery: an
`AioAssumeRoleCredentialFetcher` (a new STS client for every call, so every refresh works,
not only the first: the refresher aiobotocore's `create_assume_role_refresher` builds
re-enters one client context, whose coroutine can be awaited once, aiobotocore issue #1317)
behind `AssumedRoleCredentials`, which refreshes them before they expire. The source of the
AssumeRole calls is the process's default credentials, themselves refreshed by botocore when
they are temporary (a chained role: an instance profile, a profile's assumed role, ...).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession, get_session

from config import Settings
from tasks.connections import async_pool, primary_followed
from tasks.contract import Envelope, Placement
from tasks.records import JobResult
from worker.aws import client_config, elbv2_client
from worker.ec2 import PLANNER_REDIS_CONNECTIONS, Ec2Road, LazyClient
from worker.ratelimit import Limiters
from worker.redaction import REDACTOR
from worker.timing import REAL

if TYPE_CHECKING:  # stubs only: a development dependency
    from types_aiobotocore_ec2 import EC2Client

log = logging.getLogger(__name__)
# botocore refreshes temporary credentials 15 minutes (advisory: one caller refreshes, the
# others carry on) and 10 minutes (mandatory: every caller waits) before they expire, for
# credentials that last an hour or more. Ours refresh at the same shares of their lifetime
# when it is shorter, down to the seconds of the emulator's tests, instead of before every
# call: advisory with half of it left, mandatory with a third.
BOTOCORE_ADVISORY_S = 15 * 60  # botocore.credentials' _DEFAULT_ADVISORY_REFRESH_TIMEOUT
BOTOCORE_MANDATORY_S = 10 * 60  # ... and _DEFAULT_MANDATORY_REFRESH_TIMEOUT
ADVISORY_SHARE = 1 / 2
MANDATORY_SHARE = 1 / 3
STS_SESSION_NAME_MAX = 64
NEVER_CACHED_S = 10**9  # longer than any set lasts: the fetcher's cache never answers
# An AWS account's id. MIRRORQ_AWS_ACCOUNT_ID may be a name for the fleet's scope (`prod`):
# only a value of this shape is taken for the default credentials' account itself.
AWS_ACCOUNT_ID = re.compile(r"[0-9]{12}")


@dataclass(frozen=True)
class Place:
    """Where a job runs: a Region, and the role to assume there (None: the default
    credentials), with the ExternalId its trust policy asks for."""

    region: str
    role_arn: str | None = None
    external_id: str | None = None

    @property
    def account_id(self) -> str | None:
        """The role's account, read from its ARN; None for the default credentials'."""
        return Placement.model_construct(role_arn=self.role_arn).account_id

    def describe(self) -> str:
        who = f"role {self.role_arn}" if self.role_arn else "the default credentials"
        return f"{who} in {self.region}"


def place_at(placement: Placement, default_region: str) -> Place:
    """A placement's place (a job's, a policy account's Region): its Region, else the fleet's."""
    return Place(placement.region or default_region, placement.role_arn, placement.external_id)


def place_of(envelope: Envelope | None, record: JobResult | None, default_region: str) -> Place:
    """The one reading of where a job runs: its record's placement when the record carries
    one (a producer that accepted it said where), else its envelope's (a `send_task` with no
    record), else the fleet's default place."""
    source: Any = record if record is not None and "role_arn" in record else None
    if source is not None:
        region, role_arn, external_id = (
            source.get("region"),
            source.get("role_arn"),
            source.get("external_id"),
        )
    elif envelope is not None:
        region, role_arn, external_id = envelope.region, envelope.role_arn, envelope.external_id
    else:
        region = role_arn = external_id = None
    return Place(region or default_region, role_arn or None, (role_arn and external_id) or None)


class AssumedRoleCredentials(AioDeferredRefreshableCredentials):
    """A role's credentials, fetched on first use and refreshed by botocore's machinery.

    Two things are added to it, each when a set arrives: the set is remembered by the log
    redactor (worker/redaction.py), and the refresh windows are scaled to the set's lifetime
    (ADVISORY_SHARE and MANDATORY_SHARE of it, never more than botocore's 15 and 10 minutes),
    per instance. `refreshes` counts the sets received.
    """

    def __init__(self, fetcher: AioAssumeRoleCredentialFetcher) -> None:
        super().__init__(fetcher.fetch_credentials, "assume-role")
        self.refreshes = 0

    def _publish_refresh(self) -> None:
        # botocore's hook, called with each new set once it is checked (the stubs lack it).
        me: Any = self
        super()._publish_refresh()  # type: ignore[misc]
        frozen = me._frozen_credentials
        REDACTOR.remember(frozen.access_key, frozen.secret_key, frozen.token)
        lifetime = max(0.0, (me._expiry_time - me._time_fetcher()).total_seconds())
        me._advisory_refresh_timeout = min(BOTOCORE_ADVISORY_S, lifetime * ADVISORY_SHARE)
        me._mandatory_refresh_timeout = min(BOTOCORE_MANDATORY_S, lifetime * MANDATORY_SHARE)
        self.refreshes += 1


def session_name() -> str:
    """RoleSessionName: which process assumed the role, as CloudTrail shows it."""
    name = re.sub(r"[^\w+=,.@-]", "-", f"mirrorq-{socket.gethostname()}-{os.getpid()}")
    return name[:STS_SESSION_NAME_MAX]


def sts_endpoint(settings: Settings) -> str | None:
    """MIRRORQ_STS_ENDPOINT_URL, else the EC2 endpoint's (the emulator serves STS there),
    else None: AWS's regional STS for MIRRORQ_REGION."""
    return settings.sts_endpoint_url or settings.ec2_endpoint_url


async def assumed_role(
    session: AioSession, settings: Settings, role_arn: str, external_id: str | None
) -> AssumedRoleCredentials:
    """Credentials for `role_arn`, assumed with the session's own (default) credentials on
    the fleet's STS; nothing is called until they are first used."""
    source = await session.get_credentials()
    extra: dict[str, str] = {"RoleSessionName": session_name()}
    if external_id:
        extra["ExternalId"] = external_id
        # Never in a log line, however printed (README); a short one (a word a line may hold
        # for another reason) is left to the patterns that find it by its key.
        REDACTOR.remember(external_id, shortest=8)
    fetcher = AioAssumeRoleCredentialFetcher(
        cast(Any, functools.partial)(
            session.create_client,
            region_name=settings.region,
            endpoint_url=sts_endpoint(settings),
            config=client_config(settings),
        ),
        source,
        role_arn,
        extra_args=extra,
        # Refreshes are the credentials' decision alone: the fetcher's cache never answers one.
        expiry_window_seconds=NEVER_CACHED_S,
    )
    return AssumedRoleCredentials(fetcher)


@dataclass
class _Open:
    road: Ec2Road
    stack: AsyncExitStack
    credentials: AssumedRoleCredentials | None
    users: int = 0


class Roads:
    """The roads of every place in use: `async with roads.use(place) as road: ...`. Each
    waits and reads the time on the default road's `timing`."""

    def __init__(
        self, session: AioSession, default: Ec2Road, redis: aioredis.Redis, settings: Settings
    ) -> None:
        self.settings = settings
        self.default_place = Place(settings.region)
        self.default = default
        self.timing = default.timing
        self._session = session
        self._redis = redis
        self._open: OrderedDict[Place, _Open] = OrderedDict()
        # A role's credentials serve it in every Region (STS's are global): one set per role
        # and ExternalId, shared by its open roads, dropped with the last of them.
        self._roles: dict[tuple[str, str | None], AssumedRoleCredentials] = {}
        self._lock = asyncio.Lock()
        self._default_account: str | None = None  # STS's answer, once it has given one
        self._account_lock = asyncio.Lock()
        self.closed = 0  # roads closed to keep the cache to its size

    @asynccontextmanager
    async def use(self, place: Place) -> AsyncIterator[Ec2Road]:
        """The place's road, kept open while it is used."""
        if place == self.default_place:
            yield self.default
            return
        async with self._lock:
            entry = self._open.get(place)
            if entry is None:
                entry = self._open[place] = await self._build(place)
            self._open.move_to_end(place)
            entry.users += 1
        try:
            yield entry.road
        finally:
            entry.users -= 1
            await self._trim()

    async def default_account(self) -> str | None:
        """The default credentials' account id, from STS GetCallerIdentity (asked once a
        process). The callers compare it with targets' OwnerId, events' and roles' accounts,
        all real ids, so the credentials' own answer wins over MIRRORQ_AWS_ACCOUNT_ID, which
        is the fleet's scope name first (`prod`, or an id): a 12-digit value that disagrees
        is said once, in a WARNING. While STS cannot say: a 12-digit value is taken (and
        kept: STS is not asked again), a name gives None (asked again for the next road)."""
        async with self._account_lock:
            if self._default_account is None:
                self._default_account = await self._learn_account()
            return self._default_account

    async def _learn_account(self) -> str | None:
        setting = self.settings.aws_account_id
        numbered = setting if AWS_ACCOUNT_ID.fullmatch(setting) else None
        caller = await self._caller_account()
        if caller is None:
            return numbered
        if numbered is not None and numbered != caller:
            log.warning(
                "MIRRORQ_AWS_ACCOUNT_ID is %s, but the credentials are account %s (STS "
                "GetCallerIdentity): %s is taken for the account that owns targets and events, "
                "%s stays the fleet's scope name (its queue, its limiters). Set "
                "MIRRORQ_AWS_ACCOUNT_ID=%s on every process of the fleet if that is its "
                "account, or give it a name that is not 12 digits (`prod`).",
                numbered,
                caller,
                caller,
                numbered,
                caller,
            )
        return caller

    def credentials(self, place: Place) -> AssumedRoleCredentials | None:
        """The open road's assumed-role credentials (shared with the role's other open roads)."""
        entry = self._open.get(place)
        return entry.credentials if entry else None

    def __len__(self) -> int:
        return len(self._open)

    async def _build(self, place: Place) -> _Open:
        settings = self.settings
        stack = AsyncExitStack()
        session, credentials = self._session, None
        if place.role_arn:
            role = (place.role_arn, place.external_id)
            if role not in self._roles:
                self._roles[role] = await assumed_role(self._session, settings, *role)
            credentials = self._roles[role]
            session = AioSession()
            # The service models are read once per process, not once per road.
            session.register_component("data_loader", self._session.get_component("data_loader"))
            # botocore's own slot for a session's credentials (read by create_client).
            cast(Any, session)._credentials = credentials
        client: EC2Client = await stack.enter_async_context(
            session.create_client(
                "ec2",
                region_name=place.region,
                endpoint_url=settings.ec2_endpoint_url,
                config=client_config(settings),
            )
        )
        account = await self._bucket_account(place)
        own = account == settings.aws_account_id and place.region == settings.region
        limiters = Limiters(
            self._redis, settings, self.timing, account=account, region=place.region
        )
        log.info("EC2 client opened for %s (%d open)", place.describe(), len(self._open) + 1)
        # The place's load balancers are read with the same credentials, in its Region.
        elbv2 = LazyClient(functools.partial(elbv2_client, settings, session, place.region), stack)
        road = Ec2Road(client, limiters, settings, self.timing, own=own, elbv2=elbv2)
        return _Open(road, stack, credentials)

    async def _bucket_account(self, place: Place) -> str:
        """The account whose EC2 buckets the place's calls spend, as the limiters' and leases'
        keys name it: the fleet's own name (MIRRORQ_AWS_ACCOUNT_ID, or `default`) for the
        default credentials' account (STS's answer, whatever the setting says), whichever role
        reaches it; else the role's account."""
        account = place.account_id
        if account is None:
            return self.settings.aws_account_id
        own = await self.default_account()
        return self.settings.aws_account_id if account == own else account

    async def _caller_account(self) -> str | None:
        """The default credentials' account, from STS GetCallerIdentity (once a process; None
        while STS cannot say, and asked again for the next road)."""
        try:
            async with self._session.create_client(
                "sts",
                region_name=self.settings.region,
                endpoint_url=sts_endpoint(self.settings),
                config=client_config(self.settings),
            ) as sts:
                return str((await sts.get_caller_identity())["Account"])
        except Exception as error:  # a role's own account is still known from its ARN
            log.warning("could not learn the default credentials' account: %r", error)
            return None

    async def _trim(self) -> None:
        """Close the least recently used idle roads while more than the cache's size are open."""
        async with self._lock:
            idle = [p for p, e in self._open.items() if e.users == 0]
            excess = len(self._open) - self.settings.client_cache
            closing = [self._open.pop(p) for p in idle[: max(0, excess)]]
            kept = {(p.role_arn, p.external_id) for p in self._open}
            self._roles = {role: c for role, c in self._roles.items() if role in kept}
        for entry in closing:
            self.closed += 1
            await entry.stack.aclose()

    async def close(self) -> None:
        async with self._lock:
            closing = list(self._open.values())
            self._open.clear()
            self._roles.clear()
        for entry in closing:
            await entry.stack.aclose()


@asynccontextmanager
async def planner_roads(settings: Settings) -> AsyncIterator[Roads]:
    """A planner's roads (`reconcile`, `policy plan`, `mirror`): the fleet's default road as
    open_road gives it, and a road per other place it plans, with the role's credentials,
    through the same cache a worker keeps; all closed on leaving."""
    async with AsyncExitStack() as stack:
        session = get_session()
        client: EC2Client = await stack.enter_async_context(
            session.create_client(
                "ec2",
                region_name=settings.region,
                endpoint_url=settings.ec2_endpoint_url,
                config=client_config(settings),
            )
        )
        redis = async_pool(settings.broker_url, settings, max_connections=PLANNER_REDIS_CONNECTIONS)
        stack.push_async_callback(redis.aclose)
        await stack.enter_async_context(primary_followed(redis))  # Sentinel: a failover
        elbv2 = LazyClient(functools.partial(elbv2_client, settings, session), stack)
        default = Ec2Road(client, Limiters(redis, settings, REAL), settings, REAL, elbv2=elbv2)
        roads = Roads(session, default, redis, settings)
        stack.push_async_callback(roads.close)
        yield roads
