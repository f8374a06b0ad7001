"""No credential, session token or signature in any log, at any level, the worker's included,
in text and in JSON lines (where every field is redacted, not only the message)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from emulator.lab import seed_lab
from emulator.org_lab import control
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.contract import TASK_NAME
from tasks.producer import Producer
from tests.fake_secrets import ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN, SIGNATURE
from tests.helpers import job, json_lines, wait_all
from worker.redaction import RedactSecrets

FORMATS = pytest.mark.parametrize("log_format", ["text", "json"])


def read_log(path: Path, log_format: str) -> str:
    """A worker's log as text to search: in JSON, every line parsed (each must be JSON), and
    every value of every line, decoded (a secret escaped in JSON would not show as it is)."""
    log = path.read_text()
    if log_format == "json":
        return "\n".join(v for line in json_lines(log, "worker") for v in _strings(line))
    return log


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else [json.dumps(value)]


@FORMATS
def test_a_worker_at_debug_logs_no_credential_token_or_signature(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
    log_format: str,
) -> None:
    lab = seed_lab(emulator.url, 3)
    worker = start_worker(
        None,
        "--log-format",
        log_format,
        "--loglevel",
        "DEBUG",
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_SESSION_TOKEN=SESSION_TOKEN,
    )
    job_ids = [producer.submit(job(lab, i, SessionNumber="auto")) for i in range(3)]
    assert {r["status"] for r in wait_all(producer, job_ids)} == {"created"}
    worker.stop()
    log = read_log(worker.log_path, log_format)
    # The check has teeth only if botocore really logged its requests at DEBUG, in a job.
    assert "CreateTrafficMirrorSession" in log
    assert "Authorization" in log or "authorization" in log
    if log_format == "text":  # the context, short, at the end of a line
        assert f"[job_id={job_ids[0]} region=us-east-1 attempt=1 task={TASK_NAME}]" in log
    for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN):
        assert secret not in log
    assert not SIGNATURE.search(log), SIGNATURE.search(log)


def test_the_redaction_filter_catches_what_botocore_prints() -> None:
    from worker.redaction import RedactSecrets

    secrets = RedactSecrets()
    secrets.remember(ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN)
    lines = [
        (
            "Sending http request: <AWSPreparedRequest headers={'Authorization': "
            "b'AWS4-HMAC-SHA256 Credential=ASIAY34FZKBOKMUTVV7A/20261127/us-east-1/ec2/"
            "aws4_request, SignedHeaders=host;x-amz-date, Signature="
            + "a" * 64
            + "', 'X-Amz-Security-Token': b'IQoJb3JpZ2luX2VjEMIRRORQ'}>"
        ),
        "CanonicalRequest:\nPOST\n/\n\nx-amz-security-token:IQoJb3JpZ2luX2VjEMIRRORQ\n",
        "Signature:\n" + "b" * 64,
        f"{{'aws_access_key_id': '{ACCESS_KEY_ID}', "
        f"'aws_secret_access_key': '{SECRET_ACCESS_KEY}'}}",
    ]
    for line in lines:
        record = logging.LogRecord(
            "botocore.endpoint", logging.DEBUG, __file__, 1, "%s", (line,), None
        )
        assert secrets.filter(record)
        text = record.getMessage()
        for secret in (
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            SESSION_TOKEN,
            "ASIAY34FZKBOKMUTVV7A",
            "IQoJb3JpZ2luX2VjEMIRRORQ",
            "a" * 64,
            "b" * 64,
        ):
            assert secret not in text, text


STS_VALUES = re.compile(r"<(?:AccessKeyId|SecretAccessKey|SessionToken)>([^<]*)<")
TOKEN_VALUES = re.compile(r"(?i)x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?([^\s'\",}&]+)")
ISSUED_KEY_ID = re.compile(r"\bASIA[A-Z0-9]{12,}\b")


@FORMATS
def test_an_assumed_role_job_at_debug_logs_none_of_the_assumed_credentials(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
    log_format: str,
) -> None:
    """The credentials a worker assumes for a job's role, refreshed every 2 s, are as secret
    as its own: STS's answer (printed by botocore at DEBUG), every request signed with them
    and its token header show none of them."""
    from emulator.org_lab import control, role_arn, seed_org_lab
    from tasks.contract import QUEUE, TASK_NAME

    lab = seed_org_lab(emulator.url, accounts=1, regions=("eu-west-1",), enis=6)
    ((account, seeded),) = lab["accounts"].items()
    place = seeded["regions"]["eu-west-1"]
    control(emulator.url, "sts", {"lifetime_seconds": 2})
    worker = start_worker(None, "--loglevel", "DEBUG", MIRRORQ_LOG_FORMAT=log_format)
    job_ids = []
    for eni in place["eni_ids"]:
        request = {
            "NetworkInterfaceId": eni,
            "TrafficMirrorTargetId": lab["security"]["regions"]["eu-west-1"]["target_ids"][0],
            "TrafficMirrorFilterId": place["filter_id"],
            "SessionNumber": "auto",
        }
        kwargs = {"request": request, "region": "eu-west-1", "role_arn": role_arn(account)}
        job_ids.append(producer.app.send_task(TASK_NAME, kwargs=kwargs, queue=QUEUE).id)
    assert {r["status"] for r in wait_all(producer, job_ids)} == {"created"}
    worker.stop()
    log = read_log(worker.log_path, log_format)
    # Teeth: botocore printed STS's answer and the requests signed with what it issued.
    assert "<AssumeRoleResult>" in log
    assert "X-Amz-Security-Token" in log
    assert set(STS_VALUES.findall(log)) == {"***"}
    assert set(TOKEN_VALUES.findall(log)) == {"***"}
    assert not ISSUED_KEY_ID.search(log), ISSUED_KEY_ID.search(log)
    assert not SIGNATURE.search(log), SIGNATURE.search(log)


def test_redis_and_sentinel_passwords_never_show_quoted_short_or_in_any_url() -> None:
    """The configured passwords, as configured (%-quoted in a URL) and decoded, however short,
    and any URL's userinfo password: kombu prints failover URLs with the password as quoted."""
    from pydantic import SecretStr

    from config import Settings
    from worker.redaction import RedactSecrets, redact_redis_passwords

    secrets = RedactSecrets()
    settings = Settings(
        broker_url="sentinel://:p%40ss%2Fw0rd@sentinel-1:26379/0;sentinel://sentinel-2:26379",
        result_backend="redis://:k9@redis:6379/1",
        sentinel_password=SecretStr("s!"),
    )
    redact_redis_passwords(settings, secrets)
    lines = {
        "failover to redis://:p%40ss%2Fw0rd@10.0.0.7:6379/0": ("p%40ss%2Fw0rd", "p@ss/w0rd"),
        "connection options {'password': 'p@ss/w0rd', 'db': 0}": ("p@ss/w0rd",),
        "result backend redis://:k9@redis:6379/1 unreachable": ("k9",),
        "sentinel AUTH with 's!' failed": ("s!",),
        # Not configured here (another process's URL): its userinfo password still goes.
        "Cannot connect to redis://mirrorq:0ther-Secret@cache:6379//": ("0ther-Secret",),
        "rediss://:tls-pw@h:6380/0 and amqp://u:v@mq:5672/": ("tls-pw", ":v@"),
    }
    for line, hidden in lines.items():
        record = logging.LogRecord("kombu", logging.ERROR, __file__, 1, "%s", (line,), None)
        assert secrets.filter(record)
        text = record.getMessage()
        for secret in hidden:
            assert secret not in text, text
    # What is not a password stays readable.
    assert secrets.redact("redis://redis:6379/0 at 12:30:45") == "redis://redis:6379/0 at 12:30:45"
    assert "mirrorq:***@cache" in secrets.redact("redis://mirrorq:hunter2@cache:6379")


