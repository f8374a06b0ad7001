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


class Faults:
    """The live fault plan plus one token bucket per throttled action."""

    def __init__(self, plan: FaultPlan, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self._plan = plan.validated()
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    def as_dict(self) -> dict[str, Any]:
        return asdict(self._plan)

    def update(self, changes: dict[str, Any]) -> FaultPlan:
        with self._lock:
            self._plan = self._plan.updated(changes)
            self._buckets.clear()  # a new rate or burst starts from a full bucket
            return self._plan

    def admit(self, action: str) -> bool:
        """False when `action` is over its request rate (EC2 would say RequestLimitExceeded)."""
        plan = self._plan
        if plan.throttle_rate <= 0:
            return True
        with self._lock:
            bucket = self._buckets.get(action)
            if bucket is None:
                bucket = TokenBucket(plan.throttle_rate, plan.throttle_burst)
                self._buckets[action] = bucket
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
