"""Load-balancer targets found dead and their sessions repaired end to end (issue 18): rules
whose targets are Network Load Balancers and Gateway Load Balancer endpoints, made for real
in the emulator (moto's elbv2 and VPC endpoints). The NLB of one target is deleted, the
endpoint of another: `coverage` shows their sessions dark, a `reconcile` that cannot read the
load balancers (DescribeLoadBalancers refused) changes nothing, not even with `--prune`, and
one that can moves each dark session to its rule's other target by modify; a rule whose NLB
lives is left alone. Real Redis, real worker processes, the emulator over HTTP (and a proxy in
front of its elbv2 for the refusal)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator.lab import (
    LAB_IMAGE_ID,
    create_gwlb_endpoint,
    create_nlb,
    lab_client,
    lab_sqs_client,
    seed_lab,
)
from emulator.org_lab import control
from mirrorq.managed import RULE_TAG, rule_tag
from mirrorq.processes import MIRRORQ, EmulatorProcess, ListenerProcess, WorkerProcess
from tests.api_process import AUTH, TOKENS, start_api
from tests.fault_proxy import Answer, FaultProxy
from tests.helpers import producer_for, records, sessions, wait_until

ACCESS_DENIED = (
    b'<ErrorResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/">'
    b"<Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to "
    b"perform: elasticloadbalancing:DescribeLoadBalancers</Message></Error>"
    b"<RequestId>0</RequestId></ErrorResponse>"
)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIRRORQ, *args], env=env, capture_output=True, text=True, check=False, timeout=300
    )


def coverage(env: dict[str, str], policy: Path) -> tuple[int, dict[str, Any]]:
    done = run(env, "coverage", "--policy", str(policy), "--json", "--fail-under", "100")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def by_id(url: str) -> dict[str, tuple[str, str, int]]:
    return {
        s["TrafficMirrorSessionId"]: (
            s["NetworkInterfaceId"],
            s["TrafficMirrorTargetId"],
            s["SessionNumber"],
        )
        for s in sessions(url)
    }


def targets(url: str, lab: dict[str, Any]) -> dict[str, Any]:
    ec2, elbv2 = lab_client(url), lab_client(url, service="elbv2")
    nlbs = [create_nlb(elbv2, f"sensors-{n}", lab["subnet_ids"]) for n in range(3)]
    assert all(":loadbalancer/net/" in arn for arn in nlbs)
    endpoints = [
        create_gwlb_endpoint(url, lab["vpc_id"], lab["subnet_ids"], f"inspect-{n}")
        for n in range(2)
    ]

    def target(**kind: str) -> str:
        made = ec2.create_traffic_mirror_target(**kind)["TrafficMirrorTarget"]
        return str(made["TrafficMirrorTargetId"])

    return {
        "nlbs": nlbs,
        "endpoints": endpoints,
        "web": [target(NetworkLoadBalancerArn=arn) for arn in nlbs[:2]],
        "db": [target(GatewayLoadBalancerEndpointId=e) for e in endpoints],
        "cache": [target(NetworkLoadBalancerArn=nlbs[2])],
    }


def policy_text(lab: dict[str, Any], found: dict[str, Any], roles: tuple[str, ...]) -> str:
    return "".join(
        f"""