EXTERNAL_ROLE = "arn:aws:iam::111111111111:role/mirrorq"
EXTERNAL_ID = "org-4711-review-extid"


@FORMATS
def test_no_log_line_carries_a_job_s_external_id(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
    log_format: str,
) -> None:
    """README: "The ExternalId is not a secret, but no log line carries it." A job sent by
    another service with `send_task` (role_arn and external_id beside its request), run by a
    worker at INFO (the default level) and one at DEBUG, in each log format. Found in review:
    Celery's `received` line (INFO, JSON: its `data`) printed the kwargs with the ExternalId,
    and botocore's DEBUG line the AssumeRole request's body with it."""
    lab = seed_lab(emulator.url, 2)
    control(emulator.url, "roles", {"role_arn": EXTERNAL_ROLE, "external_id": EXTERNAL_ID})
    found = {}
    for level in ("INFO", "DEBUG"):
        worker = start_worker(None, "--loglevel", level, "--log-format", log_format)
        ids = [f"ext-{log_format}-{level}-{n}" for n in range(2)]
        for n, task_id in enumerate(ids):
            producer.app.send_task(
                TASK_NAME,
                task_id=task_id,
                kwargs={
                    "request": {**job(lab, n), "DryRun": True},
                    "role_arn": EXTERNAL_ROLE,
                    "external_id": EXTERNAL_ID,
                },
            )
        records = wait_all(producer, ids)
        assert {r["status"] for r in records} <= {"dry_run_ok", "failed"}, records
        worker.kill()
        worker.stop()
        log = read_log(worker.log_path, log_format)
        if level == "DEBUG":  # teeth: botocore printed the AssumeRole request
            assert "AssumeRole" in log
        found[level] = [line[:200] for line in log.splitlines() if EXTERNAL_ID in line]
    assert found == {"INFO": [], "DEBUG": []}


def test_an_external_id_is_masked_by_its_name_wherever_it_is_printed() -> None:
    """By its key, as a dict's repr, JSON, a query string or keyword arguments print it, whatever
    its characters (STS takes `,` `=` `/` `:` `@` `+` in one), and by value once remembered."""
    secrets = RedactSecrets()
    value = "a,b=c/d:e@f+g.h-i_j"
    for line in (
        f"{{'Action': 'AssumeRole', 'ExternalId': '{value}', 'Version': '2011-06-15'}}",
        f'{{"external_id": "{value}", "role_arn": "arn:aws:iam::1:role/r"}}',
        f"Action=AssumeRole&ExternalId={value.replace(',', '%2C')}&Version=2011-06-15",
        f"kwargs={{'request': {{}}, 'external_id': b'{value}'}}",
        f"ExternalId={value} RoleArn=arn:aws:iam::1:role/r",
    ):
        text = secrets.redact(line)
        assert [part for part in ("a,b", "%2C", "g.h") if part in text] == [], text
        assert "***" in text, text
    secrets.remember(value)
    assert secrets.redact(f"the id is {value}.") == "the id is ***."
