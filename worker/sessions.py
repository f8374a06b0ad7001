"""SessionNumber `auto`: what to send, decided from the ENI's sessions read under its lease.

Pure: worker/execute.py reads the sessions under the ENI's lease and sends what this says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tasks.contract import AUTO, SESSION_NUMBER_MAX
from tasks.errors import AlreadyMirroredError


def lowest_free_session_number(used: Iterable[int]) -> int | None:
    taken = set(used)
    return next((n for n in range(1, SESSION_NUMBER_MAX + 1) if n not in taken), None)


def same_mirror(
    sessions: Iterable[dict[str, Any]], target_ids: Iterable[str], filter_id: str
) -> list[dict[str, Any]]:
    """The sessions that already mirror to one of these targets through this filter."""
    targets = set(target_ids)
    return [
        s
        for s in sessions
        if s["TrafficMirrorTargetId"] in targets and s["TrafficMirrorFilterId"] == filter_id
    ]


def plan_session_number(
    sessions: list[dict[str, Any]], request: dict[str, Any], alternatives: Sequence[str] = ()
) -> tuple[dict[str, Any], bool]:
    """The request to send, and whether a session found may be this job's own.

    A job that chose a number before (a redelivery, or a lease lost) may have created its
    session with it: a session to its target with that number may be its own, and resending
    with its token tells (EC2 answers from the token's record, or refuses the number). A
    session to the mirror with any other number is not its own.

    A job whose request still says `auto` may have chosen a number and created its session
    too, the record of it lost (written on a Redis primary a failover threw away, or in the
    last second of writes a crash lost): a session to its own target through its filter may
    be its own, and the job resends with its token and that session's number. EC2 answers
    from the token's record if the job made it, and otherwise refuses the number (it is the
    session's) or the token (used with another number: IdempotentParameterMismatch); never a
    second session. A session to one of the rule's `alternatives` is another's: the job is
    refused (AlreadyMirrored).
    """
    target, filter_id = request["TrafficMirrorTargetId"], request["TrafficMirrorFilterId"]
    same = same_mirror(sessions, [target, *alternatives], filter_id)
    number = request["SessionNumber"]
    used = [int(s["SessionNumber"]) for s in sessions]
    if number == AUTO:
        mine = next((s for s in same if s["TrafficMirrorTargetId"] == target), None)
        if mine is not None:
            return {**request, "SessionNumber": int(mine["SessionNumber"])}, True
    else:
        if any(s["SessionNumber"] == number and s["TrafficMirrorTargetId"] == target for s in same):
            return request, True
        if not same and number not in used:
            return request, False
    if same:
        raise AlreadyMirroredError(
            f"{request['NetworkInterfaceId']} is already mirrored to "
            f"{same[0]['TrafficMirrorTargetId']} through {filter_id} by "
            f"{same[0]['TrafficMirrorSessionId']}"
        )
    # Our number (if any) went to another mirror: our create never took effect with it. With
    # no number free (3 sessions is EC2's limit anyway) EC2 gives the precise answer.
    return {**request, "SessionNumber": lowest_free_session_number(used) or 1}, False
