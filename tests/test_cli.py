"""The command line's manners: --help everywhere, and bad input exits 2 naming what was wrong,
never a traceback (found in review: settings, empty ids, options checked too late)."""

from __future__ import annotations

import subprocess

import click
import click.testing
import pytest

from mirrorq.cli import main
from mirrorq.processes import MIRRORQ


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIRRORQ, *args], env=env, capture_output=True, text=True, check=False, timeout=120
    )


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += commands(command, (*prefix, name))
    return found


def test_every_command_has_help() -> None:
    runner = click.testing.CliRunner()
    for path in commands(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage:" in result.output


MIRROR = ("mirror", "--target", "tmt-0123456789abcdef0", "--filter", "tmf-0123456789abcdef0")


@pytest.mark.parametrize(
    ("args", "extra_env", "named"),
    [
        (["status", ""], {}, "JOB_ID"),
        (["demo", "--jobs", "0"], {}, "--jobs"),
        (["status", "x"], {"MIRRORQ_EC2_RATE": "abc"}, "MIRRORQ_EC2_RATE"),
        (["status", "x"], {"MIRRORQ_JOB_DEADLINE_S": "1000"}, "MIRRORQ_VISIBILITY_TIMEOUT_S"),
        ([*MIRROR, "--vpc", "vpc-0a1b2c3d", "--packet-length", "0"], {}, "--packet-length"),
        ([*MIRROR, "--vpc", "nope"], {}, "--vpc"),
        ([*MIRROR, "--vpc", "vpc-0a1b2c3d", "--session-tag", "aws:x=1"], {}, "--session-tag"),
        ([*MIRROR[:3], "--vpc", "vpc-0a1b2c3d"], {}, "give --filter or --filter-tag"),
        ([*MIRROR[:3], "--vpc", "vpc-0a1b2c3d", "--filter-tag", "web"], {}, "--filter-tag: "),
        ([*MIRROR, "--vpc", "vpc-0a1b2c3d", "--filter-tag", "k" * 129 + "=v"], {}, "--filter-tag"),
    ],
)
def test_bad_input_exits_2_naming_it_without_a_traceback(
    env: dict[str, str], args: list[str], extra_env: dict[str, str], named: str
) -> None:
    done = run({**env, **extra_env}, *args)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr
