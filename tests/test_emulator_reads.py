"""The emulator's shortcuts through moto's reads (emulator/moto_ext.py), held to moto's own
answers in-process, on a backend of an account no other test uses (moto's classes are not
patched here: the functions are called directly, beside the originals they replace)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from moto.ec2.models import ec2_backends

from emulator import moto_ext

ACCOUNT = "000000000017"


@pytest.fixture(scope="module")
def backend() -> Any:
    ec2 = ec2_backends[ACCOUNT]["eu-west-3"]
    ec2.create_tags(["eni-0a1b2c3d4e5f60718", "eni-0a1b2c3d4e5f607189"], {"Env": "prod"})
    ec2.create_tags(["eni-0a1b2c3d4e5f60718"], {"Role": "web", "mirrorq-lab": "1"})
    ec2.create_tags(["i-0a1b2c3d4e5f60718", "tmt-0a1b2c3d4e5f60718"], {"Name": "x"})
    ec2.create_tags(["eni-*", "eni-?a1b"], {"Odd": "id"})  # ids that read as patterns
    return ec2


@pytest.mark.parametrize(
    "resource_id",
    [
        "eni-0a1b2c3d4e5f60718",  # tags, and another id it is the start of
        "eni-0a1b2c3d4e5f607189",
        "i-0a1b2c3d4e5f60718",
        "tmt-0a1b2c3d4e5f60718",
        "eni-0ffffffffffffffff",  # none
        "eni-*",
        "eni-?a1b",
        "eni-[0]a1b2c3d4e5f60718",
        "",
    ],
)
def test_a_resources_own_tags_are_the_ones_moto_finds_by_scanning(
    backend: Any, resource_id: str
) -> None:
    resource: Any = SimpleNamespace(id=resource_id, ec2_backend=backend)
    assert moto_ext._own_tags(resource) == moto_ext._get_tags(resource)


def test_a_resources_own_tags_are_all_its_tags_and_only_its(backend: Any) -> None:
    resource: Any = SimpleNamespace(id="eni-0a1b2c3d4e5f60718", ec2_backend=backend)
    assert {(t["key"], t["value"], t["resource_type"]) for t in moto_ext._own_tags(resource)} == {
        ("Env", "prod", "network-interface"),
        ("Role", "web", "network-interface"),
        ("mirrorq-lab", "1", "network-interface"),
    }


def test_an_ami_looked_up_by_id_is_the_one_moto_finds_by_matching_them_all(
    backend: Any,
) -> None:
    real = next(iter(backend.amis))
    for filters in (
        {"image-id": real},
        {"image-id": "ami-0a1b2c3d4e5f60718"},  # the lab's made-up AMI: none
        {"image-id": "ami-0*"},  # a pattern: moto's own matching
        {"image-id": [real]},
        {"image-id": real, "state": "available"},
    ):
        mine = moto_ext._describe_images_by_id(backend, filters=dict(filters))
        theirs = moto_ext._describe_images(backend, filters=dict(filters))
        assert [a.id for a in mine] == [a.id for a in theirs], filters
    assert [a.id for a in moto_ext._describe_images_by_id(backend, filters={"image-id": real})] == [
        real
    ]