[[rules]]
name = "{role}"
tag = ["Role={role}", "mirrorq-lab=1"]
targets = {json.dumps(found[role])}
choose = "least-loaded"
filter = "{lab["filter_id"]}"
"""
        for role in roles
    )


def test_sessions_on_a_deleted_nlb_or_gwlb_endpoint_are_dark_and_moved_a_live_nlb_kept(
    emulator: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = emulator.url
    lab = seed_lab(url, 60)  # Role=web/db/cache in turn: 20 ENIs each
    found = targets(url, lab)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(lab, found, ("web", "db", "cache")))
    worker = start_worker(**env)

    made = run(env, "reconcile", "--policy", str(policy), "--wait")
    assert made.returncode == 0, made.stderr[-3000:]
    worker.stop()  # the repairs below wait in the queue until a worker is back
    first = by_id(url)
    assert len(first) == 60
    status, seen = coverage(env, policy)
    assert (status, seen["percent"], seen["totals"]["dark"]) == (0, 100.0, 0)

    # The first web NLB is deleted, the first db endpoint too (EC2 keeps their sessions).
    (web_gone, web_live), (db_gone, db_live) = found["web"], found["db"]
    lab_client(url, service="elbv2").delete_load_balancer(LoadBalancerArn=found["nlbs"][0])
    lab_client(url).delete_vpc_endpoints(VpcEndpointIds=[found["endpoints"][0]])
    on_web_gone = {s for s, v in first.items() if v[1] == web_gone}
    on_db_gone = {s for s, v in first.items() if v[1] == db_gone}
    assert len(on_web_gone) == len(on_db_gone) == 10  # least-loaded: half of each rule's 20

    status, seen = coverage(env, policy)
    assert status == 1
    assert seen["totals"]["dark"] == 20
    rules = {r["rule"]: r for r in seen["rules"]}
    dark = {
        e["session_id"]: (e["target"], e["reason"])
        for rule in ("web", "db")
        for e in rules[rule]["enis"]
        if e["state"] == "dark"
    }
    assert dark == {
        **{s: (web_gone, "load_balancer_gone") for s in on_web_gone},
        **{s: (db_gone, "endpoint_deleted") for s in on_db_gone},
    }
    assert (rules["cache"]["live"], rules["cache"]["dark"]) == (20, 0)

    # A pass that cannot read the load balancers repairs nothing and prunes nothing, even
    # with --prune --force against a policy that no longer wants the cache rule's sessions.
    def refuse(action: str, _: dict[str, str], __: int) -> Answer | None:
        if action == "DescribeLoadBalancers":
            return Answer(403, ACCESS_DENIED, "text/xml", forward="instead")
        return None

    shrunk = tmp_path / "shrunk.toml"
    shrunk.write_text(policy_text(lab, found, ("web", "db")))
    with FaultProxy(url, refuse) as proxy:
        refused_env = {**env, "MIRRORQ_ELBV2_ENDPOINT_URL": proxy.url}
        refused = run(refused_env, "reconcile", "--policy", str(shrunk), "--prune", "--force")
        assert proxy.mangled["DescribeLoadBalancers"] >= 1
    assert refused.returncode != 0
    assert "AccessDenied" in refused.stderr
    assert by_id(url) == first
    stats = emulator.stats()
    assert "ModifyTrafficMirrorSession" not in stats
    assert "DeleteTrafficMirrorSession" not in stats

    repaired = run(env, "reconcile", "--policy", str(policy))
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    # The modifies are queued: coverage says which dark sessions are being repaired.
    status, seen = coverage(env, policy)
    assert (status, seen["totals"]["dark"], seen["totals"]["repairing"]) == (1, 20, 20)
    repairing = {
        e["session_id"]
        for rule in seen["rules"]
        for e in rule["enis"]
        if e["state"] == "dark" and e["repair_job"]
    }
    assert repairing == on_web_gone | on_db_gone
    start_worker(**env)
    done = producer_for(redis_url).wait_batch(repaired.stdout.strip(), timeout=120)
    assert done is not None
    assert done["counts"] == {"modified": 20}, done
    after = by_id(url)
    assert after.keys() == first.keys()  # nothing deleted or created
    for session_id, (eni, target, number) in first.items():
        moved = {web_gone: web_live, db_gone: db_live}.get(target, target)
        assert after[session_id] == (eni, moved, number)
    stats = emulator.stats()
    assert stats["ModifyTrafficMirrorSession"] == {"ok": 20}
    assert "DeleteTrafficMirrorSession" not in stats
    assert stats["DescribeLoadBalancers"].get("ok", 0) >= 1
    status, seen = coverage(env, policy)
    assert (status, seen["percent"], seen["totals"]["dark"]) == (0, 100.0, 0)
    assert seen["totals"]["repairing"] == 0
    # Nor is anything moved by hand to the deleted NLB's target: it would mirror nothing.
    refused = run(env, "retarget", "--from", web_live, "--to", web_gone)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "load_balancer_gone" in refused.stderr


def test_a_failed_or_provisioning_nlb_as_the_emulator_holds_it(emulator: EmulatorProcess) -> None:
    """The emulator's elbv2: AWS's ARNs and errors, and a state the tests can hold."""
    url = emulator.url
    lab = seed_lab(url, 1)
    elbv2 = lab_client(url, service="elbv2")
    arn = lab["nlb_arn"]
    assert ":loadbalancer/net/mirrorq-lab/" in arn
    (described,) = elbv2.describe_load_balancers(LoadBalancerArns=[arn])["LoadBalancers"]
    assert (described["Type"], described["State"]["Code"]) == ("network", "active")
    gone = arn[:-4] + "0000"
    with pytest.raises(elbv2.exceptions.LoadBalancerNotFoundException) as refused:
        elbv2.describe_load_balancers(LoadBalancerArns=[arn, gone])  # AWS: any one missing
    assert refused.value.response["Error"]["Code"] == "LoadBalancerNotFound"
    for state in ("failed", "provisioning"):
        control(url, "load-balancer", {"arn": arn, "state": state})
        (described,) = elbv2.describe_load_balancers(LoadBalancerArns=[arn])["LoadBalancers"]
        assert described["State"]["Code"] == state


@pytest.fixture(scope="module")
def events_emulator() -> Iterator[EmulatorProcess]:
    emulator = EmulatorProcess("--seed", "19", "--events-queue", "events")
    yield emulator
    emulator.stop()


def delete_nlb(url: str, found: dict[str, Any]) -> None:
    lab_client(url, service="elbv2").delete_load_balancer(LoadBalancerArn=found["nlbs"][0])


def delete_gwlb_endpoint(url: str, found: dict[str, Any]) -> None:
    lab_client(url).delete_vpc_endpoints(VpcEndpointIds=[found["endpoints"][0]])


@pytest.mark.parametrize(
    ("rule", "enis", "delete"),
    [
        pytest.param("web", 30, delete_nlb, id="nlb-DeleteLoadBalancer"),
        pytest.param("db", 12, delete_gwlb_endpoint, id="gwlb-endpoint-DeleteVpcEndpoints"),
    ],
)
def test_a_deleted_load_balancer_s_cloudtrail_event_repairs_its_sessions_through_the_listener(
    events_emulator: EmulatorProcess,
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    rule: str,
    enis: int,
    delete: Callable[[str, dict[str, Any]], None],
) -> None:
    """An NLB deleted (`DeleteLoadBalancer`) or a Gateway Load Balancer endpoint deleted (EC2's
    `DeleteVpcEndpoints`): the CloudTrail event the emulator sends for it, and a real
    listener's repair of the rule's sessions on it (a third of the lab's ENIs are the rule's,
    half of them on the deleted target)."""
    emulator = events_emulator
    emulator.reset()
    url = emulator.url
    env = {**env, "MIRRORQ_EC2_ENDPOINT_URL": url}
    lab = seed_lab(url, enis)
    found = targets(url, lab)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(lab, found, (rule,)))
    start_worker(**env)
    made = run(env, "reconcile", "--policy", str(policy), "--wait")
    assert made.returncode == 0, made.stderr[-3000:]
    first = by_id(url)
    gone, live = found[rule]
    on_gone = {s for s, v in first.items() if v[1] == gone}
    assert len(first) == enis // 3
    assert len(on_gone) == enis // 6

    queue = emulator.ready["events_queue_url"]
    lab_sqs_client(url).purge_queue(QueueUrl=queue)
    listener = ListenerProcess("listener", env, "--sqs-queue-url", queue, "--policy", str(policy))
    trail = "AWS API Call via CloudTrail"
    try:
        listener.wait_ready()
        sent = emulator.events()["sent"].get(trail, 0)
        delete(url, found)
        wait_until(
            lambda: all(by_id(url)[s][1] == live for s in on_gone),
            timeout=120,
            interval=0.5,
            what="the listener's modifies",
        )
        assert listener.proc.poll() is None, "the listener stopped"
    finally:
        listener.stop()
    assert emulator.events()["sent"][trail] == sent + 1  # the deletion's record
    modifies = [r for r in records(redis_url) if r.get("kind") == "modify"]
    assert len(modifies) == len(on_gone)
    assert all(r["status"] == "modified" and r.get("event_id") for r in modifies)
    after = by_id(url)
    assert after.keys() == first.keys()
    assert {s: v[2] for s, v in after.items()} == {s: v[2] for s, v in first.items()}
    assert emulator.stats()["ModifyTrafficMirrorSession"] == {"ok": len(on_gone)}


def running_event(event_id: str, instance_id: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2026-12-06T19:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"instance-id": instance_id, "state": "running"},
    }


def test_an_event_never_mirrors_a_new_eni_into_a_dead_target(
    emulator: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """README: "A dead target takes no new session either". A rule with two NLB targets,
    least-loaded; the first's load balancer is deleted (its sessions already moved away, so
    it has the fewest). An instance launched: its `running` event (POST /v1/events, as
    `mirrorq listen` handles it) must mirror its ENI to the live NLB; an instance whose only
    rule's one target is that dead NLB gets no job, and the planner's reason, `no_target`, as
    `reconcile` gives it (review 2026-12-06)."""
    ec2, elbv2 = lab_client(emulator.url), lab_client(emulator.url, service="elbv2")
    lab = seed_lab(emulator.url, 2)
    live_target = lab["target_ids"]["nlb"]
    dead_arn = create_nlb(elbv2, "sensors-dead", lab["subnet_ids"])
    dead_target = ec2.create_traffic_mirror_target(NetworkLoadBalancerArn=dead_arn)[
        "TrafficMirrorTarget"
    ]["TrafficMirrorTargetId"]
    ec2.create_traffic_mirror_session(  # the live NLB already serves one ENI
        NetworkInterfaceId=lab["eni_ids"][0],
        TrafficMirrorTargetId=live_target,
        TrafficMirrorFilterId=lab["filter_id"],
        SessionNumber=1,
        TagSpecifications=[
            {"ResourceType": "traffic-mirror-session", "Tags": [{"Key": RULE_TAG, "Value": "web"}]}
        ],
    )
    elbv2.delete_load_balancer(LoadBalancerArn=dead_arn)
    launched = {}
    for team in ("web", "sink"):
        instance = ec2.run_instances(
            ImageId=LAB_IMAGE_ID,
            MinCount=1,
            MaxCount=1,
            SubnetId=lab["subnet_ids"][0],
            InstanceType="c5.large",
        )["Instances"][0]
        eni_id = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
        ec2.create_tags(Resources=[eni_id], Tags=[{"Key": "Team", "Value": team}])
        launched[team] = instance["InstanceId"]
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'[[rules]]\nname = "web"\ntag = ["Team=web"]\ntargets = ["{dead_target}", '
        f'"{live_target}"]\nchoose = "least-loaded"\nfilter = "{lab["filter_id"]}"\n\n'
        f'[[rules]]\nname = "sink"\ntag = ["Team=sink"]\ntarget = "{dead_target}"\n'
        f'filter = "{lab["filter_id"]}"\n'
    )
    api = start_api(
        {**env, "MIRRORQ_API_TOKENS": ",".join(TOKENS)}, tmp_path, "--policy", str(policy)
    )
    try:
        post = f"{api.url}/v1/events"  # type: ignore[attr-defined]
        event = running_event("review-running-1", launched["web"])
        answer = httpx.post(post, json=event, headers=AUTH, timeout=60)
        assert answer.status_code == 202, answer.text
        (job_id,) = answer.json()["job_ids"]
        record = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=AUTH, timeout=30).json()  # type: ignore[attr-defined]
        event = running_event("review-running-2", launched["sink"])
        sink = httpx.post(post, json=event, headers=AUTH, timeout=60)
    finally:
        api.stop()
    assert record["request"]["TrafficMirrorTargetId"] == live_target, record["request"]
    assert sink.status_code == 202, sink.text
    assert sink.json()["job_ids"] == [], sink.json()
    assert "no_target" in sink.json()["ignored"], sink.json()


def _prod_enis(url: str, lab: dict[str, Any]) -> list[str]:
    return sorted(
        e["NetworkInterfaceId"]
        for e in lab_client(url).describe_network_interfaces(
            Filters=[
                {"Name": "vpc-id", "Values": [lab["vpc_id"]]},
                {"Name": "tag:Env", "Values": ["prod"]},
            ]
        )["NetworkInterfaces"]
    )


def _on_lab_nlb(url: str, tmp_path: Path) -> tuple[dict[str, Any], Path, int]:
    """Managed sessions of rule `web` (its prod ENIs) on the lab's NLB target, and its policy."""
    ec2, lab = lab_client(url), seed_lab(url, 12)
    prod = _prod_enis(url, lab)
    for eni in prod:
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=eni,
            TrafficMirrorTargetId=lab["target_ids"]["nlb"],
            TrafficMirrorFilterId=lab["filter_id"],
            SessionNumber=1,
            TagSpecifications=[
                {"ResourceType": "traffic-mirror-session", "Tags": [rule_tag("web")]}
            ],
        )
    policy = tmp_path / "p.toml"
    policy.write_text(
        f"""
[[rules]]
name = "web"
tag = ["Env=prod"]
target = "{lab["target_ids"]["nlb"]}"
filter = "{lab["filter_id"]}"
"""
    )
    return lab, policy, len(prod)


