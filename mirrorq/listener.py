"""`mirrorq listen`: long-poll the SQS queues EventBridge rules deliver to; events into jobs.

A message is deleted only once every job its event asks for is accepted: a listener that
dies before that leaves it to come back, and the idempotency keys make the redelivery harmless.
A message that is not an event is logged and left for the queue's redrive policy (its
dead-letter queue); it never stops the listener. Several listeners may share a queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from config import Settings
from mirrorq.events import Event, read_event
from mirrorq.intake import Intake
from mirrorq.inventory import Inventory
from mirrorq.rules import Rule
from tasks.producer import Producer
from worker.aws import sqs_client
from worker.ec2 import open_road

log = logging.getLogger("mirrorq.listen")
WAIT_S = 20  # SQS's longest long poll: the fewest empty receives
BATCH = 10  # SQS's most messages a receive returns
SUMMARY_EVERY_S = 60.0
RETRY_AFTER_S = 2.0  # SQS unreachable: try again after this


async def listen(
    settings: Settings,
    rules: Sequence[Rule],
    queue_urls: Sequence[str],
    *,
    pollers: int = 2,
    stop: asyncio.Event | None = None,
) -> Counter[str]:
    """Poll until `stop` is set; return the counts (events, jobs, duplicates, ignored...)."""
    stop = stop or asyncio.Event()
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(sqs_client(settings))
        inventory = Inventory(await stack.enter_async_context(open_road(settings)))
        intake = Intake(rules, settings, Producer(settings=settings), inventory)
        pollers_ = [
            asyncio.create_task(_poll(sqs, url, intake, stop), name=f"poll {url} #{n}")
            for url in queue_urls
            for n in range(pollers)
        ]
        reporter = asyncio.create_task(_report(intake.counts, stop))
        await asyncio.gather(*pollers_)
        reporter.cancel()
        _summary(intake.counts)
        return intake.counts


async def _poll(sqs: Any, queue_url: str, intake: Intake, stop: asyncio.Event) -> None:
    stopping = asyncio.create_task(stop.wait())
    while not stop.is_set():
        receive = asyncio.create_task(
            sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=WAIT_S
            )
        )
        await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            # A poll still waiting ends here: messages it would have taken stay in the queue.
            receive.cancel()
            return
        try:
            answer = receive.result()
        except Exception as error:  # SQS away, throttled, credentials expiring: keep going
            log.warning("receiving from %s failed (%s); trying again", queue_url, error)
            await asyncio.sleep(RETRY_AFTER_S)
            continue
        messages = answer.get("Messages", [])
        if messages:
            await _handle(sqs, queue_url, intake, messages)


async def _handle(sqs: Any, queue_url: str, intake: Intake, messages: list[dict[str, Any]]) -> None:
    events: list[Event] = []
    receipts: dict[str, list[str]] = {}
    for message in messages:
        try:
            event = read_event(message.get("Body", ""))
        except Exception as error:  # NotAnEvent, or a shape read_event did not foresee
            intake.counts["malformed"] += 1
            log.warning(
                "message %s is not an EventBridge event (%s); left for the dead-letter queue",
                message.get("MessageId"),
                error,
            )
            continue
        events.append(event)
        receipts.setdefault(event.event_id, []).append(message["ReceiptHandle"])
    try:
        outcomes = await intake.handle(events)
    except Exception as error:
        log.warning(
            "%d event(s) not handled (%s); they come back after the queue's visibility timeout",
            len(events),
            error,
        )
        return
    done = [r for o in outcomes if o.done for r in receipts.get(o.event_id, [])]
    for outcome in outcomes:
        if outcome.error:
            log.warning(
                "event %s left for the dead-letter queue: %s", outcome.event_id, outcome.error
            )
        elif outcome.ignored:
            log.debug("event %s ignored: %s", outcome.event_id, outcome.ignored)
    for start in range(0, len(done), BATCH):
        entries = [
            {"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(done[start : start + BATCH])
        ]
        try:
            await sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as error:
            log.warning("could not delete %d handled message(s): %s", len(entries), error)


async def _report(counts: Counter[str], stop: asyncio.Event) -> None:
    last: Counter[str] = Counter()
    while not stop.is_set():
        await asyncio.sleep(SUMMARY_EVERY_S)
        if counts != last:
            _summary(counts)
            last = Counter(counts)


def _summary(counts: Counter[str]) -> None:
    log.info(
        "events %d: jobs %d, duplicates %d, ignored %d, malformed %d, not handled %d",
        counts["events"],
        counts["jobs"],
        counts["duplicates"],
        counts["ignored"],
        counts["malformed"],
        counts["unhandled"],
    )
