"""The emulator's fault plan (throttling, 5xx, dropped responses, latency), changeable live."""

from __future__ import annotations

import math
import random
import threading
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from emulator.throttle import TokenBucket


@dataclass(frozen=True)
class FaultPlan:
    """Each rate is a probability per CreateTrafficMirrorSession call; 0 means off."""

    error_rate: float = 0.0
    drop_rate: float = 0.0
    latency_ms: float = 0.0
    throttle_rate: float = 0.0  # tokens per second per action; 0 turns throttling off
    throttle_burst: int = 50

    def validated(self) -> FaultPlan:
        for f in fields(self):
            if not math.isfinite(getattr(self, f.name)):
                raise ValueError(f"{f.name} must be a finite number")
        for name in ("error_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0 or self.throttle_rate < 0 or self.throttle_burst < 1:
            raise ValueError("latency_ms and throttle_rate must be >= 0, throttle_burst >= 1")
        return self

    def updated(self, changes: dict[str, Any]) -> FaultPlan:
        known = {f.name: f.type for f in fields(self)}
        unknown = set(changes) - set(known)
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}; known: {sorted(known)}")
        try:
            typed = {k: (int(v) if k == "throttle_burst" else float(v)) for k, v in changes.items()}
        except (TypeError, ValueError):
            raise ValueError(f"fault settings must be numbers, got {changes}") from None
        return replace(self, **typed).validated()  # type: ignore[arg-type]


ANY = "*"  # a scope's account or Region left open: every account, or every Region
Scope = tuple[str, str]  # (account, Region), either of them ANY


class Faults:
    """The live fault plan, its overrides per account and Region, and the token buckets.

    EC2 throttles each account and Region on its own, per action, and a lab may want one
    account slower or faultier than the rest: a plan is looked up for the call's
    (account, Region), most specific override first, and every (account, Region, action)
    has its own bucket.
    """

    def __init__(self, plan: FaultPlan, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self._plan = plan.validated()
        self._overrides: dict[Scope, dict[str, Any]] = {}
        self._effective: dict[Scope, FaultPlan] = {}
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}

    @property
    def plan(self) -> FaultPlan:
        """The plan for calls no override names."""
        return self._plan

    def plan_for(self, account: str, region: str) -> FaultPlan:
        """The plan in force for one account and Region (cached until the next change)."""
        plan = self._effective.get((account, region))
        if plan is None:
            with self._lock:
                plan = self._merged(account, region)
                self._effective[(account, region)] = plan
        return plan

    def _merged(self, account: str, region: str) -> FaultPlan:
        plan = self._plan
        for scope in ((ANY, region), (account, ANY), (account, region)):
            if scope in self._overrides:
                plan = replace(plan, **self._overrides[scope])
        return plan

    def as_dict(self, account: str | None = None, region: str | None = None) -> dict[str, Any]:
        if account is None and region is None:
            return asdict(self._plan)
        return asdict(self.plan_for(account or ANY, region or ANY))

    def scopes(self) -> list[dict[str, Any]]:
        """The overrides, each with the account and Region it applies to (`*`: any)."""
        with self._lock:
            return [
                {"account": a, "region": r, **changes}
                for (a, r), changes in sorted(self._overrides.items())
            ]

    def update(
        self, changes: dict[str, Any], account: str | None = None, region: str | None = None
    ) -> FaultPlan:
        """Change the plan, or with `account` and/or `region` that scope's override of it.

        Returns the plan now in force there. Every change refills every bucket.
        """
        with self._lock:
            if account is None and region is None:
                self._plan = self._plan.updated(changes)
                new = self._plan
            else:
                scope = (account or ANY, region or ANY)
                typed = FaultPlan().updated(changes)  # validates and types each value
                merged = {
                    **self._overrides.get(scope, {}),
                    **{k: getattr(typed, k) for k in changes},
                }
                self._overrides[scope] = merged
                new = self._merged(*scope)
            self._effective.clear()
            self._buckets.clear()  # a new rate or burst starts from a full bucket
            return new

    def clear_scopes(self) -> None:
        """Forget every override (a reset of the lab); the plan itself stays."""
        with self._lock:
            self._overrides.clear()
            self._effective.clear()
            self._buckets.clear()

    def admit(self, action: str, account: str, region: str) -> bool:
        """False when `action` is over its request rate in this account and Region (EC2 would
        say RequestLimitExceeded)."""
        plan = self.plan_for(account, region)
        if plan.throttle_rate <= 0:
            return True
        key = (account, region, action)
        bucket = self._buckets.get(key)
        if bucket is None:
            with self._lock:
                bucket = self._buckets.setdefault(
                    key, TokenBucket(plan.throttle_rate, plan.throttle_burst)
                )
        return bucket.try_take()

    def refill(self) -> None:
        with self._lock:
            self._buckets.clear()

    def roll(self, rate: float) -> bool:
        with self._lock:
            return rate > 0 and self._rng.random() < rate

    def pick(self, *choices: str) -> str:
        with self._lock:
            return self._rng.choice(choices)