def test_a_deleted_nlb_s_sessions_are_dark_whatever_the_fleet_s_account_name(
    emulator: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """MIRRORQ_AWS_ACCOUNT_ID takes a name (letters, digits, `-`, `_`): a scope, not the
    account's id. With one set, the sessions on a deleted NLB of the fleet's own account are
    still dark and `--fail-under 100` exits 1 (not 'shared from another account', live)."""
    lab, policy, n = _on_lab_nlb(emulator.url, tmp_path)
    lab_client(emulator.url, service="elbv2").delete_load_balancer(LoadBalancerArn=lab["nlb_arn"])
    for account in (None, "prod"):
        named = env if account is None else {**env, "MIRRORQ_AWS_ACCOUNT_ID": account}
        code, report = coverage(named, policy)
        assert report["totals"]["dark"] == n, (account, report["totals"])
        assert {e["reason"] for e in report["rules"][0]["enis"]} == {"load_balancer_gone"}
        assert code == 1


def test_a_wrong_twelve_digit_account_id_never_hides_a_deleted_nlb(
    emulator: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """Review 2: a 12-digit MIRRORQ_AWS_ACCOUNT_ID that is not the credentials' account (one
    digit wrong, or another account's id used as the fleet's scope name) was taken for it
    without asking STS: every own NLB target was judged 'shared from another account: not
    checked', live, and a deleted NLB's sessions passed `--fail-under 100`, said nowhere.
    The credentials' real account (STS) owns the targets; the mismatch is said, once."""
    lab, policy, n = _on_lab_nlb(emulator.url, tmp_path)
    lab_client(emulator.url, service="elbv2").delete_load_balancer(LoadBalancerArn=lab["nlb_arn"])
    wrong = {**env, "MIRRORQ_AWS_ACCOUNT_ID": "999999999999"}
    done = run(wrong, "coverage", "--policy", str(policy), "--json", "--fail-under", "100")
    report = json.loads(done.stdout)
    reasons = {e["reason"] for e in report["rules"][0]["enis"]}
    assert report["totals"]["dark"] == n, (report["totals"], reasons, done.returncode)
    assert reasons == {"load_balancer_gone"}
    assert done.returncode == 1
    # A one-shot command's warnings are its stderr's bare lines (no log set-up: Python's own).
    said = [line for line in done.stderr.splitlines() if "999999999999" in line]
    assert len(said) == 1, done.stderr[-3000:]
    assert "123456789012" in said[0], said
    assert "MIRRORQ_AWS_ACCOUNT_ID=123456789012" in said[0], said  # what to do


def test_coverage_says_why_a_live_target_was_not_fully_judged(
    emulator: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """README: an NLB `provisioning` is live, `load_balancer_provisioning` in the reason; a
    target not checked is counted live, said in the reason. Coverage's JSON shows it per ENI,
    so an ENI on such a target does not read as one on a verified live sensor."""
    lab, policy, _ = _on_lab_nlb(emulator.url, tmp_path)
    control(emulator.url, "load-balancer", {"arn": lab["nlb_arn"], "state": "provisioning"})
    code, report = coverage(env, policy)
    enis = report["rules"][0]["enis"]
    assert {e["state"] for e in enis} == {"live"}
    assert {e["reason"] for e in enis} == {"load_balancer_provisioning"}
    assert code == 0


def test_coverage_fail_under_nan_is_refused_as_usage(
    emulator: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """`--fail-under nan` would be a gate that never fails (NaN compares false both ways): it
    exits 2 naming the option, as 150 or -5 do."""
    lab, policy, _ = _on_lab_nlb(emulator.url, tmp_path)
    lab_client(emulator.url, service="elbv2").delete_load_balancer(LoadBalancerArn=lab["nlb_arn"])
    for bad in ("nan", "NaN", "150", "-5", "inf"):
        done = run(env, "coverage", "--policy", str(policy), "--fail-under", bad)
        assert done.returncode == 2, (bad, done.returncode, done.stdout[-500:], done.stderr[-500:])
        assert "--fail-under" in done.stderr, bad


def test_an_event_for_an_eni_target_rule_is_mirrored_though_another_rule_s_nlb_is_unreadable(
    emulator: EmulatorProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """Review 2: events read the health of every rule's targets of the place before planning.
    A role without elasticloadbalancing:DescribeLoadBalancers (one rule's NLB target): an
    instance's `running` event for the other rule, whose only target is a sensor ENI, was
    answered 502 ('EC2 answered AccessDenied'), not handled (before the health read it was).
    README: 'A rule whose targets no longer exist makes nothing (logged); the others go on'."""
    ec2 = lab_client(emulator.url)
    lab = seed_lab(emulator.url, 1)
    instance = ec2.run_instances(
        ImageId=LAB_IMAGE_ID,
        MinCount=1,
        MaxCount=1,
        SubnetId=lab["subnet_ids"][0],
        InstanceType="c5.large",
    )["Instances"][0]
    eni_id = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
    ec2.create_tags(Resources=[eni_id], Tags=[{"Key": "Team", "Value": "web"}])
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'[[rules]]\nname = "web"\ntag = ["Team=web"]\ntarget = "{lab["target_ids"]["eni"]}"\n'
        f'filter = "{lab["filter_id"]}"\n\n'
        f'[[rules]]\nname = "other"\ntag = ["Team=other"]\ntarget = "{lab["target_ids"]["nlb"]}"\n'
        f'filter = "{lab["filter_id"]}"\n'
    )

    def refuse(action: str, _: dict[str, str], __: int) -> Answer | None:
        if action == "DescribeLoadBalancers":
            return Answer(403, ACCESS_DENIED, "text/xml", forward="instead")
        return None

    with FaultProxy(emulator.url, refuse) as proxy:
        api_env = {
            **env,
            "MIRRORQ_API_TOKENS": ",".join(TOKENS),
            "MIRRORQ_ELBV2_ENDPOINT_URL": proxy.url,
        }
        api = start_api(api_env, tmp_path, "--policy", str(policy))
        try:
            answer = httpx.post(
                f"{api.url}/v1/events",  # type: ignore[attr-defined]
                json=running_event("review2-running", instance["InstanceId"]),
                headers=AUTH,
                timeout=60,
            )
        finally:
            api.stop()
    assert answer.status_code == 202, (answer.status_code, answer.text[:500])
    assert len(answer.json()["job_ids"]) == 1, answer.json()
    # Said where the operator looks: the permission missing, in a WARNING of the API's log.
    logged = [line for line in api.log_path.read_text().splitlines() if "WARNING" in line]
    assert any("elasticloadbalancing:DescribeLoadBalancers" in line for line in logged), logged


def test_an_elastic_load_balancing_refusal_is_named_after_its_service() -> None:
    """Review 2: a refused DescribeLoadBalancers was reported 'EC2 answered AccessDenied'."""
    from botocore.exceptions import ClientError

    from worker.errors import classify

    response: Any = {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}
    failure = classify(ClientError(response, "DescribeLoadBalancers"))
    assert failure.service == "Elastic Load Balancing"
    assert classify(ClientError(response, "DescribeInstances")).service == "EC2"
    assert classify(ClientError(response, "GetCallerIdentity")).service == "STS"
