"""STS as the emulator serves it: moto's AssumeRole with what AWS enforces around it.

moto hands out credentials for any role ARN (their calls are then served in the role's
account) but never lets them expire, never checks an ExternalId, a duration or a chain.
`SecurityTokens` remembers every set it issued, so that:

- a call signed with an expired set is refused, as AWS does: `RequestExpired` from EC2,
  `ExpiredToken` from STS, SQS and Elastic Load Balancing v2;
- `DurationSeconds` is honoured: from `min_duration` (AWS: 900 s; lower in a lab, so that
  tests see credentials expire and refresh within seconds) up to the role's maximum session
  duration (AWS's default 3,600 s), and at most one hour for a role assumed with assumed-role
  credentials (role chaining);
- a role the lab marks as needing an ExternalId, or as not assumable, answers `AccessDenied`.

botocore refuses to send a DurationSeconds under 900 (client-side parameter validation), so a
lab that wants credentials to expire within seconds without switching that off sets
`lifetime`: every set is then issued for at most that many seconds, whatever was asked, and
its `Expiration` says so (the client's refresh machinery reads it from there).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from emulator.errors import QueryError

AWS_MIN_DURATION = 900
MAX_DURATION = 43_200  # the highest maximum session duration a role can have
DEFAULT_MAX_SESSION = 3_600  # a role's maximum session duration unless set
CHAINED_MAX = 3_600  # AWS caps a chained role session at one hour
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(?P<account>\d{12}):role/[\w+=,.@/-]+$")
EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
_ISSUED_KEY = re.compile(rb"<AccessKeyId>([^<]+)</AccessKeyId>")
_EXPIRATION = re.compile(rb"<Expiration>([^<]+)</Expiration>")
_ASSUMED_ARN = re.compile(rb"<AssumedRoleUser>.*?<Arn>([^<]+)</Arn>", re.S)


@dataclass(frozen=True)
class RoleSettings:
    """What the lab says about one role (every role not named: assumable, no ExternalId)."""

    external_id: str | None = None
    assumable: bool = True
    max_session_duration: int = DEFAULT_MAX_SESSION


@dataclass(frozen=True)
class Issued:
    """A set of temporary credentials handed out by AssumeRole (known by its access key id)."""

    account: str
    role_arn: str
    arn: str  # the assumed-role ARN GetCallerIdentity answers
    expires: float  # Unix time, as its `Expiration` says
    chained: bool


def _unix_time(iso: str) -> float:
    stamp = datetime.fromisoformat(iso)
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def _validation(message: str) -> QueryError:
    return QueryError("ValidationError", message, 400)


class SecurityTokens:
    """The credentials issued, the lab's role settings and the shortest duration allowed."""

    def __init__(self, min_duration: int = AWS_MIN_DURATION, lifetime: int | None = None) -> None:
        self._lock = threading.Lock()
        self._defaults = (min_duration, lifetime)
        self.min_duration = min_duration
        self.lifetime = lifetime
        self._issued: dict[str, Issued] = {}
        self._roles: dict[str, RoleSettings] = {}

    # Lab settings (control endpoints) ---------------------------------------------------

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        known = {"min_duration_seconds", "lifetime_seconds"}
        if set(changes) - known:
            raise ValueError(f"unknown STS settings: {sorted(changes)}; known: {sorted(known)}")
        for name, value in changes.items():
            if value is None and name == "lifetime_seconds":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 3600:
                raise ValueError(f"{name} must be an integer from 1 to 3600")
        if "min_duration_seconds" in changes:
            self.min_duration = changes["min_duration_seconds"]
        if "lifetime_seconds" in changes:
            self.lifetime = changes["lifetime_seconds"]
        return self.as_dict()

    def issued_duration(self, params: dict[str, str]) -> int | None:
        """The DurationSeconds to issue with when `lifetime` shortens what was asked, else None."""
        asked = int(params.get("DurationSeconds") or DEFAULT_MAX_SESSION)
        return self.lifetime if self.lifetime is not None and asked > self.lifetime else None

    def configure_role(self, changes: dict[str, Any]) -> dict[str, Any]:
        role_arn = changes.pop("role_arn", None)
        if not isinstance(role_arn, str) or not ROLE_ARN.match(role_arn):
            raise ValueError(f"role_arn must be an IAM role ARN, got {role_arn!r}")
        known = {"external_id", "assumable", "max_session_duration"}
        if set(changes) - known:
            raise ValueError(f"unknown role settings: {sorted(set(changes) - known)}")
        external_id = changes.get("external_id")
        if external_id is not None and not (
            isinstance(external_id, str) and EXTERNAL_ID.match(external_id)
        ):
            raise ValueError("external_id must be 2-1224 characters of [\\w+=,.@:/-], or null")
        if "assumable" in changes and not isinstance(changes["assumable"], bool):
            raise ValueError("assumable must be true or false")
        longest = changes.get("max_session_duration", DEFAULT_MAX_SESSION)
        if not isinstance(longest, int) or not DEFAULT_MAX_SESSION <= longest <= MAX_DURATION:
            raise ValueError(f"max_session_duration must be {DEFAULT_MAX_SESSION}-{MAX_DURATION}")
        with self._lock:
            self._roles[role_arn] = replace(self._roles.get(role_arn, RoleSettings()), **changes)
            return {"role_arn": role_arn, **asdict(self._roles[role_arn])}

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            expired = sum(1 for i in self._issued.values() if i.expires <= now)
            return {
                "min_duration_seconds": self.min_duration,
                "lifetime_seconds": self.lifetime,
                # Role settings only: never an issued key or token.
                "roles": {arn: asdict(r) for arn, r in sorted(self._roles.items())},
                "issued": len(self._issued),
                "expired": expired,
            }

    def reset(self) -> None:
        with self._lock:
            self._issued.clear()
            self._roles.clear()
            self.min_duration, self.lifetime = self._defaults

    # Requests -----------------------------------------------------------------------------

    def issued(self, access_key: str | None) -> Issued | None:
        return self._issued.get(access_key) if access_key else None

    def is_expired(self, access_key: str | None) -> bool:
        issued = self.issued(access_key)
        return issued is not None and issued.expires <= time.time()

    def check_assume_role(
        self, caller_key: str | None, caller_account: str, params: dict[str, str]
    ) -> None:
        """Raise the error AWS would answer this AssumeRole with, before moto issues anything."""
        role_arn = params.get("RoleArn", "")
        match = ROLE_ARN.match(role_arn)
        if not match:
            raise _validation(f"{role_arn!r} is not a valid IAM role ARN")
        caller = self.issued(caller_key)
        caller_arn = caller.arn if caller else f"arn:aws:sts::{caller_account}:user/moto"
        settings = self._roles.get(role_arn, RoleSettings())
        external_id = params.get("ExternalId")
        if external_id is not None and not EXTERNAL_ID.match(external_id):
            raise _validation(
                "1 validation error detected: Value at 'externalId' failed to satisfy "
                "constraint: Member must satisfy regular expression pattern: [\\w+=,.@:\\/-]*"
            )
        if not settings.assumable or (
            settings.external_id is not None and external_id != settings.external_id
        ):
            raise QueryError(
                "AccessDenied",
                f"User: {caller_arn} is not authorized to perform: sts:AssumeRole on resource: "
                f"{role_arn}",
                403,
            )
        raw = params.get("DurationSeconds")
        if raw is None:
            return
        try:
            duration = int(raw)
        except ValueError:
            raise _validation(f"DurationSeconds must be an integer, got {raw!r}") from None
        if duration < self.min_duration:
            raise _validation(
                f"1 validation error detected: Value '{duration}' at 'durationSeconds' failed to "
                f"satisfy constraint: Member must have value greater than or equal to "
                f"{self.min_duration}"
            )
        if caller is not None and duration > CHAINED_MAX:
            raise _validation(
                "The requested DurationSeconds exceeds the 1 hour session limit for roles "
                "assumed by role chaining."
            )
        if duration > settings.max_session_duration:
            raise _validation(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
            )

    def record(self, caller_key: str | None, params: dict[str, str], answer: bytes) -> None:
        """Remember the credentials moto's answer to an AssumeRole holds."""
        key, expiration = _ISSUED_KEY.search(answer), _EXPIRATION.search(answer)
        match = ROLE_ARN.match(params.get("RoleArn", ""))
        if key is None or expiration is None or match is None:
            return
        arn = _ASSUMED_ARN.search(answer)
        issued = Issued(
            account=match["account"],
            role_arn=params["RoleArn"],
            arn=arn[1].decode() if arn else params["RoleArn"],
            expires=_unix_time(expiration[1].decode()),
            chained=self.issued(caller_key) is not None,
        )
        with self._lock:
            self._issued[key[1].decode()] = issued
