"""`mirrorq listen`: long-poll the SQS queues EventBridge rules deliver to; events into jobs.

A message is deleted only once every job its event asks for is accepted: a listener that
dies before that leaves it to come back, and the idempotency keys make the redelivery harmless.
A message that is not an event is logged and left for the queue's redrive policy (its
dead-letter queue); it never stops the listener. Several listeners may share a queue.

A queue is read in its own Region (SQS answers a queue only to a client of its Region), the
one its URL names (`https://sqs.REGION.amazonaws.com/...`), or `REGION=URL`'s for an endpoint
whose URLs do not name it (the emulator), else MIRRORQ_REGION: EventBridge delivers to a
queue of another account only in the event's own Region, so a fleet of several Regions reads
one queue per Region, each event planned in the account and Region it names (intake.py).

SQS's transient failures (throttling, 5xx, the network) are retried with backoff. A queue that
cannot be used (it does not exist, access is denied) is a QueueError: at start-up, where every
queue is checked before the first receive, and later too (the queue deleted): the listener
stops rather than retry what retrying cannot change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from config import Settings
from mirrorq.events import Event, read_event
from mirrorq.intake import Intake
from mirrorq.policy_watch import RulesSource, rules_now
from tasks.errors import QueueError
from tasks.producer import Producer
from worker.aws import sqs_client
from worker.errors import classify, is_transient
from worker.logs import log_context
from worker.roads import planner_roads

log = logging.getLogger("mirrorq.listen")
WAIT_S = 20  # SQS's longest long poll: the fewest empty receives
BATCH = 10  # SQS's most messages a receive returns
SUMMARY_EVERY_S = 60.0
RETRY_BASE_S, RETRY_CAP_S = 1.0, 30.0  # SQS away or throttled: back off, up to this
T = TypeVar("T")
# The Region in an SQS queue URL: sqs.REGION.amazonaws.com[.cn], or the legacy REGION.queue...
QUEUE_HOST = re.compile(
    r"^https?://(?:sqs\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
    r"|(?P<legacy>[a-z0-9-]+)\.queue\.amazonaws\.com(?:\.cn)?)(?:[:/]|$)"
)
EXPLICIT_REGION = re.compile(r"^(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)=(?P<url>.+)$")


def queue_region(queue_url: str, default: str) -> tuple[str, str]:
    """A `--sqs-queue-url` as (the queue's Region, its URL): `REGION=URL`'s Region, else the
    one an SQS URL names, else `default` (MIRRORQ_REGION)."""
    explicit = EXPLICIT_REGION.match(queue_url)
    if explicit:
        return explicit["region"], explicit["url"]
    host = QUEUE_HOST.match(queue_url)
    if host:
        return host["region"] or host["legacy"], queue_url
    return default, queue_url


async def listen(
    settings: Settings,
    rules: RulesSource,
    queue_urls: Sequence[str],
    *,
    pollers: int = 2,
    stop: asyncio.Event | None = None,
) -> Counter[str]:
    """Poll until `stop` is set; return the counts (events, jobs, duplicates, ignored...).

    Raises QueueError for a queue that cannot be used: before polling any (`at_start`), or
    once it fails later (the other polls are stopped first).

    `rules` may be a watched policy's `current`: each receive's events go through the rules
    in use when they are planned."""
    stop = stop or asyncio.Event()
    queues = [queue_region(url, settings.region) for url in queue_urls]
    async with AsyncExitStack() as stack:
        clients = {
            region: await stack.enter_async_context(sqs_client(settings, region))
            for region in dict.fromkeys(region for region, _ in queues)
        }
        for region, url in queues:
            await _check(clients[region], url, stop)
        if stop.is_set():
            return Counter()
        log.info(
            "listening on %d queue(s) in %s with %d rule(s)",
            len(queues),
            ", ".join(clients),
            len(rules_now(rules)),
        )
        roads = await stack.enter_async_context(planner_roads(settings))
        intake = Intake(rules, settings, Producer(settings=settings), roads)
        pollers_ = [
            asyncio.create_task(_poll(clients[region], url, intake, stop), name=f"poll {url} #{n}")
            for region, url in queues
            for n in range(pollers)
        ]
        reporter = asyncio.create_task(_report(intake.counts, stop))
        ended = await asyncio.gather(*pollers_, return_exceptions=True)
        reporter.cancel()
        _summary(intake.counts)
        for error in ended:
            if isinstance(error, QueueError):
                log.error("%s; the listener stops", error)
            if isinstance(error, BaseException):
                raise error
        return intake.counts


async def _check(sqs: Any, queue_url: str, stop: asyncio.Event) -> None:
    """The queue exists and may be read (GetQueueAttributes), or QueueError saying why not."""
    try:
        await _until_stopped(
            lambda: sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"]),
            queue_url,
            stop,
        )
    except QueueError as error:
        error.at_start = True
        raise


async def _poll(sqs: Any, queue_url: str, intake: Intake, stop: asyncio.Event) -> None:
    def receive() -> Awaitable[dict[str, Any]]:
        return sqs.receive_message(  # type: ignore[no-any-return]
            QueueUrl=queue_url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=WAIT_S
        )

    while not stop.is_set():
        try:
            answer = await _until_stopped(receive, queue_url, stop)
        except QueueError:
            stop.set()  # the other polls end too: a supervisor restarts it, the check names it
            raise
        if answer is None:
            return  # stopping: messages a poll still waiting would have taken stay in the queue
        messages = answer.get("Messages", [])
        if messages:
            await _handle(sqs, queue_url, intake, messages)


async def _until_stopped(
    call: Callable[[], Awaitable[T]], queue_url: str, stop: asyncio.Event
) -> T | None:
    """`call()`'s answer, None once `stop` is set. Transient failures are retried with backoff
    (each logged); any other is a QueueError."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("%s failed (%s); trying again in %.1f s", queue_url, error, wait)

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=RETRY_BASE_S, max=RETRY_CAP_S),
        sleep=sleep,
        before_sleep=warn,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                if stop.is_set():
                    return None
                answer = asyncio.ensure_future(call())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({answer, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not answer.done():
                    answer.cancel()
                    return None
                return answer.result()
    except Exception as error:  # not transient: the queue's own answer, or a bug
        failure = classify(error)
        raise QueueError(queue_url, failure.code, failure.message, at_start=False) from error
    raise AssertionError("unreachable: the policy reraises")  # pragma: no cover


async def _handle(sqs: Any, queue_url: str, intake: Intake, messages: list[dict[str, Any]]) -> None:
    events: list[Event] = []
    receipts: dict[str, list[str]] = {}
    for message in messages:
        try:
            event = read_event(message.get("Body", ""))
        except Exception as error:  # NotAnEventError, or a shape read_event did not foresee
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
        with log_context(event_id=outcome.event_id):
            if outcome.error:
                log.warning(
                    "event %s not handled, left to come back (then the dead-letter queue): %s",
                    outcome.event_id[:100],
                    outcome.error,
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
        "events %d: jobs %d, duplicates %d, ignored %d (%d of an account or Region the policy "
        "does not name), malformed %d, not handled %d",
        counts["events"],
        counts["jobs"],
        counts["duplicates"],
        counts["ignored"],
        counts["other_place"],
        counts["malformed"],
        counts["unhandled"],
    )
