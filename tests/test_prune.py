"""Prune, unmirror and retarget end to end: real `mirrorq` commands, a real worker, real Redis,
the emulator over HTTP. One lab, one policy, every step checked on the sessions EC2 lists."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from emulator.lab import LAB_IMAGE_ID, create_gwlb_endpoint, lab_client, seed_lab
from mirrorq.managed import RULE_TAG
from mirrorq.processes import MIRRORQ, EmulatorProcess, WorkerProcess
from tests.api_process import AUTH, TOKENS, start_api
from tests.forkserver import run_mirrorq
from tests.helpers import sessions

ENIS = 60  # half of them Env=prod (emulator/lab.py's tag variants)
GONE = 20  # the prod ENIs that lose their tag


def mirrorq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_mirrorq([*MIRRORQ, *args], env=env, check=False, timeout=300)


def batch(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(mirrorq(env, "batch", "status", batch_id, "--json").stdout)
    return status


def by_id(endpoint: str) -> dict[str, dict[str, Any]]:
    return {s["TrafficMirrorSessionId"]: s for s in sessions(endpoint)}


def rule_of(session: dict[str, Any]) -> str | None:
    return next((t["Value"] for t in session.get("Tags", []) if t["Key"] == RULE_TAG), None)


def test_prune_unmirror_and_retarget_touch_only_what_mirrorq_manages_and_means(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    ec2 = lab_client(emulator.url)
    lab = seed_lab(emulator.url, ENIS)
    other = seed_lab(emulator.url, 4)  # another VPC, its prod ENIs mirrored by the same rule
    # A mixed fleet in the other VPC: t2 and bare metal cannot be sources, m5 and m4 can.
    mixed = {}
    for instance_type in ("t2.micro", "m5.large", "c5.metal", "m4.large"):
        instance = ec2.run_instances(
            ImageId=LAB_IMAGE_ID,
            MinCount=1,
            MaxCount=1,
            SubnetId=other["subnet_ids"][0],
            InstanceType=instance_type,
        )["Instances"][0]
        eni_id = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
        ec2.create_tags(Resources=[eni_id], Tags=[{"Key": "Env", "Value": "prod"}])
        mixed[instance_type] = eni_id
    flt, nlb = lab["filter_id"], lab["target_ids"]["nlb"]
    # Gateway Load Balancer endpoints that exist: a target's is read, and one gone is dead.
    gwlb_a, gwlb_b = (
        ec2.create_traffic_mirror_target(
            GatewayLoadBalancerEndpointId=create_gwlb_endpoint(
                emulator.url, lab["vpc_id"], lab["subnet_ids"], f"inspect-{n}"
            )
        )["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
        for n in (1, 2)
    )
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f"""
[[rules]]
name = "prod"
tag = ["Env=prod"]
target = "{gwlb_a}"
filter = "{flt}"
session_tags = ["team=sec"]

