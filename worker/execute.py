"""One job's attempts against EC2 under the retry policy, and the record they end in.

Pure of Celery and of messages: worker/runner.py hands it a started record and stores what
it returns. Its EC2 calls go the road every EC2 call goes (worker/ec2.py: the slot, the
metrics, the limiter told of throttles, the retry policy); what is the job's own is here.
Every attempt sends exactly `record["request"]`, ClientToken included, so EC2
can tell a retry from a new request. A job with SessionNumber `auto` reads its ENI's
sessions and creates under the ENI's lease (worker/leases.py), so two jobs for one ENI,
target and filter never both create.

A delete or a modify (`execute_change`) acts under its session's ENI lease too, so it never
races a create choosing a SessionNumber there, and sends the same arguments on every attempt.
A modify that changes the target, the filter or the SessionNumber reads the ENI's sessions
under that lease first: it fails `InvalidJob` (field `network_interface_id`) if its session is
not among them (a sender's wrong ENI: the lease held is not the session's), and, moving the
session, `AlreadyMirrored` if another session already mirrors the ENI to what it would point
at (one mirror per ENI, target and filter, as for creates).
EC2 takes no ClientToken for either: their effect is what makes a retry safe. A modify sent
twice sets what it set once. A delete answered `InvalidTrafficMirrorSessionId.NotFound`
after an attempt of ours that may have landed (an unanswered one, or one by an earlier
delivery of the job) is the job's success: that attempt deleted the session. On a first
attempt the same answer fails the job with EC2's code: nothing of ours was sent, so the job
cannot tell a session someone else deleted (EC2 deletes an ENI's sessions with it) from an
id that never existed, and its sender, who can, is told; unless the request says
`missing_ok` (the planner's prune and unmirror deletes, which just read the session: their
goal is its absence), when the job ends `deleted` too, its response's AlreadyDeleted saying
so. `missing_ok` is mirrorq's and never sent to EC2 (tasks/contract.py `ec2_request`). A job
giving up on a retryable failure after such an attempt reads the session once: gone (a
delete) or already as asked (a modify), one of its unanswered calls took effect, and the job
succeeded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from tenacity import RetryCallState

from config import Settings
from tasks import keys, records
from tasks.contract import JobKind, ec2_request
from tasks.errors import AlreadyMirroredError, InvalidJobError, LeaseLostError
from tasks.records import JobResult, kind_of
from worker.ec2 import Ec2Road
from worker.errors import (
    DRY_RUN_OK,
    EC2_SAYS_ENI_FULL,
    EC2_SAYS_NUMBER_TAKEN,
    EC2_SAYS_PARAMETERS_DIFFER,
    SESSION_NOT_FOUND,
    SESSION_NOT_FOUND_CODES,
    Action,
    Failure,
    classify,
)
from worker.leases import Lease, Leases
from worker.logs import log_context
from worker.ratelimit import CREATE_ACTION, DESCRIBE_ACTION
from worker.sessions import plan_session_number

Save = Callable[[JobResult], Awaitable[None]]  # records a job's progress, on the loop
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ec2:
    """What a job's attempts use: the road every EC2 call takes, the leases, the settings."""

    road: Ec2Road
    leases: Leases
    settings: Settings

    @property
    def create_bound_s(self) -> float:
        """The longest a create can take: a fenced lease must outlast it."""
        return self.settings.connect_timeout_s + self.settings.read_timeout_s + 1.0


async def sessions_on(ec2: Ec2, eni_id: str) -> list[dict[str, Any]]:
    """Every session on the ENI, a page at a time, each page a call paid for at the limiter;
    a page that fails fails the attempt, which reads again from the start."""
    return await ec2.road.paginate(
        DESCRIBE_ACTION,
        "TrafficMirrorSessions",
        retry=False,
        Filters=[{"Name": "network-interface-id", "Values": [eni_id]}],
    )


