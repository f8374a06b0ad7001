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


# The Sentinel variant: docker-compose.sentinel.yml over docker-compose.yml.
SENTINEL: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.sentinel.yml").read_text())


def merged(service: str) -> dict[str, Any]:
    """A service as `docker compose -f docker-compose.yml -f docker-compose.sentinel.yml`
    sees it: mappings merged key by key, anything else replaced."""
    base = dict(COMPOSE["services"].get(service, {}))
    for key, value in SENTINEL["services"].get(service, {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if duration.endswith(unit):
            return float(duration.removesuffix(unit)) * units[unit]
    return float(duration)


def test_every_service_outlasts_a_job_on_stop() -> None:
    """`docker compose down` (either file) lets running jobs finish: the grace period
    outlasts a job's deadline and its last EC2 call, at the settings the services use."""
    for services, name_of in (
        (COMPOSE["services"], "docker-compose.yml"),
        ({**COMPOSE["services"], **SENTINEL["services"]}, "sentinel"),
    ):
        for name in services:
            service = merged(name) if name_of == "sentinel" else services[name]
            environment = service.get("environment") or {}
            settings = Settings(
                **{
                    k.removeprefix("MIRRORQ_").lower(): v
                    for k, v in environment.items()
                    if k.startswith("MIRRORQ_") and k != "MIRRORQ_API_TOKENS"
                }
            )
            needed = settings.job_deadline_s + settings.connect_timeout_s + settings.read_timeout_s
            grace = service.get("stop_grace_period")
            assert grace is not None, f"{name_of}: {name} has no stop_grace_period"
            assert seconds(grace) > needed, (
                f"{name_of}: {name} stops in {grace}, a job needs {needed}"
            )


def test_the_sentinel_variant_is_consistent() -> None:
    sentinels = [n for n in SENTINEL["services"] if n.startswith("sentinel-")]
    assert len(sentinels) == 3
    masters = set()
    for name in sentinels:
        script = SENTINEL["services"][name]["command"][-1]
        monitor = script.split("sentinel monitor ", 1)[1].split("\\n", 1)[0].split()
        master, host, port, quorum = monitor
        masters.add(master)
        assert host in COMPOSE["services"], f"{name} monitors {host}, which is no service"
        assert port == "6379"
        assert int(quorum) <= len(sentinels) // 2 + 1
        assert "--sentinel" in script
        assert "port 26379" in script
    replica = SENTINEL["services"]["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1] == host
    for name in ("redis", "redis-replica"):
        command = merged(name)["command"]
        assert '"--appendonly", "yes"' in json.dumps(command), f"{name} keeps no AOF"
        assert command[command.index("--replica-announce-ip") + 1] == name
    for service in ("worker", "listener", "api"):
        environment = merged(service)["environment"]
        unknown = set(environment) - setting_names()
        assert not unknown, f"{service} sets variables nothing reads: {unknown}"
        assert environment["MIRRORQ_SENTINEL_MASTER"] in masters
        url = environment["MIRRORQ_BROKER_URL"]
        named = {part.split("://", 1)[1] for part in url.split(";")}
        assert named == {f"{s}:26379" for s in sentinels}, f"{service} names {named}"
        assert int(environment["MIRRORQ_REDIS_MIN_REPLICAS"]) == 1  # one replica here
        assert set(sentinels) <= set(merged(service)["depends_on"])