[[rules]]
name = "staging"
tag = ["Env=staging"]
target = "{nlb}"
filter = "{flt}"
"""
    )
    prod = [
        e["NetworkInterfaceId"]
        for e in ec2.describe_network_interfaces(
            Filters=[
                {"Name": "vpc-id", "Values": [lab["vpc_id"]]},
                {"Name": "tag:Env", "Values": ["prod"]},
            ]
        )["NetworkInterfaces"]
    ]
    losing = sorted(prod)[:GONE]
    # Sessions made outside mirrorq on the ENIs that will lose their tag: never mirrorq's.
    outside = {
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=e, TrafficMirrorTargetId=nlb, TrafficMirrorFilterId=flt,
            SessionNumber=9,
        )["TrafficMirrorSession"]["TrafficMirrorSessionId"]
        for e in losing
    }  # fmt: skip
    start_worker(MIRRORQ_CONCURRENCY="16")
    env = {**env, "COLUMNS": "200"}

    # Every rule's ENIs mirrored, each session tagged with its rule; the mixed fleet's
    # unsupported types skipped with the reason, and nothing failed.
    first = mirrorq(env, "reconcile", "--policy", str(policy), "--wait")
    assert first.returncode == 0, first.stderr[-3000:]
    made = by_id(emulator.url)
    managed = {i: s for i, s in made.items() if rule_of(s)}
    assert batch(env, first.stdout.strip())["counts"] == {"created": len(managed)}
    assert {rule_of(s) for s in managed.values()} == {"prod", "staging"}
    assert all(
        {"Key": "team", "Value": "sec"} in s["Tags"]
        for s in managed.values()
        if rule_of(s) == "prod"
    )
    on = {s["NetworkInterfaceId"] for s in managed.values()}
    assert mixed["m5.large"] in on
    assert mixed["m4.large"] in on
    assert mixed["t2.micro"] not in on
    assert mixed["c5.metal"] not in on
    plan = json.loads(mirrorq(env, "policy", "plan", str(policy), "--json").stdout)
    unsupported = plan["rules"]["prod"]["skipped"]["unsupported_instance_type"]
    assert sorted(unsupported) == sorted([mixed["t2.micro"], mixed["c5.metal"]])

    # 20 prod ENIs lose their tag: policy plan --prune lists their 20 sessions, and why.
    ec2.delete_tags(Resources=losing, Tags=[{"Key": "Env"}])
    doomed = {i for i, s in managed.items() if s["NetworkInterfaceId"] in losing}
    assert len(doomed) == GONE
    shown = mirrorq(env, "policy", "plan", str(policy), "--prune", "--json")
    pruning = json.loads(shown.stdout)["prune"]
    assert {d["session_id"] for d in pruning["sessions"]} == doomed
    assert {d["reason"] for d in pruning["sessions"]} == {"eni_not_matched"}
    assert pruning["by_reason"] == {"eni_not_matched": GONE}
    # 20 of the account's managed sessions is more than 20 %: refused, nothing deleted.
    assert len(managed) > GONE
    refused = mirrorq(env, "reconcile", "--policy", str(policy), "--prune", "--wait")
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "prune refused" in refused.stderr
    assert "--force" in refused.stderr
    assert set(by_id(emulator.url)) == set(made)
    # --force: exactly those 20 go; outside sessions on the same ENIs and other rules' stay.
    forced = mirrorq(env, "reconcile", "--policy", str(policy), "--prune", "--force", "--wait")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert batch(env, forced.stdout.strip())["counts"] == {"deleted": GONE}
    assert set(by_id(emulator.url)) == set(made) - doomed
    assert outside <= set(by_id(emulator.url))

    # retarget: staging's sessions move from the NLB to B in place (same ids and numbers);
    # the sessions made outside mirrorq on the NLB stay where they are.
    before = by_id(emulator.url)
    staging = {i for i, s in before.items() if rule_of(s) == "staging"}
    moved = mirrorq(env, "retarget", "--from", nlb, "--to", gwlb_b, "--wait")
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert batch(env, moved.stdout.strip())["counts"] == {"modified": len(staging)}
    after = by_id(emulator.url)
    assert set(after) == set(before)  # none deleted, none created
    for session_id, session in after.items():
        expected = gwlb_b if session_id in staging else before[session_id]["TrafficMirrorTargetId"]
        assert session["TrafficMirrorTargetId"] == expected
        assert session["SessionNumber"] == before[session_id]["SessionNumber"]

    # unmirror --vpc: every managed session in the lab's VPC, nothing else; then nothing to do.
    lab_enis = set(lab["eni_ids"])
    in_vpc = {i for i, s in after.items() if rule_of(s) and s["NetworkInterfaceId"] in lab_enis}
    gone = mirrorq(env, "unmirror", "--vpc", lab["vpc_id"], "--wait")
    assert gone.returncode == 0, gone.stderr[-3000:]
    assert batch(env, gone.stdout.strip())["counts"] == {"deleted": len(in_vpc)}
    assert set(by_id(emulator.url)) == set(after) - in_vpc
    # The second run, over HTTP (POST /v1/unmirror, as the CLI): nothing left to delete.
    api = start_api({**env, "MIRRORQ_API_TOKENS": ",".join(TOKENS)}, tmp_path)
    try:
        url = f"{api.url}/v1/unmirror"  # type: ignore[attr-defined]
        again = httpx.post(url, json={"vpc": [lab["vpc_id"]]}, headers=AUTH, timeout=60)
        assert again.status_code == 202, again.text
        assert again.json()["jobs"] == 0
        assert again.json()["counts"] == {"unmanaged": len(outside)}
        assert httpx.post(url, json={"vpc": [lab["vpc_id"]]}, timeout=60).status_code == 401
        bare = httpx.post(url, json={"dry_run": True}, headers=AUTH, timeout=60)
        assert bare.status_code == 422, bare.text
    finally:
        api.stop()
    assert set(by_id(emulator.url)) == set(after) - in_vpc
    # No selector at all: refused, naming the selectors.
    refused = mirrorq(env, "unmirror")
    assert refused.returncode == 2
    assert "--session-id" in refused.stderr
    # A retarget to a dead sensor (its instance stopped) is refused: nothing would be mirrored.
    sensor = ec2.describe_network_interfaces(NetworkInterfaceIds=[lab["sensor_eni_id"]])
    ec2.stop_instances(InstanceIds=[sensor["NetworkInterfaces"][0]["Attachment"]["InstanceId"]])
    dead = mirrorq(env, "retarget", "--from", gwlb_b, "--to", lab["target_ids"]["eni"])
    assert dead.returncode == 2, dead.stderr[-3000:]
    assert "is dead (instance_stopped)" in dead.stderr


def test_unmirror_selects_what_its_values_say_never_what_ec2s_wildcards_match(
    emulator: EmulatorProcess, env: dict[str, str]
) -> None:
    """EC2 takes `*` and `?` in a filter's values as wildcards: a selector's values are
    re-checked on the ENIs listed, and the CLI's id options take ids only."""
    ec2 = lab_client(emulator.url)
    lab = seed_lab(emulator.url, 6)
    made = {
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=e, TrafficMirrorTargetId=lab["target_ids"]["nlb"],
            TrafficMirrorFilterId=lab["filter_id"], SessionNumber=1,
            TagSpecifications=[{"ResourceType": "traffic-mirror-session",
                                "Tags": [{"Key": RULE_TAG, "Value": "r"}]}],
        )["TrafficMirrorSession"]["TrafficMirrorSessionId"]: e
        for e in lab["eni_ids"]
    }  # fmt: skip
    prod = {
        e["NetworkInterfaceId"]
        for e in ec2.describe_network_interfaces(Filters=[{"Name": "tag:Env", "Values": ["prod"]}])[
            "NetworkInterfaces"
        ]
    }

    def planned(*selectors: str) -> set[str]:
        shown = mirrorq(env, "unmirror", *selectors, "--json")
        assert shown.returncode == 0, shown.stderr[-3000:]
        return {s["session_id"] for s in json.loads(shown.stdout)["sessions"]}

    assert prod  # the control: a literal value selects exactly its ENIs' sessions
    assert planned("--tag", "Env=prod") == {s for s, e in made.items() if e in prod}
    assert planned("--tag", "Env=*") == set()  # no ENI is tagged Env=* literally
    assert planned("--tag", "Env=pro?") == set()
    for option, value in (("--eni", "eni-*"), ("--vpc", "vpc-*"), ("--subnet", "subnet-?")):
        refused = mirrorq(env, "unmirror", option, value, "--json")
        assert refused.returncode == 2, refused.stdout[-3000:]
        assert option in refused.stderr
    assert set(by_id(emulator.url)) == set(made)  # nothing was deleted on the way