class Creates:
    """A job's calls of its action (CreateTrafficMirrorSession, or a delete's or a modify's),
    and how long one left unanswered (a timeout, a dropped connection, a 5xx) may still reach
    EC2: until `create_bound_s` after it was sent (on the road's clock). One that lands later
    is beyond what mirrorq can fence."""

    def __init__(self, ec2: Ec2, action: str = CREATE_ACTION) -> None:
        self._ec2 = ec2
        self._action = action
        self._clock = ec2.road.timing.monotonic
        self._landing_by = 0.0  # on the clock; 0: none of ours is on its way
        self.unanswered = False  # one of ours went unanswered (not throttled): it may have landed

    async def send(self, request: dict[str, Any]) -> dict[str, Any]:
        bound_s = self._ec2.create_bound_s
        sent_at = self._clock()
        try:
            response = await self._ec2.road.send(self._action, timeout_s=bound_s, **request)
        except Exception as error:
            failure = classify(error)
            if failure.retryable:  # unanswered: it may be on its way still
                self._landing_by = sent_at + bound_s
                # A throttle is EC2 refusing the call: it did nothing.
                self.unanswered = self.unanswered or not failure.throttled
            raise
        self._landing_by = 0.0  # created: one still on its way is answered from the token
        return response

    def may_land_for_s(self) -> float:
        return max(0.0, self._landing_by - self._clock())


async def execute_job(
    ec2: Ec2,
    record: JobResult,
    *,
    save: Save,
    auto: bool,
    alternatives: Sequence[str] = (),
) -> JobResult:
    """Create the session `record["request"]` describes; return the finished record.

    With `auto`, each create is preceded by a read of the ENI's sessions under the ENI's
    lease (the same lease for as long as it is held: a retry does not read again), and the
    create is fenced: sent only while that lease is still this job's. The create slot is
    taken last, just before the create: reads are paid at the Describe limiter alone.

    Raises RedisError when Redis, where the job is recorded, is unreachable, and
    SupersededError when another worker took the job over: nothing is decided then.
    """
    eni_lease = _eni_lease(ec2.road, str((record["request"] or {})["NetworkInterfaceId"]))
    holding: Lease | None = None
    read_under: Lease | None = None
    ours_maybe = False  # a session to this mirror carries our number: ours, if EC2 replays
    creates = Creates(ec2)

    async def on_retry(state: RetryCallState) -> None:
        nonlocal record
        error = state.outcome.exception() if state.outcome else None
        if error is None:
            return
        failure = classify(error)
        # At DEBUG: under throttling a batch retries thousands of times, and the record keeps
        # the last error; the line is for following one job.
        log.debug(
            "EC2 call failed (%s); retrying in %.2f s (%d create attempt(s) so far)",
            failure.code,
            state.upcoming_sleep,
            record["attempts"],
            extra={"error_code": failure.code, "attempt": record["attempts"]},
        )
        record = records.retrying(record, failure.code, failure.message)
        await save(record)

    policy = ec2.road.retrying(before_sleep=on_retry)
    try:
        async for attempt in policy:
            with attempt:
                if auto:
                    if holding is None or holding.lost:
                        holding = await _take_again(ec2, eni_lease, holding, creates)
                    if read_under is not holding:
                        request = dict(record["request"] or {})
                        existing = await sessions_on(ec2, request["NetworkInterfaceId"])
                        plan, ours_maybe = plan_session_number(existing, request, alternatives)
                        if plan != request:
                            record = records.planned(record, plan)
                            await save(record)
                        read_under = holding
                # Only now: a read that failed, or found the ENI mirrored, spent no create slot.
                # The slot comes before the fence: a fenced lease outlasts the create alone.
                await ec2.road.slot(CREATE_ACTION)
                if holding is not None and not await ec2.leases.fence(holding, ec2.create_bound_s):
                    raise LeaseLostError("the ENI's lease lapsed before the create was sent")
                record = records.attempted(record)
                with log_context(attempt=record["attempts"]):  # botocore's lines of the call
                    response = await creates.send(record["request"] or {})
    except Exception as error:  # every failure but Redis's becomes the job's outcome
        failure = classify(error)
        if failure.action in (Action.RESUME, Action.YIELD):
            raise
        if failure.code == DRY_RUN_OK:
            return records.dry_run_ok(record)
        if ours_maybe and failure.code in _NOT_OUR_TOKEN:
            # A session to this mirror holds the number we sent, and EC2 did not answer from
            # our token: it is another job's. (Had it been ours, EC2 would have answered from
            # the token; a token it knew with another number made another session.)
            failure = classify(AlreadyMirroredError(_already(record)))
        return records.failed(record, failure.code, failure.message, retryable=failure.retryable)
    finally:
        if holding is not None:
            # A job that gives up on unanswered creates keeps the ENI until the last of them can
            # no longer land: a job reading the ENI before then would not see its session.
            with contextlib.suppress(RedisError):  # unreleased, it lapses within one TTL
                await ec2.leases.release(holding, after_s=creates.may_land_for_s())
    return records.created(record, response)


