"""A policy's [[accounts]]: one `reconcile --policy` plans every account and Region it names,
each on its own road (the account's role, assumed through the emulator's STS), and its jobs
run each in its own account and Region.

Real `mirrorq reconcile` and `mirrorq policy plan` processes, a real `mirrorq worker`, real
Redis and the emulator over HTTP; the sessions are counted per account through the emulator.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulator.org_lab import (
    account_client,
    control,
    role_arn,
    seed_org_lab,
    sessions_in,
    share_sensor_eni,
)
from mirrorq.processes import MIRRORQ, EmulatorProcess, WorkerProcess
from tests.forkserver import run_mirrorq

EAST, WEST, EMPTY = "us-east-1", "eu-west-1", "ap-southeast-2"
ENIS = 20


def mirrorq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_mirrorq([*MIRRORQ, *args], env=env, check=False, timeout=300)


def org_policy(lab: dict[str, Any]) -> str:
    """Both workload accounts, the second also in a Region the lab has nothing in; one rule
    for every account, to the shared sensors of every Region, through each place's filter."""
    first, second = lab["accounts"]
    targets = [lab["security"]["regions"][r]["target_ids"][0] for r in (EAST, WEST)]
    filters = [
        place["filter_id"]
        for seeded in lab["accounts"].values()
        for place in seeded["regions"].values()
    ]
    return f"""
[[accounts]]
name = "first"
role_arn = "{role_arn(first)}"
regions = ["{EAST}", "{WEST}"]

[[accounts]]
name = "second"
role_arn = "{role_arn(second)}"
regions = ["{EAST}", "{WEST}", "{EMPTY}"]
external_id = "mirrorq-second"

[[rules]]
name = "org"
tag = ["mirrorq-lab=1"]
targets = {json.dumps(targets)}
choose = "least-loaded"
filters = {json.dumps(filters)}
"""