def _lab_policy(path: Path, name: str, lab: dict[str, Any]) -> Path:
    path.write_text(
        f"""
[[rules]]
name = "{name}"
tag = ["Env=prod"]
target = "{lab["target_ids"]["nlb"]}"
filter = "{lab["filter_id"]}"
"""
    )
    return path


def _prod_enis(ec2: Any, lab: dict[str, Any]) -> list[str]:
    return sorted(
        e["NetworkInterfaceId"]
        for e in ec2.describe_network_interfaces(
            Filters=[
                {"Name": "vpc-id", "Values": [lab["vpc_id"]]},
                {"Name": "tag:Env", "Values": ["prod"]},
            ]
        )["NetworkInterfaces"]
    )


def test_a_renamed_rule_s_prune_pass_leaves_no_matched_eni_unmirrored(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A rule renamed (same selectors, target and filter): one `reconcile --prune --force`
    deletes the old rule's sessions (rule_gone) and must mirror the ENIs for the new name in
    the same pass. Failed (review 2026-12-06): the planner counted the sessions it was deleting
    as already_mirrored, so the pass ended with every matched ENI unmirrored (exit 0)."""
    ec2 = lab_client(emulator.url)
    lab = seed_lab(emulator.url, 12)
    prod = _prod_enis(ec2, lab)
    start_worker(MIRRORQ_CONCURRENCY="16")
    first = mirrorq(
        env, "reconcile", "--policy", str(_lab_policy(tmp_path / "a.toml", "web", lab)), "--wait"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    made = set(by_id(emulator.url))
    renamed = _lab_policy(tmp_path / "b.toml", "web-new", lab)
    shown = mirrorq(env, "policy", "plan", str(renamed), "--prune", "--json")
    assert shown.returncode == 0, shown.stderr[-3000:]
    planned = json.loads(shown.stdout)
    assert planned["counts"] == {"already_mirrored": len(prod)}
    assert (planned["prune"]["deletions"], planned["prune"]["adopted"]) == (0, len(prod))
    second = mirrorq(env, "reconcile", "--policy", str(renamed), "--prune", "--force", "--wait")
    assert second.returncode == 0, second.stderr[-3000:]
    mirrored = {
        s["NetworkInterfaceId"]
        for s in sessions(emulator.url)
        if s["TrafficMirrorTargetId"] == lab["target_ids"]["nlb"]
    }
    assert sorted(set(prod) - mirrored) == [], "ENIs the policy matches left unmirrored by the pass"
    # Kept (adopted by web-new), not deleted and made again: the same sessions, none unwanted.
    assert set(by_id(emulator.url)) == made
    assert len(made) == len(prod)
    found = mirrorq(env, "coverage", "--policy", str(renamed), "--json")
    assert found.returncode == 0, found.stderr[-3000:]
    body = json.loads(found.stdout)
    assert (body["totals"]["live"], body["unwanted"]) == (len(prod), [])


def test_a_rule_with_two_filters_in_one_place_mirrors_each_eni_once(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A rule's `filters` list: its ENIs mirrored "through the first of its filters that exists
    there". An operator moving to a new filter puts it first while the old one still exists;
    the rule's sessions through the old one are what coverage calls unwanted
    (`filter_not_rules`). One `reconcile --prune --force` must leave each ENI mirrored once to
    the rule's target. Failed (review 2026-12-06): it created a second session per ENI through
    the new filter and pruned none of the old ones (prune took any filter of the list as the
    rule's), so every ENI was mirrored twice to one sensor."""
    ec2 = lab_client(emulator.url)
    lab = seed_lab(emulator.url, 3)
    target, old = lab["target_ids"]["nlb"], lab["filter_id"]
    new = ec2.create_traffic_mirror_filter(Description="new")["TrafficMirrorFilter"][
        "TrafficMirrorFilterId"
    ]
    for eni in lab["eni_ids"]:
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=eni,
            TrafficMirrorTargetId=target,
            TrafficMirrorFilterId=old,
            SessionNumber=1,
            TagSpecifications=[
                {
                    "ResourceType": "traffic-mirror-session",
                    "Tags": [{"Key": RULE_TAG, "Value": "dual"}],
                }
            ],
        )
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'[[rules]]\nname = "dual"\nvpc = ["{lab["vpc_id"]}"]\ntarget = "{target}"\n'
        f'filters = ["{new}", "{old}"]\n'
    )
    start_worker()
    done = mirrorq(env, "reconcile", "--policy", str(policy), "--prune", "--force", "--wait")
    assert done.returncode == 0, done.stderr[-2000:]
    per_eni: dict[str, int] = {}
    for s in sessions(emulator.url):
        if s["TrafficMirrorTargetId"] == target:
            per_eni[s["NetworkInterfaceId"]] = per_eni.get(s["NetworkInterfaceId"], 0) + 1
    assert per_eni == dict.fromkeys(lab["eni_ids"], 1)
    assert {s["TrafficMirrorFilterId"] for s in sessions(emulator.url)} == {new}
    found = mirrorq(env, "coverage", "--policy", str(policy), "--json")
    assert json.loads(found.stdout)["unwanted"] == [], found.stderr[-3000:]