async def execute_change(
    ec2: Ec2, record: JobResult, *, save: Save, sent_before: bool = False
) -> JobResult:
    """Delete or modify the session `record["request"]` names; return the finished record.

    Under the lease of the session's ENI (the record's `network_interface_id`, else read from
    the session and recorded first), the action's slot from its own limiter (EC2 keeps a
    bucket per action; a delete's and a modify's are sized as mutating actions), then the
    call, fenced by the lease, with exactly `record["request"]` on every attempt.
    `sent_before`: an earlier delivery of the job may have sent the call (its record was
    started before), so a NotFound can be our own delete's.

    Raises RedisError when Redis is unreachable and SupersededError when another worker took
    the job over, as execute_job does.
    """
    kind = kind_of(record)
    request = ec2_request(dict(record["request"] or {}))  # exactly what EC2 is sent
    session_id = str(request["TrafficMirrorSessionId"])
    holding: Lease | None = None
    calls = Creates(ec2, kind.action)
    unknown: Failure | None = None  # the session was not there when read for its ENI
    # A modify that points the session elsewhere reads the ENI's sessions under its lease
    # first: it never makes a second mirror of the ENI to one target and filter.
    moves = kind is JobKind.MODIFY and any(request.get(k) for k in _MIRROR)
    # ... and so does one that changes its SessionNumber (a create on the ENI chooses one under
    # the same lease): both check first that the session is on the ENI whose lease they hold.
    reads = moves or (kind is JobKind.MODIFY and request.get("SessionNumber") is not None)
    read_under: Lease | None = None

    async def on_retry(state: RetryCallState) -> None:
        nonlocal record
        error = state.outcome.exception() if state.outcome else None
        if error is not None:
            failure = classify(error)
            record = records.retrying(record, failure.code, failure.message)
            await save(record)

    try:
        async for attempt in ec2.road.retrying(before_sleep=on_retry):
            with attempt:
                eni = record.get("network_interface_id")
                if eni is None:
                    eni = await _source_of(ec2, session_id)
                    if eni is None:
                        unknown = _not_found(session_id)
                        break
                    record = records.located(record, eni)
                    await save(record)
                if holding is None or holding.lost:
                    holding = await _take_again(ec2, _eni_lease(ec2.road, eni), holding, calls)
                if reads and read_under is not holding:
                    await _no_twin(ec2, eni, session_id, request, moves=moves)
                    read_under = holding
                await ec2.road.slot(kind.action)
                if not await ec2.leases.fence(holding, ec2.create_bound_s):
                    raise LeaseLostError("the ENI's lease lapsed before the call was sent")
                record = records.attempted(record)
                response = await calls.send(request)
    except Exception as error:  # every failure but Redis's becomes the job's outcome
        failure = classify(error)
        if failure.action in (Action.RESUME, Action.YIELD):
            raise
        if failure.code == DRY_RUN_OK:
            return records.dry_run_ok(record)
        return await _given_up(ec2, record, failure, sent_before or calls.unanswered)
    finally:
        if holding is not None:
            with contextlib.suppress(RedisError):  # unreleased, it lapses within one TTL
                await ec2.leases.release(holding, after_s=calls.may_land_for_s())
    if unknown is not None:
        return _outcome(record, unknown, sent_before)
    return records.succeeded(record, response)


