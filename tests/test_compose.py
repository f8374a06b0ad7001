"""docker-compose.yml can't run here (no Docker engine); check that what it says is real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from config import EmulatorSettings, Settings
from mirrorq.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
MIRRORQ_SERVICES = ["emulator", "worker", "listener", "api"]


def setting_names() -> set[str]:
    names = {f"MIRRORQ_{n.upper()}" for n in Settings.model_fields}
    names |= {f"MIRRORQ_EMULATOR_{n.upper()}" for n in EmulatorSettings.model_fields}
    return names | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}


@pytest.mark.parametrize("service", MIRRORQ_SERVICES)
def test_service_commands_are_real_mirrorq_commands(service: str) -> None:
    name, *args = COMPOSE["services"][service]["command"]
    command = main.commands.get(name)
    assert isinstance(command, click.Command), f"mirrorq has no {name!r} command"
    if name != "worker":  # the worker passes its arguments on to celery
        for volume in COMPOSE["services"][service].get("volumes", []):
            host, container, *_ = volume.split(":")
            args = [str(ROOT / host) if a == container else a for a in args]
        command.make_context(name, list(args))  # raises on unknown options or bad values


@pytest.mark.parametrize("service", MIRRORQ_SERVICES)
def test_service_variables_are_settings_mirrorq_reads(service: str) -> None:
    environment = COMPOSE["services"][service].get("environment", {})
    unknown = set(environment) - setting_names()
    assert not unknown, f"{service} sets variables nothing reads: {unknown}"
    if service == "worker":
        assert Settings(
            **{
                k.removeprefix("MIRRORQ_").lower(): v
                for k, v in environment.items()
                if k.startswith("MIRRORQ_")
            }
        )


def test_the_worker_reaches_services_that_exist() -> None:
    env = COMPOSE["services"]["worker"]["environment"]
    host_of = {"broker": env["MIRRORQ_BROKER_URL"], "ec2": env["MIRRORQ_EC2_ENDPOINT_URL"]}
    for url in host_of.values():
        host = url.split("://", 1)[1].split(":", 1)[0]
        assert host in COMPOSE["services"], f"{url} names no service"
    command = COMPOSE["services"]["emulator"]["command"]
    port = command[command.index("--port") + 1]
    assert env["MIRRORQ_EC2_ENDPOINT_URL"].endswith(f":{port}")


def test_published_ports_bind_to_loopback_only() -> None:
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_images_build_from_this_repository() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in MIRRORQ_SERVICES:
        assert COMPOSE["services"][name]["build"] == "."
    for folder in ("config", "tasks", "worker", "emulator", "mirrorq"):
        assert f"COPY {folder} {folder}" in dockerfile
    assert "uv sync --frozen" in dockerfile


def test_the_deploy_examples_are_what_they_say() -> None:
    from mirrorq.policy import load_policy

    rules = load_policy(ROOT / "deploy" / "policy.example.toml")
    assert [r.name for r in rules] == ["prod-web", "payments"]
    for path in (ROOT / "deploy").rglob("*.json"):
        assert json.loads(path.read_text()), path
    running = json.loads((ROOT / "deploy" / "eventbridge" / "instance-running.json").read_text())
    assert running["detail"]["state"] == ["running"]
