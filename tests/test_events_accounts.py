"""Events from many accounts: an event's jobs run in the account and Region it comes from,
through the policy's [[accounts]] (that account's role, its Region), whether it comes by
`POST /v1/events` or by `mirrorq listen` reading one SQS queue per Region. An event of an
account or Region the policy does not name is ignored and counted; a role STS refuses leaves
only its own events unhandled.

Real `mirrorq listen`, `mirrorq api` and `mirrorq worker` processes, real Redis, the emulator
over HTTP (EC2, STS and SQS, per account and Region); the sessions counted per account.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from emulator.event_shapes import eni_created
from emulator.lab import lab_sqs_client
from emulator.org_lab import account_client, control, role_arn, seed_org_lab, sessions_in
from mirrorq.processes import EmulatorProcess, ListenerProcess, WorkerProcess
from tests.api_process import AUTH, start_api
from tests.helpers import wait_until
from tests.intake_queues import queue_depth, send

EAST, WEST, ELSEWHERE = "us-east-1", "eu-west-1", "ap-southeast-2"
REGIONS = (EAST, WEST)
ENIS = 8  # per account-Region: half by the API, half by the listener


def eni_event(account: str, region: str, eni: str) -> dict[str, Any]:
    """CloudTrail's record of a CreateNetworkInterface in `account`, `region`."""
    return eni_created(account, region, eni, user_agent="test")


def accounts_policy(lab: dict[str, Any], accounts: list[str]) -> str:
    """`accounts` in both Regions; one rule, to the shared sensors, each place's filter."""
    targets = [lab["security"]["regions"][r]["target_ids"][0] for r in REGIONS]
    filters = [p["filter_id"] for s in lab["accounts"].values() for p in s["regions"].values()]
    entries = "".join(
        f'[[accounts]]\nname = "a{n}"\nrole_arn = "{role_arn(account)}"\n'
        f"regions = {json.dumps(list(REGIONS))}\n\n"
        for n, account in enumerate(accounts)
    )
    return (
        entries
        + f'[[rules]]\nname = "org"\ntag = ["mirrorq-lab=1"]\ntargets = {json.dumps(targets)}\n'
        + f'choose = "least-loaded"\nfilters = {json.dumps(filters)}\n'
    )


def region_queues(url: str) -> dict[str, str]:
    """One queue per Region, as EventBridge's cross-account delivery needs."""
    name = f"events-{uuid.uuid4().hex[:8]}"
    return {
        region: lab_sqs_client(url, region).create_queue(
            QueueName=name, Attributes={"VisibilityTimeout": "2"}
        )["QueueUrl"]
        for region in REGIONS
    }


def depth(url: str, region: str, queue: str) -> int:
    sqs = lab_sqs_client(url, region)
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def send_to(url: str, region: str, queue: str, events: list[dict[str, Any]]) -> None:
    sqs = lab_sqs_client(url, region)
    for start in range(0, len(events), 10):
        sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[
                {"Id": str(n), "MessageBody": json.dumps(e)}
                for n, e in enumerate(events[start : start + 10])
            ],
        )


