"""The events queue: EC2's EventBridge events after the emulator's successful calls, put into
SQS as an EventBridge rule with an SQS target delivers them (the body is the event).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from typing import Any

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.sqs.exceptions import QueueDoesNotExist
from moto.sqs.models import sqs_backends

from emulator import moto_ext
from emulator.event_shapes import EMITTING_ACTIONS, events_for

log = logging.getLogger("mirrorq.emulator")


class EventFeed:
    """The events queue: one standard SQS queue per Region, in moto's default account.

    Off until `switch_on()`, so the lab seeded at start-up sends nothing.
    """

    def __init__(self, queue_name: str | None) -> None:
        self.queue_name = queue_name
        self._on = False
        self._lock = threading.Lock()
        self._regions: set[str] = set()
        self._sent: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self._on

    def switch_on(self, region: str = "us-east-1") -> None:
        """Create the queue in `region` (where the ready line's URL points) and start sending."""
        if self.queue_name is None:
            raise ValueError("no events queue was configured")
        with moto_ext.SQS_LOCK:
            self._ensure_queue(region)
        self._on = True

    def queue_url(self, endpoint_url: str) -> str | None:
        if self.queue_name is None:
            return None
        return f"{endpoint_url}/{DEFAULT_ACCOUNT_ID}/{self.queue_name}"

    def after_call(
        self,
        action: str,
        params: dict[str, str],
        response: bytes,
        *,
        account: str,
        region: str,
        source_ip: str,
        user_agent: str,
    ) -> None:
        """Send the events of a successful EC2 call; a failure to send never fails the call."""
        if not self._on or action not in EMITTING_ACTIONS:
            return
        try:
            events = events_for(
                action,
                params,
                response,
                account=account,
                region=region,
                source_ip=source_ip,
                user_agent=user_agent,
            )
            self.publish(region, events)
        except Exception:
            log.exception("events for %s were not sent", action)

    def publish(self, region: str, events: list[dict[str, Any]]) -> None:
        if not events or self.queue_name is None:
            return
        with moto_ext.SQS_LOCK:
            backend = self._ensure_queue(region)
            for event in events:
                backend.send_message(self.queue_name, json.dumps(event))
        with self._lock:
            self._sent.update(event["detail-type"] for event in events)

    def reset(self) -> None:
        """After moto's reset: the queue again, empty, in every Region that had it."""
        with self._lock:
            regions = sorted(self._regions)
            self._sent.clear()
        with moto_ext.SQS_LOCK:
            for region in regions:
                self._ensure_queue(region)

    def as_dict(self, endpoint_url: str) -> dict[str, Any]:
        with self._lock:
            return {
                "queue_name": self.queue_name,
                "queue_url": self.queue_url(endpoint_url),
                "enabled": self._on,
                "regions": sorted(self._regions),
                "sent": dict(self._sent),
            }

    def _ensure_queue(self, region: str) -> Any:
        """The queue's Region backend, the queue created if missing (caller holds SQS_LOCK)."""
        backend = sqs_backends[DEFAULT_ACCOUNT_ID][region]
        assert self.queue_name is not None
        try:
            backend.get_queue(self.queue_name)
        except QueueDoesNotExist:
            backend.create_queue(self.queue_name)
        with self._lock:
            self._regions.add(region)
        return backend
