"""The command line's manners: --help everywhere, and bad input exits 2 naming what was wrong,
never a traceback (found in review: settings, empty ids, options checked too late)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import click
import click.testing
import pytest

from emulator.lab import seed_lab
from mirrorq.cli import main
from mirrorq.processes import MIRRORQ, EmulatorProcess


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


def test_a_csv_delete_can_say_missing_ok_as_it_says_dry_run(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A CSV job file's delete takes `DryRun` as `true`; `missing_ok`, the delete's own field
    (README: in the request, every door), is written in CSV the same way. Found in review:
    exit 2, `line 2: missing_ok: Input should be a valid boolean` for the cell `true`."""
    path = tmp_path / "deletes.csv"
    path.write_text(
        "kind,TrafficMirrorSessionId,missing_ok,DryRun\r\n"
        "delete,tms-0123456789abcdef0,true,\r\n"
        "delete,tms-0123456789abcdef1,,true\r\n",
        newline="",
    )
    done = run(env, "batch", "submit", str(path))
    assert done.returncode == 0, done.stderr[-1000:]


def test_unmirror_and_retarget_refuse_a_malformed_target_or_filter_as_the_api_does(
    emulator: EmulatorProcess, env: dict[str, str]
) -> None:
    """`POST /v1/retarget {"from": "tmt-zz"}` and `POST /v1/unmirror {"target": ["tmt-zz"]}`
    are 422 naming the field; the CLI refuses them too (exit 2 naming the option), and an
    empty `--rule`, not taking a typo for "nothing selected" and exiting 0. Found in review:
    exit 0, an empty batch submitted."""
    lab = seed_lab(emulator.url, 2)
    live = lab["target_ids"]["nlb"]
    for args, option in (
        (("retarget", "--from", "tmt-zz", "--to", live), "--from"),
        (("retarget", "--from", live, "--to", "tmt-zz"), "--to"),
        (("unmirror", "--target", "tmt-zzz"), "--target"),
        (("unmirror", "--filter", "tmf-zzz"), "--filter"),
        (("unmirror", "--rule", ""), "--rule"),
    ):
        done = run(env, *args)
        assert (done.returncode, option in done.stderr) == (2, True), (args, done.stderr[-300:])
        assert "Traceback" not in done.stderr


def _closed_port() -> int:
    """A port nothing listens on (bound, never listened on, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


JOB = (
    '{"NetworkInterfaceId": "eni-0f1e2d3c4b5a69788", "TrafficMirrorTargetId": '
    '"tmt-07f75d8fee0a1b2c3", "TrafficMirrorFilterId": "tmf-0c1d2e3f4a5b6c7d8", '
    '"SessionNumber": 1}'
)


def test_redis_or_ec2_unreachable_is_one_line_naming_it_not_a_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Redis or EC2 down is not a job that failed, nor a bug: one line naming what could not
    be reached (its URL, never a password) and the setting to check, exit 1 (something outside
    the input failed, as README says). Found in review: a raw traceback of 73-152 lines."""
    port = _closed_port()
    broker = f"redis://:hunter2pw@127.0.0.1:{port}/0"
    no_redis = {**env, "MIRRORQ_BROKER_URL": broker, "MIRRORQ_REDIS_RETRY_S": "1"}
    policy = tmp_path / "p.toml"
    policy.write_text(
        '[[rules]]\nname = "web"\ntag = ["Env=prod"]\n'
        'target = "tmt-0123456789abcdef0"\nfilter = "tmf-0123456789abcdef0"\n'
    )
    no_ec2 = {
        **env,
        "MIRRORQ_EC2_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "MIRRORQ_JOB_DEADLINE_S": "3",
    }
    for case_env, args, what, setting in (
        (no_redis, ("status", "some-job"), f"redis://127.0.0.1:{port}/0", "MIRRORQ_BROKER_URL"),
        (no_redis, ("submit", JOB), f"redis://127.0.0.1:{port}/0", "MIRRORQ_BROKER_URL"),
        (no_redis, ("batch", "status", "b-1"), f"127.0.0.1:{port}", "MIRRORQ_BROKER_URL"),
        (
            no_ec2,
            ("coverage", "--policy", str(policy)),
            f"http://127.0.0.1:{port}",
            "MIRRORQ_EC2_ENDPOINT_URL",
        ),
    ):
        done = run(case_env, *args)
        lines = done.stderr.strip().splitlines()
        assert (done.returncode, len(lines)) == (1, 1), (args, done.returncode, lines[-3:])
        assert ("unreachable" in lines[0], what in lines[0], setting in lines[0]) == (
            True,
            True,
            True,
        ), lines
        assert "hunter2pw" not in done.stderr + done.stdout