def test_a_filter_migration_end_to_end_leaves_an_eni_at_three_sessions_unmirrored(
    emulator: Any, env: dict[str, str], tmp_path: Any, start_worker: Any
) -> None:
    """test_prune.py's two-filter migration, one ENI of the three already carrying two
    sessions made outside mirrorq (to another sensor, through each filter): after one
    `reconcile --prune --force --wait`, that ENI has no session to the rule's target."""
    import subprocess

    from emulator.lab import lab_client, seed_lab
    from mirrorq.processes import MIRRORQ
    from tests.helpers import sessions

    ec2 = lab_client(emulator.url)
    lab = seed_lab(emulator.url, 3)
    target, other, old = lab["target_ids"]["nlb"], lab["target_ids"]["eni"], lab["filter_id"]
    new = ec2.create_traffic_mirror_filter(Description="new")["TrafficMirrorFilter"][
        "TrafficMirrorFilterId"
    ]
    for eni in lab["eni_ids"]:
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=eni,
            TrafficMirrorTargetId=target,
            TrafficMirrorFilterId=old,
            SessionNumber=1,
            TagSpecifications=[
                {
                    "ResourceType": "traffic-mirror-session",
                    "Tags": [{"Key": RULE_TAG, "Value": "dual"}],
                }
            ],
        )
    full = lab["eni_ids"][0]
    for n, flt in ((2, old), (3, new)):  # outside mirrorq: ENI 0 at EC2's 3 sessions
        ec2.create_traffic_mirror_session(
            NetworkInterfaceId=full,
            TrafficMirrorTargetId=other,
            TrafficMirrorFilterId=flt,
            SessionNumber=n,
        )
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'[[rules]]\nname = "dual"\nvpc = ["{lab["vpc_id"]}"]\ntarget = "{target}"\n'
        f'filters = ["{new}", "{old}"]\n'
    )
    start_worker()
    done = subprocess.run(
        [*MIRRORQ, "reconcile", "--policy", str(policy), "--prune", "--force", "--wait"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mirrored = {
        s["NetworkInterfaceId"]
        for s in sessions(emulator.url)
        if s["TrafficMirrorTargetId"] == target
    }
    assert sorted(set(lab["eni_ids"]) - mirrored) == [], done.stdout[-1500:] + done.stderr[-1500:]