async def _take_again(ec2: Ec2, key: str, lost: Lease | None, calls: Creates) -> Lease:
    """The ENI's lease, taken (again). One found lost is given up first where it is still
    ours (a Sentinel failover: the other primary may hold it), kept no longer than a call of
    ours may still land: else the job would wait for its own lease."""
    if lost is not None and lost.key == key:
        await ec2.leases.release(lost, after_s=calls.may_land_for_s())
    return await ec2.leases.acquire(key)


# What EC2 answers a create whose token it does not know for the number a session holds (or
# knows with other parameters): the ENI's number taken, its sessions at EC2's limit.
_NOT_OUR_TOKEN = (EC2_SAYS_NUMBER_TAKEN, EC2_SAYS_PARAMETERS_DIFFER, EC2_SAYS_ENI_FULL)
_MIRROR = ("TrafficMirrorTargetId", "TrafficMirrorFilterId")


async def _no_twin(
    ec2: Ec2, eni: str, session_id: str, request: dict[str, Any], *, moves: bool = True
) -> None:
    """Read `eni`'s sessions under its lease (paid at the Describe limiter): InvalidJobError
    naming `network_interface_id` if the session is not among them (the lease held would be
    another ENI's), and, for a modify that moves the session (`moves`), AlreadyMirroredError
    if it would make a second mirror of `eni` to one target and filter."""
    existing = await sessions_on(ec2, eni)
    if _mine(existing, session_id) is None:
        raise InvalidJobError(
            [
                {
                    "field": "network_interface_id",
                    "message": f"session {session_id} is not on network_interface_id {eni}",
                }
            ]
        )
    twin = _twin(existing, session_id, request) if moves else None
    if twin is not None:
        raise AlreadyMirroredError(
            f"{eni} is already mirrored to {twin[0]} through {twin[1]} by another session: "
            f"{session_id} is left as it is"
        )


def _mine(existing: list[dict[str, Any]], session_id: str) -> dict[str, Any] | None:
    return next((s for s in existing if s.get("TrafficMirrorSessionId") == session_id), None)


def _twin(
    existing: list[dict[str, Any]], session_id: str, request: dict[str, Any]
) -> tuple[str, str] | None:
    """The (target, filter) the modify would give its session, if another session on the ENI
    has them already; None otherwise (or when the session is not among them: _no_twin says)."""
    mine = _mine(existing, session_id)
    if mine is None:
        return None
    target, filter_id = (request.get(k) or mine.get(k) for k in _MIRROR)
    for other in existing:
        if other is not mine and (other.get(_MIRROR[0]), other.get(_MIRROR[1])) == (
            target,
            filter_id,
        ):
            return str(target), str(filter_id)
    return None


# A modify's fields as Describe shows them, and what RemoveFields clears.
_SET_FIELDS = (
    "TrafficMirrorTargetId",
    "TrafficMirrorFilterId",
    "PacketLength",
    "SessionNumber",
    "VirtualNetworkId",
    "Description",
)
_REMOVED = {"packet-length": "PacketLength", "description": "Description"}


def _already_modified(session: dict[str, Any], request: dict[str, Any]) -> bool:
    """The session already has every field the modify sets, and none it removes. A removed
    virtual-network-id is given a new one by EC2: no read can tell it was ours, so never."""
    removed = list(request.get("RemoveFields") or [])
    if any(field not in _REMOVED for field in removed):
        return False
    if any(session.get(_REMOVED[field]) not in (None, "") for field in removed):
        return False
    return all(
        session.get(key) == request[key] for key in _SET_FIELDS if request.get(key) is not None
    )


