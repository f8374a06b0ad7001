"""Traffic Mirror targets shared from one account with others, as AWS RAM shares them.

What RAM sharing of a target means on EC2 (VPC guide, "Cross-account traffic mirror
targets"): the same `tmt-` id is visible in `DescribeTrafficMirrorTargets` of every account
it is shared with, in its own Region only, and usable as the target of their sessions; only
the owner can modify or delete it; and the owner's `DescribeTrafficMirrorSessions` also lists
the sessions other accounts created on it. RAM shares targets, not filters: a session's
filter is always its creator's own.

moto's state is module-wide, so the shares are too (`SHARES`); the emulator's reset forgets
them with the rest.
"""

from __future__ import annotations

import re
import threading
import types
from dataclasses import dataclass, field
from typing import Any

from moto.ec2.models import ec2_backends
from moto.ec2.models.traffic_mirrors import TrafficMirrorsBackend

from emulator.session_index import indexed

ACCOUNT_ID = re.compile(r"^\d{12}$")


@dataclass
class Share:
    owner: str
    region: str
    target_id: str
    accounts: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target_id": self.target_id,
            "owner_account": self.owner,
            "region": self.region,
            "accounts": sorted(self.accounts),
        }


class SharedTargets:
    """Which targets are shared with which accounts, per Region."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shares: dict[tuple[str, str], Share] = {}  # (Region, target id) -> share

    def share(self, owner: str, region: str, target_id: str, accounts: list[str]) -> Share:
        """Share `target_id` of `owner` in `region` with `accounts` too (added to any before).

        Raises ValueError for a malformed account or a target the owner does not have there.
        """
        for account in (owner, *accounts):
            if not isinstance(account, str) or not ACCOUNT_ID.match(account):
                raise ValueError(f"an account id is 12 digits, got {account!r}")
        if target_id not in ec2_backends[owner][region].traffic_mirror_targets:
            raise ValueError(f"account {owner} has no target {target_id} in {region}")
        with self._lock:
            share = self._shares.setdefault((region, target_id), Share(owner, region, target_id))
            if share.owner != owner:
                raise ValueError(f"{target_id} belongs to {share.owner}, not {owner}")
            share.accounts |= set(accounts) - {owner}
            return share

    def unshare(self, region: str, target_id: str, accounts: list[str] | None) -> Share | None:
        """Stop sharing with `accounts` (None: with all). Sessions made meanwhile stay."""
        with self._lock:
            share = self._shares.get((region, target_id))
            if share is None:
                return None
            share.accounts -= set(share.accounts if accounts is None else accounts)
            if not share.accounts:
                del self._shares[(region, target_id)]
            return share

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.as_dict() for _, s in sorted(self._shares.items())]

    def reset(self) -> None:
        with self._lock:
            self._shares.clear()

    # What EC2 reads -----------------------------------------------------------------------

    def accounts_on(self, region: str, target_id: str, owner: str) -> set[str]:
        """Every account whose sessions can use this target: its owner and those it is
        shared with."""
        share = self._shares.get((region, target_id))
        return {owner} | (share.accounts if share else set())

    def shared_target(self, account: str, region: str, target_id: str) -> tuple[str, Any] | None:
        """(owner, target) when `target_id` is another account's, shared with `account` here."""
        share = self._shares.get((region, target_id))
        if share is None or account not in share.accounts:
            return None
        target = ec2_backends[share.owner][region].traffic_mirror_targets.get(target_id)
        return (share.owner, target) if target is not None else None

    def shared_with(self, account: str, region: str) -> dict[str, Any]:
        """The targets of other accounts shared with `account` in `region`, by id."""
        with self._lock:
            shares = [s for (r, _), s in self._shares.items() if r == region]
        found: dict[str, Any] = {}
        for share in shares:
            if account in share.accounts:
                target = ec2_backends[share.owner][region].traffic_mirror_targets.get(
                    share.target_id
                )
                if target is not None:
                    found[share.target_id] = target
        return found

    def sessions_on_owned(self, owner: str, region: str) -> dict[str, Any]:
        """Sessions other accounts created on `owner`'s shared targets in `region`, by id."""
        with self._lock:
            shares = [s for (r, _), s in self._shares.items() if r == region and s.owner == owner]
        found: dict[str, Any] = {}
        for share in shares:
            for account in share.accounts:
                sessions = indexed(ec2_backends[account][region])
                for eni in sessions.sources_of(share.target_id):
                    for session in sessions.on_eni(eni):
                        if session.traffic_mirror_target_id == share.target_id:
                            found[session.id] = session
        return found


SHARES = SharedTargets()

_describe_targets = TrafficMirrorsBackend.describe_traffic_mirror_targets
_describe_sessions = TrafficMirrorsBackend.describe_traffic_mirror_sessions


def _describe_targets_with_shared(
    self: Any, traffic_mirror_target_ids: Any = None, filters: Any = None
) -> Any:
    ids = traffic_mirror_target_ids
    shared = SHARES.shared_with(self.account_id, self.region_name)
    if not shared:
        return _describe_targets(self, ids, filters)
    # moto's own method, run over this account's targets and those shared with it.
    view = types.SimpleNamespace(traffic_mirror_targets={**self.traffic_mirror_targets, **shared})
    return _describe_targets(view, ids, filters)  # type: ignore[arg-type]


def _describe_sessions_with_shared(
    self: Any, traffic_mirror_session_ids: Any = None, filters: Any = None
) -> Any:
    ids = traffic_mirror_session_ids
    others = SHARES.sessions_on_owned(self.account_id, self.region_name)
    if not others:
        return _describe_sessions(self, ids, filters)
    view = types.SimpleNamespace(traffic_mirror_sessions={**self.traffic_mirror_sessions, **others})
    return _describe_sessions(view, ids, filters)  # type: ignore[arg-type]


def install() -> None:
    TrafficMirrorsBackend.describe_traffic_mirror_targets = _describe_targets_with_shared  # type: ignore[method-assign]
    TrafficMirrorsBackend.describe_traffic_mirror_sessions = _describe_sessions_with_shared  # type: ignore[method-assign]