def test_events_of_three_accounts_in_two_regions_are_each_mirrored_once_in_their_own(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = emulator.url
    lab = seed_org_lab(url, accounts=4, regions=REGIONS, enis=ENIS)
    *named, stranger = lab["accounts"]
    policy = tmp_path / "policy.toml"
    policy.write_text(accounts_policy(lab, named))
    queues = region_queues(url)
    by_api: list[dict[str, Any]] = []
    by_sqs: dict[str, list[dict[str, Any]]] = {region: [] for region in REGIONS}
    for account in named:
        for region in REGIONS:
            enis = lab["accounts"][account]["regions"][region]["eni_ids"]
            by_api += [eni_event(account, region, e) for e in enis[: ENIS // 2]]
            by_sqs[region] += [eni_event(account, region, e) for e in enis[ENIS // 2 :]]
    # Ignored, never failed: an account no entry names, a Region no entry of it names.
    strangers = [
        eni_event(stranger, region, lab["accounts"][stranger]["regions"][region]["eni_ids"][0])
        for region in REGIONS
    ]
    elsewhere = eni_event(
        named[0], ELSEWHERE, lab["accounts"][named[0]]["regions"][EAST]["eni_ids"][0]
    )

    for _ in range(2):
        start_worker(MIRRORQ_CONCURRENCY="8")
    api_env = {**env, "MIRRORQ_API_TOKENS": AUTH["Authorization"].split()[1]}
    api = start_api(api_env, tmp_path, "--policy", str(policy))
    listener = ListenerProcess(
        "listener-accounts",
        env,
        *(a for region, queue in queues.items() for a in ("--sqs-queue-url", f"{region}={queue}")),
        "--policy",
        str(policy),
    )
    try:
        http = httpx.Client(base_url=api.url, headers=AUTH, timeout=60)  # type: ignore[attr-defined]
        listener.wait_ready()
        for region in REGIONS:  # every event twice: EventBridge delivers at least once
            strays = [e for e in strangers if e["region"] == region]
            send_to(url, region, queues[region], by_sqs[region] * 2 + strays)
        send_to(url, EAST, queues[EAST], [elsewhere])
        answers = [http.post("/v1/events", json=e) for e in by_api]
        assert [a.status_code for a in answers] == [202] * len(by_api)
        assert all(len(a.json()["job_ids"]) == 1 for a in answers), answers[0].json()
        ignored = http.post("/v1/events", json=strangers[0]).json()
        assert ignored["job_ids"] == []
        assert (
            ignored["ignored"] == f"account {stranger} (the policy's [[accounts]] do not name it)"
        )
        other_region = http.post("/v1/events", json={**elsewhere, "id": "elsewhere-2"}).json()
        assert other_region["ignored"].startswith(f"region {ELSEWHERE} of account {named[0]}")

        def mirrored() -> bool:
            return all(
                sessions_in(url, account, region)
                == dict.fromkeys(lab["accounts"][account]["regions"][region]["eni_ids"], 1)
                for account in named
                for region in REGIONS
            )

        wait_until(mirrored, timeout=120, interval=0.5, what="every account-Region mirrored")
        wait_until(
            lambda: all(depth(url, r, q) == 0 for r, q in queues.items()),
            timeout=60,
            interval=0.5,
            what="the listener to delete every message, ignored ones too",
        )
        # Again by the API: a redelivery makes nothing (its ENI is mirrored, in its account).
        again = http.post("/v1/events", json=by_api[0]).json()
        assert again["job_ids"] == []
        assert again["ignored"].startswith("no ENI of it left to mirror")
        assert listener.proc.poll() is None
    finally:
        listener.stop()
        api.stop()
    for account in named:
        for region in REGIONS:
            assert sum(sessions_in(url, account, region).values()) == ENIS, (account, region)
    for region in REGIONS:
        assert sessions_in(url, stranger, region) == {}
    assert sessions_in(url, "123456789012", EAST) == {}  # the fleet's own: nothing
    summary = re.findall(
        r"events (\d+): jobs (\d+), duplicates (\d+), ignored (\d+) \((\d+) of an account or "
        r"Region the policy does not name\)",
        listener.log_path.read_text(),
    )[-1]
    sqs_events = sum(len(v) for v in by_sqs.values())
    # The 3 strays ignored and counted as such; a second delivery handled after its ENI's
    # session exists is ignored too (nothing left to mirror), one in the same receive is not.
    events, jobs, _, ignored_n, other_place = map(int, summary)
    assert jobs == sqs_events
    assert other_place == 3
    assert ignored_n >= 3
    assert events >= sqs_events + 3


def test_a_role_sts_refuses_leaves_only_its_own_events_unhandled(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = emulator.url
    lab = seed_org_lab(url, accounts=3, regions=REGIONS, enis=4)
    *allowed, denied = lab["accounts"]
    control(url, "roles", {"role_arn": role_arn(denied), "assumable": False})
    policy = tmp_path / "policy.toml"
    policy.write_text(accounts_policy(lab, list(lab["accounts"])))
    queue = lab_sqs_client(url, EAST).create_queue(
        QueueName=f"events-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "2"}
    )["QueueUrl"]
    # Every account's events in one receive's reach: the denied one's mixed in with the rest.
    events = [
        eni_event(account, EAST, eni)
        for eni_n in range(4)
        for account in lab["accounts"]
        for eni in lab["accounts"][account]["regions"][EAST]["eni_ids"][eni_n : eni_n + 1]
    ]
    send(url, queue, [json.dumps(e) for e in events])
    start_worker(MIRRORQ_CONCURRENCY="8")
    api_env = {**env, "MIRRORQ_API_TOKENS": AUTH["Authorization"].split()[1]}
    api = start_api(api_env, tmp_path, "--policy", str(policy))
    listener = ListenerProcess(
        "listener-denied", env, "--sqs-queue-url", queue, "--policy", str(policy)
    )
    try:
        listener.wait_ready()
        for account in allowed:
            wait_until(
                lambda a=account: (
                    sessions_in(url, a, EAST)
                    == dict.fromkeys(lab["accounts"][a]["regions"][EAST]["eni_ids"], 1)
                ),
                timeout=90,
                interval=0.5,
                what=f"account {account} mirrored",
            )
        # Only the denied account's 4 messages stay, coming back after each visibility timeout.
        wait_until(lambda: queue_depth(url, queue) == 4, timeout=60, interval=0.5)
        http = httpx.Client(base_url=api.url, headers=AUTH, timeout=60)  # type: ignore[attr-defined]
        refused = http.post(
            "/v1/events",
            json=eni_event(denied, WEST, lab["accounts"][denied]["regions"][WEST]["eni_ids"][0]),
        )
        assert refused.status_code == 502, refused.text
        assert refused.json()["error"]["code"] == "AccessDenied"
        fine = http.post(
            "/v1/events",
            json=eni_event(
                allowed[0], WEST, lab["accounts"][allowed[0]]["regions"][WEST]["eni_ids"][0]
            ),
        )
        assert len(fine.json()["job_ids"]) == 1
        assert listener.proc.poll() is None
    finally:
        listener.stop()
        api.stop()
    assert queue_depth(url, queue) == 4
    for region in REGIONS:
        assert sessions_in(url, denied, region) == {}
    log = listener.log_path.read_text()
    assert f"account {denied}, {EAST}: its role was not assumed: AccessDenied" in log


def test_an_events_rule_finds_each_places_filter_by_its_tag(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found merging the tag lookup with the events of many accounts: the intake planned a
    rule's filter as its first id, so a rule that finds its filter by a tag (no id at all)
    made jobs with no filter. An event's rule resolves its filter in the event's own place,
    as `reconcile` does: each session goes through its account-Region's own tagged filter."""
    url = emulator.url
    lab = seed_org_lab(url, accounts=2, regions=REGIONS, enis=2)
    accounts = list(lab["accounts"])
    targets = [lab["security"]["regions"][r]["target_ids"][0] for r in REGIONS]
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "".join(
            f'[[accounts]]\nname = "a{n}"\nrole_arn = "{role_arn(account)}"\n'
            f"regions = {json.dumps(list(REGIONS))}\n\n"
            for n, account in enumerate(accounts)
        )
        + f'[[rules]]\nname = "tagged"\ntag = ["mirrorq-lab=1"]\ntargets = {json.dumps(targets)}\n'
        + 'choose = "least-loaded"\nfilter_tag = "mirrorq-filter=default"\n'
    )
    start_worker(MIRRORQ_CONCURRENCY="8")
    api_env = {**env, "MIRRORQ_API_TOKENS": AUTH["Authorization"].split()[1]}
    api = start_api(api_env, tmp_path, "--policy", str(policy))
    try:
        http = httpx.Client(base_url=api.url, headers=AUTH, timeout=60)  # type: ignore[attr-defined]
        for account in accounts:
            for region in REGIONS:
                for eni in lab["accounts"][account]["regions"][region]["eni_ids"]:
                    answer = http.post("/v1/events", json=eni_event(account, region, eni))
                    assert answer.status_code == 202, answer.text
                    assert len(answer.json()["job_ids"]) == 1, answer.json()

        def mirrored() -> bool:
            return all(sum(sessions_in(url, a, r).values()) == 2 for a in accounts for r in REGIONS)

        wait_until(mirrored, timeout=60, interval=0.5, what="every account-Region mirrored")
    finally:
        api.stop()
    for account in accounts:
        for region in REGIONS:
            place = lab["accounts"][account]["regions"][region]
            described = account_client(url, account, region).describe_traffic_mirror_sessions()
            assert {s["TrafficMirrorFilterId"] for s in described["TrafficMirrorSessions"]} == {
                place["filter_id"]
            }