def test_one_reconcile_mirrors_every_eni_of_every_account_and_region_once_in_its_own(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_org_lab(emulator.url, accounts=2, regions=(EAST, WEST), enis=ENIS)
    policy = tmp_path / "policy.toml"
    policy.write_text(org_policy(lab))
    start_worker(MIRRORQ_CONCURRENCY="16")

    env = {**env, "COLUMNS": "200"}  # rich's tables, unwrapped
    first = mirrorq(env, "reconcile", "--policy", str(policy), "--wait")
    assert first.returncode == 0, first.stderr[-3000:]
    status = json.loads(mirrorq(env, "batch", "status", first.stdout.strip(), "--json").stdout)
    assert status["counts"] == {"created": 4 * ENIS}, status
    # Each ENI mirrored once, by its own account in its own Region, to that Region's sensor.
    for account, seeded in lab["accounts"].items():
        for region, place in seeded["regions"].items():
            assert sessions_in(emulator.url, account, region) == dict.fromkeys(
                place["eni_ids"], 1
            ), (account, region)
    # Nothing in the lab's own (default) account: every call went on its place's road.
    assert sessions_in(emulator.url, "123456789012", EAST) == {}
    # The pass said, per account-Region, what it planned, and which place has no sensor.
    second_account = list(lab["accounts"])[1]
    for account in lab["accounts"]:
        for region in (EAST, WEST):
            assert f"{account}/{region}" in first.stderr
    assert "mirrorq: rule org: no target of" in first.stderr
    assert f"exists in account {second_account}, {EMPTY}" in first.stderr

    # A second pass creates nothing, and policy plan says why, per place.
    again = mirrorq(env, "reconcile", "--policy", str(policy), "--wait")
    assert again.returncode == 0, again.stderr[-3000:]
    quiet = json.loads(mirrorq(env, "batch", "status", again.stdout.strip(), "--json").stdout)
    assert quiet["total"] == 0, quiet
    plan = mirrorq(env, "policy", "plan", str(policy), "--json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = json.loads(plan.stdout)
    assert planned["jobs"] == []
    assert planned["places"] == {
        **{
            f"{account}/{region}": {"already_mirrored": ENIS}
            for account in lab["accounts"]
            for region in (EAST, WEST)
        },
        f"{second_account}/{EMPTY}": {},
    }
    assert planned["missing"] == [
        f"rule org: no target of {', '.join(json.loads(_targets(policy)))} exists in "
        f"account {second_account}, {EMPTY}",
        f"rule org: no filter of {', '.join(json.loads(_filters(policy)))} exists in "
        f"account {second_account}, {EMPTY}",
    ]


def _targets(policy: Path) -> str:
    return next(
        line.split("=", 1)[1]
        for line in policy.read_text().splitlines()
        if line.startswith("targets")
    )


def _filters(policy: Path) -> str:
    return next(
        line.split("=", 1)[1]
        for line in policy.read_text().splitlines()
        if line.startswith("filters")
    )


def test_a_role_that_cannot_be_assumed_leaves_only_its_own_places_unplanned(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_org_lab(emulator.url, accounts=2, regions=(EAST, WEST), enis=5)
    denied, allowed = lab["accounts"]
    control(emulator.url, "roles", {"role_arn": role_arn(denied), "assumable": False})
    policy = tmp_path / "policy.toml"
    policy.write_text(org_policy(lab).replace(f', "{EMPTY}"', ""))
    start_worker(MIRRORQ_CONCURRENCY="8")

    done = mirrorq(env, "reconcile", "--policy", str(policy), "--wait")
    assert done.returncode == 1, done.stderr[-3000:]  # the pass says some place is unplanned
    for region in (EAST, WEST):
        assert f"mirrorq: account {denied}, {region} was not planned: AccessDenied" in done.stderr
    status = json.loads(mirrorq(env, "batch", "status", done.stdout.strip(), "--json").stdout)
    assert status["counts"] == {"created": 2 * 5}, status
    for region, place in lab["accounts"][allowed]["regions"].items():
        assert sessions_in(emulator.url, allowed, region) == dict.fromkeys(place["eni_ids"], 1)
        assert sessions_in(emulator.url, denied, region) == {}


def test_mirror_plans_and_creates_in_the_account_its_role_names(
    emulator: EmulatorProcess, env: dict[str, str], start_worker: Callable[..., WorkerProcess]
) -> None:
    lab = seed_org_lab(emulator.url, accounts=2, regions=(EAST, WEST), enis=4)
    account, other = lab["accounts"]
    place = lab["accounts"][account]["regions"][WEST]
    start_worker()
    done = mirrorq(
        env,
        "mirror",
        *("--tag", "mirrorq-lab=1"),
        *("--target", lab["security"]["regions"][WEST]["target_ids"][0]),
        *("--filter", place["filter_id"]),
        *("--region", WEST, "--role-arn", role_arn(account)),
        "--wait",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sessions_in(emulator.url, account, WEST) == dict.fromkeys(place["eni_ids"], 1)
    assert sessions_in(emulator.url, account, EAST) == {}
    assert sessions_in(emulator.url, other, WEST) == {}


ORG_ENIS = 200  # the scale: 3 accounts x 2 Regions x 200 ENIs, 1,200 sessions


def test_an_organisation_of_1200_enis_is_mirrored_once_and_a_denied_role_fails_only_its_own(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """The issue's "what must show" at its own scale: three workload accounts and a fourth
    whose role STS refuses, all in one policy, one real reconcile pass, real workers."""
    lab = seed_org_lab(emulator.url, accounts=4, regions=(EAST, WEST), enis=ORG_ENIS)
    *allowed, denied = lab["accounts"]
    control(emulator.url, "roles", {"role_arn": role_arn(denied), "assumable": False})
    targets = [lab["security"]["regions"][r]["target_ids"][0] for r in (EAST, WEST)]
    filters = [p["filter_id"] for s in lab["accounts"].values() for p in s["regions"].values()]
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "".join(
            f'[[accounts]]\nname = "a{n}"\nrole_arn = "{role_arn(account)}"\n'
            f'regions = ["{EAST}", "{WEST}"]\n\n'
            for n, account in enumerate(lab["accounts"])
        )
        + f'[[rules]]\nname = "org"\ntag = ["mirrorq-lab=1"]\ntargets = {json.dumps(targets)}\n'
        + f'choose = "least-loaded"\nfilters = {json.dumps(filters)}\n'
    )
    # The fleet's rate (FAST: 1,000/s) is far above what two workers reach on the emulator.
    for _ in range(2):
        start_worker(MIRRORQ_CONCURRENCY="16")

    env = {**env, "COLUMNS": "200"}
    first = mirrorq(env, "reconcile", "--policy", str(policy), "--wait")
    assert first.returncode == 1, first.stderr[-3000:]  # a place was not planned
    for region in (EAST, WEST):
        assert f"mirrorq: account {denied}, {region} was not planned: AccessDenied" in first.stderr
        for account in allowed:
            assert f"account {account}, {region} was not planned" not in first.stderr
    status = json.loads(mirrorq(env, "batch", "status", first.stdout.strip(), "--json").stdout)
    assert status["counts"] == {"created": 3 * 2 * ORG_ENIS}, status
    # Each ENI mirrored once, by its own account in its own Region; none of the denied one's.
    for account in allowed:
        for region, place in lab["accounts"][account]["regions"].items():
            assert sessions_in(emulator.url, account, region) == dict.fromkeys(
                place["eni_ids"], 1
            ), (account, region)
    for region in (EAST, WEST):
        assert sessions_in(emulator.url, denied, region) == {}
    assert sessions_in(emulator.url, "123456789012", EAST) == {}
    assert Counter(emulator.stats()["AssumeRole"])["AccessDenied"] >= 1

    # A second pass creates nothing, and still names the denied account's places.
    again = mirrorq(env, "reconcile", "--policy", str(policy), "--wait")
    assert again.returncode == 1, again.stderr[-3000:]
    assert f"mirrorq: account {denied}, {EAST} was not planned: AccessDenied" in again.stderr
    quiet = json.loads(mirrorq(env, "batch", "status", again.stdout.strip(), "--json").stdout)
    assert quiet["total"] == 0, quiet
    for account in allowed:
        for region in (EAST, WEST):
            assert sum(sessions_in(emulator.url, account, region).values()) == ORG_ENIS


SENSOR_SOURCES = 10  # EC2: a network-interface target of a small instance takes 10 sources


def test_a_shared_sensor_takes_its_source_limit_once_over_every_account_of_the_pass(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Two workload accounts share one sensor ENI (room for 10 sources) and have 10 ENIs
    each: one pass plans 10 sessions on it, not 10 per account, and says the rest found it
    full; neither account's own sessions alone would show it."""
    lab = seed_org_lab(emulator.url, accounts=2, regions=(EAST,), enis=SENSOR_SOURCES)
    first, second = lab["accounts"]
    sensor = share_sensor_eni(emulator.url, EAST, [first, second])
    filters = [lab["accounts"][a]["regions"][EAST]["filter_id"] for a in (first, second)]
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "".join(
            f'[[accounts]]\nname = "a{n}"\nrole_arn = "{role_arn(account)}"\n'
            f'regions = ["{EAST}"]\n\n'
            for n, account in enumerate((first, second))
        )
        + f'[[rules]]\nname = "sensor"\ntag = ["mirrorq-lab=1"]\ntarget = "{sensor}"\n'
        + f"filters = {json.dumps(filters)}\n"
    )
    start_worker(MIRRORQ_CONCURRENCY="8")

    done = mirrorq(env, "reconcile", "--policy", str(policy), "--wait")
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(mirrorq(env, "batch", "status", done.stdout.strip(), "--json").stdout)
    assert status["counts"] == {"created": SENSOR_SOURCES}, status
    made = sum(sum(sessions_in(emulator.url, a, EAST).values()) for a in (first, second))
    assert made == SENSOR_SOURCES
    # Again: the first account's sessions fill the sensor for the second, and nothing is
    # submitted.
    plan = mirrorq(env, "policy", "plan", str(policy), "--json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = json.loads(plan.stdout)
    assert planned["jobs"] == []
    assert planned["places"] == {
        f"{first}/{EAST}": {"already_mirrored": SENSOR_SOURCES},
        f"{second}/{EAST}": {"targets_full": SENSOR_SOURCES},
    }


WEB_TAG = {"Key": "mirrorq:filter", "Value": "web"}


def tagged_filter(url: str, account: str, region: str, tag: dict[str, str] = WEB_TAG) -> str:
    ec2 = account_client(url, account, region)
    spec = [{"ResourceType": "traffic-mirror-filter", "Tags": [tag]}]
    made: str = ec2.create_traffic_mirror_filter(TagSpecifications=spec)["TrafficMirrorFilter"][
        "TrafficMirrorFilterId"
    ]
    return made


def filters_used(url: str, account: str, region: str) -> set[str]:
    ec2 = account_client(url, account, region)
    listed = ec2.describe_traffic_mirror_sessions()["TrafficMirrorSessions"]
    return {s["TrafficMirrorFilterId"] for s in listed if s["OwnerId"] == account}


def test_a_rule_finds_each_account_regions_own_filter_by_its_tag(
    emulator: EmulatorProcess,
    env: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Two accounts x two Regions each tag a filter of their own `mirrorq:filter=web` (beside
    the lab's own filter, tagged otherwise); a third account has none in one Region and two
    in the other: one pass mirrors the four places each through its own, and says which
    account-Region has none and which has several (refused there, both named)."""
    lab = seed_org_lab(emulator.url, accounts=3, regions=(EAST, WEST), enis=4)
    *tagging, third = lab["accounts"]
    web = {(a, r): tagged_filter(emulator.url, a, r) for a in tagging for r in (EAST, WEST)}
    twins = sorted(tagged_filter(emulator.url, third, WEST) for _ in range(2))
    targets = [lab["security"]["regions"][r]["target_ids"][0] for r in (EAST, WEST)]
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "".join(
            f'[[accounts]]\nname = "a{n}"\nrole_arn = "{role_arn(account)}"\n'
            f'regions = ["{EAST}", "{WEST}"]\n\n'
            for n, account in enumerate(lab["accounts"])
        )
        + f'[[rules]]\nname = "web"\ntag = ["mirrorq-lab=1"]\ntargets = {json.dumps(targets)}\n'
        + 'choose = "least-loaded"\nfilter_tag = "mirrorq:filter=web"\n'
    )
    start_worker(MIRRORQ_CONCURRENCY="8")

    done = mirrorq(env, "reconcile", "--policy", str(policy), "--wait")
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(mirrorq(env, "batch", "status", done.stdout.strip(), "--json").stdout)
    assert status["counts"] == {"created": 4 * 4}, status
    for (account, region), filter_id in web.items():
        place = lab["accounts"][account]["regions"][region]
        assert sessions_in(emulator.url, account, region) == dict.fromkeys(place["eni_ids"], 1)
        assert filters_used(emulator.url, account, region) == {filter_id}, (account, region)
    for region in (EAST, WEST):
        assert sessions_in(emulator.url, third, region) == {}
    none_here = (
        f"rule web: no filter of tagged mirrorq:filter=web exists in account {third}, {EAST}"
    )
    several = (
        f"rule web: refused in account {third}, {WEST}: 2 filters are tagged "
        f"mirrorq:filter=web ({', '.join(twins)}); tag one only, or name it"
    )
    assert f"mirrorq: {none_here}" in done.stderr
    assert f"mirrorq: {several}" in done.stderr

    plan = mirrorq(env, "policy", "plan", str(policy), "--json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = json.loads(plan.stdout)
    assert planned["jobs"] == []
    assert (planned["missing"], planned["ambiguous"]) == ([none_here], [several])
    assert planned["filter_tag"] == "mirrorq:filter=web"

    # `mirrorq mirror --filter-tag` in one place: refused where it is ambiguous.
    mirror = mirrorq(
        env,
        "mirror",
        *("--tag", "mirrorq-lab=1", "--target", targets[1]),
        *("--filter-tag", "mirrorq:filter=web", "--region", WEST, "--role-arn", role_arn(third)),
    )
    assert mirror.returncode == 2, mirror.stderr[-3000:]
    assert f"({', '.join(twins)})" in mirror.stderr
    assert sessions_in(emulator.url, third, WEST) == {}
