"""Policies' [[accounts]]: where each rule is planned, and every bad entry named (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorq.policy import load_policy
from tasks.contract import Placement
from tasks.errors import PolicyError

T1, T2 = "tmt-0000000000000000a", "tmt-0000000000000000b"
F1, F2 = "tmf-00000000000000001", "tmf-00000000000000002"
PROD = "arn:aws:iam::111111111111:role/mirrorq"
DEV = "arn:aws:iam::222222222222:role/mirrorq"

ACCOUNTS = f"""
[[accounts]]
name = "prod"
role_arn = "{PROD}"
regions = ["us-east-1", "eu-west-1"]
external_id = "mirrorq-prod"

[[accounts]]
name = "dev"
role_arn = "{DEV}"
regions = ["eu-west-1"]
"""

RULES = f"""
[[rules]]
name = "everywhere"
tag = ["Env=prod"]
targets = ["{T1}", "{T2}"]
choose = "least-loaded"
filters = ["{F1}", "{F2}"]

[[rules]]
name = "dev-only"
tag = ["Env=dev"]
target = "{T1}"
filter = "{F1}"
accounts = ["dev"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_a_rule_applies_to_every_region_of_every_account_unless_it_names_some(
    tmp_path: Path,
) -> None:
    everywhere, dev_only = load_policy(write(tmp_path, ACCOUNTS + RULES))
    assert everywhere.places == (
        Placement(region="us-east-1", role_arn=PROD, external_id="mirrorq-prod"),
        Placement(region="eu-west-1", role_arn=PROD, external_id="mirrorq-prod"),
        Placement(region="eu-west-1", role_arn=DEV),
    )
    assert dev_only.places == (Placement(region="eu-west-1", role_arn=DEV),)
    # Several filters: each used where it exists; the first stands for the rule.
    assert everywhere.filter_ids == (F1, F2)
    assert dev_only.filter_ids == (F1,)


def test_a_policy_without_accounts_plans_at_the_fleets_own_place(tmp_path: Path) -> None:
    rules = load_policy(write(tmp_path, RULES.replace('accounts = ["dev"]\n', "")))
    assert [r.places for r in rules] == [(), ()]


@pytest.mark.parametrize(
    ("accounts", "rules", "field", "message"),
    [
        (
            ACCOUNTS.replace('regions = ["eu-west-1"]', "regions = []"),
            RULES,
            "accounts[2] (dev).regions",
            "at least 1 item",
        ),
        (
            ACCOUNTS.replace('regions = ["eu-west-1"]\n', ""),
            RULES,
            "accounts[2] (dev).regions",
            "Field required",
        ),
        (
            ACCOUNTS.replace('"eu-west-1"]\n', '"mars-north-1"]\n'),
            RULES,
            "accounts[2] (dev).regions.0",
            "not a Region EC2 has",
        ),
        (
            ACCOUNTS.replace(DEV, "arn:aws:iam::2222:user/x"),
            RULES,
            "accounts[2] (dev).role_arn",
            "IAM role",
        ),
        (
            ACCOUNTS.replace(DEV, "arn:aws:iam::111111111111:role/other"),
            RULES,
            "accounts[2] (dev).role_arn",
            "account 111111111111 has an entry already (prod)",
        ),
        (
            ACCOUNTS.replace('"dev"', '"prod"'),
            RULES.replace('["dev"]', '["prod"]'),
            "accounts[2] (prod).name",
            "another entry has this name",
        ),
        (
            ACCOUNTS.replace('"mirrorq-prod"', '"no spaces"'),
            RULES,
            "accounts[1] (prod).external_id",
            "ExternalId",
        ),
        (
            ACCOUNTS,
            RULES.replace('["dev"]', '["dev", "qa"]'),
            "rules[2] (dev-only).accounts.1",
            "no [[accounts]] entry is named 'qa'",
        ),
        ("", RULES, "rules[2] (dev-only).accounts.0", "no [[accounts]] entry is named 'dev'"),
        (
            ACCOUNTS,
            RULES.replace(f'filter = "{F1}"', ""),
            "rules[2] (dev-only).(rule)",
            "give filter, filters or filter_tag",
        ),
        (
            ACCOUNTS,
            RULES.replace(f'filter = "{F1}"', f'filter = "{F1}"\nfilters = ["{F2}"]'),
            "rules[2] (dev-only).(rule)",
            "give either filter or filters",
        ),
        (
            ACCOUNTS,
            RULES.replace(f'filter = "{F1}"', 'filter_tag = "mirrorq:filter"'),
            "rules[2] (dev-only).filter_tag",
            "String should match pattern",
        ),
        (
            ACCOUNTS,
            RULES.replace(f'filter = "{F1}"', 'filter_tag = "=web"'),
            "rules[2] (dev-only).filter_tag",
            "String should match pattern",
        ),
        (
            ACCOUNTS,
            RULES.replace(f'filter = "{F1}"', f'filter_tag = "{"k" * 129}=web"'),
            "rules[2] (dev-only).filter_tag",
            "String should match pattern",
        ),
        (
            ACCOUNTS,
            RULES.replace(f'filter = "{F1}"', 'filter_tag = ["mirrorq:filter=web"]'),
            "rules[2] (dev-only).filter_tag",
            "string",
        ),
        (
            ACCOUNTS,
            RULES.replace(f'"{F2}"', f'"{F1}"'),
            "rules[1] (everywhere).(rule)",
            "filters lists a filter twice",
        ),
        (
            ACCOUNTS.replace('name = "dev"', 'name = "dev"\ncolour = "red"'),
            RULES,
            "accounts[2] (dev).colour",
            "Extra inputs",
        ),
    ],
)
def test_every_accounts_error_names_the_file_the_entry_and_the_field(
    tmp_path: Path, accounts: str, rules: str, field: str, message: str
) -> None:
    path = write(tmp_path, accounts + rules)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    lines = str(raised.value).splitlines()
    assert any(line.startswith(f"{path}: {field}: ") and message in line for line in lines), lines


def test_a_merged_plan_submits_each_job_in_its_place_with_that_places_filter(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from mirrorq.planning import Outcome, Plan, Target, plan, planned_jobs

    (rule, _) = load_policy(write(tmp_path, ACCOUNTS + RULES))
    east, west, dev = rule.places
    eni = {"NetworkInterfaceId": "eni-0000000a", "TagSet": [{"Key": "Env", "Value": "prod"}]}
    other = {**eni, "NetworkInterfaceId": "eni-0000000b"}
    # us-east-1 has T1 and F2; eu-west-1 has T2 and F1 (as plan_live specialises the rule).
    here = replace(rule, targets=(T1,), filter_id=F2, filter_choices=())
    there = replace(rule, targets=(T2,), filter_id=F1, filter_choices=())
    merged = Plan.merge(
        [rule],
        [
            (east, plan([here], [eni], [], {T1: Target(T1)}, set())),
            (west, plan([there], [other], [], {T2: Target(T2)}, set())),
            (dev, Plan([])),
        ],
    )
    jobs = {j.request["NetworkInterfaceId"]: j for j in planned_jobs(merged)}
    assert jobs["eni-0000000a"].placement == east
    assert jobs["eni-0000000a"].request["TrafficMirrorFilterId"] == F2
    assert jobs["eni-0000000a"].alternatives == []
    assert jobs["eni-0000000b"].placement == west
    assert jobs["eni-0000000b"].request["TrafficMirrorTargetId"] == T2
    assert jobs["eni-0000000b"].request["TrafficMirrorFilterId"] == F1
    assert merged.counts_by_place() == {
        "111111111111/us-east-1": {Outcome.CREATE.value: 1},
        "111111111111/eu-west-1": {Outcome.CREATE.value: 1},
        "222222222222/eu-west-1": {},
    }
    assert merged.summary()["places"] == merged.counts_by_place()


def test_a_rule_may_find_its_filter_by_a_tag_instead_of_or_besides_ids(tmp_path: Path) -> None:
    rules = RULES.replace(f'filter = "{F1}"', 'filter_tag = "mirrorq:filter=web=1"')
    rules = rules.replace(f'filters = ["{F1}", "{F2}"]', f'filters = ["{F1}"]\nfilter_tag = "k="')
    everywhere, dev_only = load_policy(write(tmp_path, ACCOUNTS + rules))
    assert (dev_only.filter_ids, dev_only.filter_tag) == ((), ("mirrorq:filter", "web=1"))
    assert dev_only.filter_words() == ("tagged mirrorq:filter=web=1",)
    assert (everywhere.filter_ids, everywhere.filter_tag) == ((F1,), ("k", ""))