async def _took_effect(ec2: Ec2, kind: JobKind, request: dict[str, Any]) -> dict[str, Any] | None:
    """After unanswered calls, the job's success if one of them took effect, by one read of
    the session (no retry, paid at the Describe limiter): a delete's session absent, or a
    modify's already as asked. None when it did not, or when the read itself failed (Redis's
    trouble is raised, as for any call)."""
    session_id = str(request["TrafficMirrorSessionId"])
    try:
        session = await _session(ec2, session_id)
    except Exception as error:
        if classify(error).action in (Action.RESUME, Action.YIELD):
            raise
        found = classify(error)
        if kind is JobKind.DELETE and found.code in SESSION_NOT_FOUND_CODES:
            return _gone(session_id, found)
        return None
    if kind is JobKind.DELETE:
        return None if session is not None else _gone(session_id, _not_found(session_id))
    if session is not None and _already_modified(session, request):
        return {"TrafficMirrorSession": session}
    return None


async def _given_up(ec2: Ec2, record: JobResult, failure: Failure, ours_maybe: bool) -> JobResult:
    """A delete's or a modify's end on `failure`. Giving up on a retryable one after calls of
    ours that may have landed (`ours_maybe`), one read of the session says whether one of them
    took effect: then the job succeeded."""
    request = record["request"] or {}
    if failure.retryable and ours_maybe and not request.get("DryRun"):
        done = await _took_effect(ec2, kind_of(record), request)
        if done is not None:
            return records.succeeded(record, done)
    return _outcome(record, failure, ours_maybe)


def _outcome(record: JobResult, failure: Failure, ours_maybe: bool) -> JobResult:
    """A delete's or a modify's end on `failure`: a delete's NotFound is its success when a
    call of ours may have landed (`ours_maybe`), or when its request says `missing_ok` (the
    session's absence is the goal: the planner's deletes) and it is no DryRun; anything else
    fails with its code."""
    request = record["request"] or {}
    met = ours_maybe or (bool(request.get("missing_ok")) and not request.get("DryRun"))
    if kind_of(record) is JobKind.DELETE and failure.code in SESSION_NOT_FOUND_CODES and met:
        return records.succeeded(record, _gone(str(request["TrafficMirrorSessionId"]), failure))
    return records.failed(record, failure.code, failure.message, retryable=failure.retryable)


async def _source_of(ec2: Ec2, session_id: str) -> str | None:
    """The source ENI of the session (a sender that named none): one Describe, paid at its
    limiter; None when it is not there (EC2 answering its NotFound raises it as it is)."""
    session = await _session(ec2, session_id)
    return None if session is None else str(session["NetworkInterfaceId"])


async def _session(ec2: Ec2, session_id: str) -> dict[str, Any] | None:
    """The session as Describe shows it: one call, no retry, paid at the Describe limiter;
    None when it is not there (EC2 answering its NotFound raises it as it is)."""
    found = await ec2.road.paginate(
        DESCRIBE_ACTION,
        "TrafficMirrorSessions",
        retry=False,
        TrafficMirrorSessionIds=[session_id],
    )
    return next((s for s in found if s.get("TrafficMirrorSessionId") == session_id), None)


def _not_found(session_id: str) -> Failure:
    """What a delete or a modify of a session not there ends with: EC2's own code for it."""
    return Failure(
        SESSION_NOT_FOUND,
        f"The traffic mirror session '{session_id}' does not exist.",
        Action.FAIL,
        DESCRIBE_ACTION,
    )


def _gone(session_id: str, failure: Failure) -> dict[str, Any]:
    """A delete's success, when EC2 no longer knows the session after an attempt of ours: the
    answer a delete gives, and what EC2 said to the last one."""
    return {
        "TrafficMirrorSessionId": session_id,
        "AlreadyDeleted": {"Code": failure.code, "Message": failure.message},
    }


def _eni_lease(road: Ec2Road, eni_id: str) -> str:
    """The ENI's lease, in the account and Region of the road its job runs on."""
    if road.own:
        return keys.eni_lease(eni_id)
    return keys.eni_lease(eni_id, road.limiters.account, road.limiters.region)


def _already(record: JobResult) -> str:
    request = record["request"] or {}
    return (
        f"{request.get('NetworkInterfaceId')} is already mirrored to "
        f"{request.get('TrafficMirrorTargetId')} through {request.get('TrafficMirrorFilterId')}"
    )
