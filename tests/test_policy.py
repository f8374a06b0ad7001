"""Policies, planning by rules, and events read (pure parts: no Redis, no EC2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mirrorq.events import read_event
from mirrorq.planning import Outcome, Target, plan, planned_jobs
from mirrorq.policy import load_policy
from mirrorq.reconcile import parse_duration
from mirrorq.rules import Choose, Rule, Selectors
from tasks.errors import NotAnEventError, PolicyError

EVENTS = Path(__file__).parent / "events"
A, B, NLB = "tmt-0000000000000000a", "tmt-0000000000000000b", "tmt-0000000000000000c"
F = "tmf-00000000000000001"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


GOOD = f"""
[[rules]]
name = "prod-web"
vpc = ["vpc-0a1b2c3d"]
tag = ["Env=prod"]
targets = ["{A}", "{B}"]
choose = "same-az"
filter = "{F}"
packet_length = 128
description = "prod web"
session_tags = ["team=sec"]

[[rules]]
name = "db"
tag = ["Role=db"]
target = "{NLB}"
filter = "{F}"
"""


def test_a_policy_file_becomes_rules(tmp_path: Path) -> None:
    web, db = load_policy(write(tmp_path, GOOD))
    assert web.name == "prod-web"
    assert web.targets == (A, B)
    assert web.choose is Choose.SAME_AZ
    assert web.selectors == Selectors(vpc_ids=("vpc-0a1b2c3d",), tags=(("Env", "prod"),))
    assert web.options.request_fields() == {
        "PacketLength": 128,
        "Description": "prod web",
        "TagSpecifications": [
            {"ResourceType": "traffic-mirror-session", "Tags": [{"Key": "team", "Value": "sec"}]}
        ],
    }
    assert (db.targets, db.choose) == ((NLB,), None)


@pytest.mark.parametrize(
    ("line", "instead", "named"),
    [
        ('name = "prod-web"', 'name = "prod-web"\ncolour = "red"', "rules[1] (prod-web).colour"),
        ("packet_length = 128", "packet_length = 9000", "rules[1] (prod-web).packet_length"),
        ("packet_length = 128", 'packet_length = "128"', "rules[1] (prod-web).packet_length"),
        (
            'session_tags = ["team=sec"]',
            'session_tags = ["aws:x=1"]',
            "rules[1] (prod-web).session_tags",
        ),
        ('tag = ["Env=prod"]', 'tag = ["Env"]', "rules[1] (prod-web).tag.0"),
        ('name = "prod-web"', 'name = "db"', "rules[2] (db).name"),  # two rules, one name
    ],
)
def test_every_policy_error_names_the_file_the_rule_and_the_field(
    tmp_path: Path, line: str, instead: str, named: str
) -> None:
    path = write(tmp_path, GOOD.replace(line, instead, 1))
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert named in [e["field"] for e in raised.value.errors], raised.value.errors
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (f'name = "x"\ntarget = "{A}"\nfilter = "{F}"', "name the ENIs"),
        (f'name = "x"\nvpc = ["vpc-0a1b2c3d"]\nfilter = "{F}"', "target or targets"),
        (f'name = "x"\nvpc = ["vpc-0a1b2c3d"]\ntargets = ["{A}"]\nfilter = "{F}"', "choose"),
        (f'name = "x"\nvpc = ["vpc-0a1b2c3d"]\ntarget = "{F}"\nfilter = "{F}"', "pattern"),
    ],
)
def test_a_rule_must_say_what_to_mirror_where(tmp_path: Path, rule: str, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy(write(tmp_path, f"[[rules]]\n{rule}\n"))
    assert message in str(raised.value)
    assert "rules[1] (x)" in str(raised.value)


def test_a_file_that_is_not_toml_is_named_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy(write(tmp_path, "[[rules]\nname = 1\n"))
    assert "line 1" in str(raised.value)


# Planning by rules ------------------------------------------------------------------------


def eni(n: int, zone: str = "us-east-1a", **tags: str) -> dict[str, Any]:
    return {
        "NetworkInterfaceId": f"eni-{n:017x}",
        "InterfaceType": "interface",
        "AvailabilityZone": zone,
        "VpcId": "vpc-0a1b2c3d",
        "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()],
    }


def rule(name: str, targets: tuple[str, ...], choose: Choose | None, **tags: str) -> Rule:
    return Rule(name, Selectors(tags=tuple(tags.items())), targets, F, choose)


TARGETS = {
    A: Target(A, "eni-a", "us-east-1a", source_limit=2),
    B: Target(B, "eni-b", "us-east-1b", source_limit=2),
    NLB: Target(NLB),
}


def test_same_az_mirrors_each_eni_to_the_target_in_its_zone_within_its_limit() -> None:
    enis = [
        eni(1, "us-east-1a", Env="prod"),
        eni(2, "us-east-1b", Env="prod"),
        eni(3, "us-east-1a", Env="prod"),
        eni(4, "us-east-1a", Env="prod"),
        eni(5, "us-east-1c", Env="prod"),
        eni(6, "us-east-1a"),
    ]
    planned = plan([rule("web", (A, B), Choose.SAME_AZ, Env="prod")], enis, [], TARGETS, set())
    assert [(i.eni_id[-1], i.outcome, i.target_id) for i in planned.items] == [
        ("1", Outcome.CREATE, A),
        ("2", Outcome.CREATE, B),
        ("3", Outcome.CREATE, A),
        ("4", Outcome.TARGETS_FULL, None),  # A takes 2 sources
        ("5", Outcome.NO_TARGET_IN_ZONE, None),
    ]


def test_least_loaded_spreads_and_every_matching_rule_applies_within_three_sessions() -> None:
    enis = [eni(n, Env="prod") for n in range(1, 5)]
    busy = [
        {
            "NetworkInterfaceId": "eni-x",
            "TrafficMirrorTargetId": NLB,
            "TrafficMirrorFilterId": "tmf-other",
            "TrafficMirrorSessionId": "tms-1",
        }
    ]
    on_four = [
        {
            "NetworkInterfaceId": enis[3]["NetworkInterfaceId"],
            "TrafficMirrorTargetId": "tmt-z",
            "TrafficMirrorFilterId": "tmf-z",
            "TrafficMirrorSessionId": f"tms-{n}",
        }
        for n in (2, 3)
    ]
    rules = [
        rule("spread", (NLB, A), Choose.LEAST_LOADED, Env="prod"),
        rule("all", (B,), None, Env="prod"),
    ]
    targets = {**TARGETS, A: Target(A), B: Target(B)}
    planned = plan(rules, enis, busy + on_four, targets, set())
    spread = [(i.eni_id[-1], i.target_id) for i in planned.items if i.rule == "spread"]
    assert spread == [("1", A), ("2", NLB), ("3", A), ("4", NLB)]  # fewest sessions first
    everything = [(i.eni_id[-1], i.outcome) for i in planned.items if i.rule == "all"]
    assert everything == [
        ("1", Outcome.CREATE),
        ("2", Outcome.CREATE),
        ("3", Outcome.CREATE),
        ("4", Outcome.SESSION_LIMIT),
    ]  # 2 existing + 1 planned = EC2's 3
    jobs = planned_jobs(planned)
    assert jobs[0].rule == "spread"
    assert jobs[0].alternatives == [NLB]  # the rule's other target: one mirror per rule
    assert jobs[0].request["SessionNumber"] == "auto"


def test_a_mirror_to_any_of_a_rules_targets_counts_as_mirrored() -> None:
    enis = [eni(1, Env="prod")]
    existing = [
        {
            "NetworkInterfaceId": enis[0]["NetworkInterfaceId"],
            "TrafficMirrorTargetId": B,
            "TrafficMirrorFilterId": F,
            "TrafficMirrorSessionId": "tms-9",
        }
    ]
    planned = plan(
        [rule("web", (A, B), Choose.LEAST_LOADED, Env="prod")], enis, existing, TARGETS, set()
    )
    assert [i.outcome for i in planned.items] == [Outcome.ALREADY_MIRRORED]


# Events -----------------------------------------------------------------------------------


def sample(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


def test_the_three_events_that_make_jobs_are_read() -> None:
    running = read_event(json.dumps(sample("ec2-instance-state-change-running.json")))
    assert (running.event_id, running.instance_ids) == (
        "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        ("i-0abcd1111example0",),
    )
    created = read_event(sample("cloudtrail-create-network-interface.json"))
    assert created.eni_ids == ("eni-0123456789abcdef0",)
    attached = read_event(sample("cloudtrail-attach-network-interface.json"))
    assert attached.eni_ids == ("eni-0123456789abcdef0",)
    job = {"NetworkInterfaceId": "eni-0123456789abcdef0", "SessionNumber": "auto"}
    own = read_event(
        {
            "id": "e-1",
            "detail-type": "mirrorq.CreateTrafficMirrorSession",
            "source": "my.service",
            "detail": job,
        }
    )
    assert own.job == job


def test_other_events_are_ignored_with_the_reason() -> None:
    pending = sample("ec2-instance-state-change-running.json")
    pending["detail"]["state"] = "pending"
    assert "pending" in read_event(pending).ignored
    failed = sample("cloudtrail-create-network-interface.json")
    failed["detail"]["errorCode"] = "UnauthorizedOperation"
    assert "failed" in read_event(failed).ignored
    other = sample("cloudtrail-create-network-interface.json")
    other["detail"]["eventName"] = "DetachNetworkInterface"
    assert "DetachNetworkInterface" in read_event(other).ignored


def test_a_sensor_leaving_asks_for_the_dark_session_repair() -> None:
    """An instance leaving running, a target or an ENI deleted: what went, for the repair."""
    for state in ("stopping", "stopped", "shutting-down", "terminated"):
        left = sample("ec2-instance-state-change-running.json")
        left["detail"]["state"] = state
        event = read_event(left)
        assert event.gone == (left["detail"]["instance-id"],)
        assert not event.ignored
        assert not event.wants_enis
    deleted = sample("cloudtrail-create-network-interface.json")
    deleted["detail"]["eventName"] = "DeleteNetworkInterface"
    deleted["detail"]["requestParameters"] = {"networkInterfaceId": "eni-0123456789abcdef0"}
    assert read_event(deleted).gone == ("eni-0123456789abcdef0",)
    target = sample("cloudtrail-create-network-interface.json")
    target["detail"]["eventName"] = "DeleteTrafficMirrorTarget"
    target["detail"]["requestParameters"] = {
        "DeleteTrafficMirrorTargetRequest": {"TrafficMirrorTargetId": "tmt-0123456789abcdef0"}
    }
    assert read_event(target).gone == ("tmt-0123456789abcdef0",)
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/s/0123456789abcdef"
    balancer = sample("cloudtrail-create-network-interface.json")
    balancer["source"] = "aws.elasticloadbalancing"
    balancer["detail"]["eventSource"] = "elasticloadbalancing.amazonaws.com"
    balancer["detail"]["eventName"] = "DeleteLoadBalancer"
    balancer["detail"]["requestParameters"] = {"loadBalancerArn": arn}
    balancer["detail"]["responseElements"] = None
    assert read_event(balancer).gone == (arn,)
    endpoint = sample("cloudtrail-create-network-interface.json")
    endpoint["detail"]["eventName"] = "DeleteVpcEndpoints"
    assert read_event(endpoint).gone  # the repair reads every target of the place
    # CloudTrail's shape: {tag, content} for one id, a list of them for several.
    one = {"tag": 1, "content": "vpce-0123456789abcdef0"}
    endpoint["detail"]["requestParameters"] = {"DeleteVpcEndpointsRequest": {"VpcEndpointId": one}}
    assert read_event(endpoint).gone == ("vpce-0123456789abcdef0",)
    two = [one, {"tag": 2, "content": "vpce-0123456789abcdef1"}]
    endpoint["detail"]["requestParameters"] = {"DeleteVpcEndpointsRequest": {"VpcEndpointId": two}}
    assert read_event(endpoint).gone == ("vpce-0123456789abcdef0", "vpce-0123456789abcdef1")
    assert (
        "Scheduled Event"
        in read_event({"id": "x", "detail-type": "Scheduled Event", "detail": {}}).ignored
    )


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        '{"id": "x"}',
        '{"id": "x", "detail-type": "y", "detail": 3}',
        "[" * 100_000,
        '{"id": "x", "detail-type": "EC2 Instance State-change Notification", '
        '"detail": {"state": "running"}}',
        # EC2's filters read `*` and `?` as wildcards: such an id would name every ENI.
        '{"id": "x", "detail-type": "EC2 Instance State-change Notification", '
        '"detail": {"state": "running", "instance-id": "i-*"}}',
        '{"id": "x", "detail-type": "EC2 Instance State-change Notification", '
        '"detail": {"state": "running", "instance-id": "i-0123456?"}}',
        '{"id": "x", "detail-type": "AWS API Call via CloudTrail", "detail": {"eventName": '
        '"AttachNetworkInterface", "requestParameters": {"networkInterfaceId": "eni-*"}}}',
        '{"id": "x-\\ud800", "detail-type": "Scheduled Event", "detail": {}}',  # not text
    ],
)
def test_what_is_not_an_event_is_said_so(body: str) -> None:
    with pytest.raises(NotAnEventError):
        read_event(body)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("0.5s", 0.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "5 minutes", "-1s", "1d"])
def test_durations_that_are_not(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "detail",
    [
        {"eventName": "CreateNetworkInterface", "responseElements": [1]},
        {"eventName": "CreateNetworkInterface", "responseElements": {"networkInterface": "eni-1"}},
        {"eventName": "AttachNetworkInterface", "requestParameters": "eni-1"},
        {"eventName": 7},
    ],
)
def test_a_cloudtrail_record_of_the_wrong_shape_is_not_an_event(detail: dict[str, Any]) -> None:
    """Found in review: `responseElements: [1]` raised AttributeError and stopped the listener."""
    body = {"id": "x", "detail-type": "AWS API Call via CloudTrail", "detail": detail}
    with pytest.raises(NotAnEventError):
        read_event(body)


def test_a_region_that_is_not_a_string_is_not_an_event() -> None:
    with pytest.raises(NotAnEventError):
        read_event({"id": "x", "detail-type": "Scheduled Event", "detail": {}, "region": 7})


def test_a_duplicate_rule_name_is_named_even_when_the_first_rule_is_invalid(
    tmp_path: Path,
) -> None:
    text = GOOD.replace("packet_length = 128", "packet_length = 9000").replace(
        'name = "db"', 'name = "prod-web"'
    )
    with pytest.raises(PolicyError) as raised:
        load_policy(write(tmp_path, text))
    assert "rules[2] (prod-web).name" in [e["field"] for e in raised.value.errors]


def test_a_rule_with_a_bad_field_and_no_selector_is_told_both(tmp_path: Path) -> None:
    """Found by CI: a bad field stopped the check of the rule as a whole, so `mirrorq mirror
    --target tmt-1 --filter tmf-1` named the ids and not the missing selector."""
    with pytest.raises(PolicyError) as raised:
        load_policy(write(tmp_path, '[[rules]]\nname = "x"\ntarget = "tmt-1"\nfilter = "tmf-1"'))
    assert [e["field"] for e in raised.value.errors] == [
        "rules[1] (x).target",
        "rules[1] (x).filter",
        "rules[1] (x).(rule)",
    ]
    assert "name the ENIs" in raised.value.errors[-1]["message"]
