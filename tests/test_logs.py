"""JSON logs (MIRRORQ_LOG_FORMAT=json, --log-format json): one JSON object a line from every
long-running process, with the context that applies; every field redacted. The formatters
alone, then real processes at DEBUG: an emulator with faults, a worker running a batch, a
listener handling EC2's events and the API handling one, each line of each read back."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime as dt
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator.lab import lab_sqs_client, seed_lab
from emulator.zoned_lab import expected_mirrors, launch, policy_text, seed_zoned_lab
from mirrorq.processes import (
    MIRRORQ,
    ApiProcess,
    EmulatorProcess,
    ListenerProcess,
    WorkerProcess,
    free_port,
)
from tasks.contract import BATCH_TASK_NAME, TASK_NAME, parse_request
from tasks.producer import Producer
from tests.fake_secrets import ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN, SIGNATURE
from tests.helpers import job, json_lines, sessions, wait_all, wait_until
from worker.logs import JsonLines, TextFormatter, WithContext, configure, log_context
from worker.redaction import REDACTOR

Line = dict[str, Any]
TOKEN = "logs-test-token-2b7f"  # noqa: S105 - the test's own


# --- the formatters alone ------------------------------------------------------------------


def test_a_json_line_carries_its_context_and_no_secret_in_any_field() -> None:
    REDACTOR.remember(ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN)
    out = io.StringIO()
    logger = logging.getLogger("tests.logs.unit")
    logger.propagate = False
    handlers = []
    for formatter in (JsonLines(), TextFormatter()):
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        handler.addFilter(WithContext())
        handlers.append(handler)
    logger.setLevel(logging.DEBUG)
    try:
        for handler in handlers:
            logger.handlers = [handler]
            with log_context(job_id="j-1", batch_id=None, task=TASK_NAME), log_context(attempt=2):
                try:
                    raise RuntimeError(f"boom with {SECRET_ACCESS_KEY}")
                except RuntimeError:
                    logger.exception(
                        "signed with %s",
                        f"Credential={ACCESS_KEY_ID}/20261206/us-east-1/ec2/aws4_request",
                        extra={
                            "error_code": "RequestLimitExceeded",
                            "attempt": 3,  # the call's own wins over the context's
                            "headers": {"X-Amz-Security-Token": SESSION_TOKEN},
                            "raw": [f"aws_secret_access_key={SECRET_ACCESS_KEY}"],
                            "odd": Exception(f"Signature={'c' * 64}"),
                        },
                    )
            logger.info("outside")
    finally:
        logger.handlers = []
    first, second, text, *_ = out.getvalue().split("\n")
    line = json.loads(first)
    assert list(line)[:4] == ["timestamp", "level", "logger", "message"]
    assert dt.fromisoformat(line["timestamp"]).utcoffset() == timedelta(0)
    assert line["level"] == "ERROR"
    assert line["logger"] == "tests.logs.unit"
    assert line["job_id"] == "j-1"
    assert line["task"] == TASK_NAME
    assert line["attempt"] == 3
    assert line["error_code"] == "RequestLimitExceeded"
    assert "batch_id" not in line  # None: not set
    assert "RuntimeError" in line["exc_info"]
    assert json.loads(second).keys() == {"timestamp", "level", "logger", "message"}
    everything = first + text
    for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN, "c" * 64):
        assert secret not in everything, secret
    assert line["headers"] == {"X-Amz-Security-Token": "***"}
    # Text: readable, with the context short at the end.
    assert " ERROR tests.logs.unit: signed with Credential=***/" in text
    assert text.endswith(
        "[job_id=j-1 attempt=3 error_code=RequestLimitExceeded task=" + TASK_NAME + "]"
    )


def test_configure_sends_every_logger_to_one_handler_and_is_undone_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The format it records for this process too (the CLI's errors became log lines for the
    # tests this process ran next, test_errors' among them).
    monkeypatch.setattr("worker.logs._chosen", None)
    root = logging.getLogger()
    saved = root.handlers[:], root.level, sys.excepthook, threading.excepthook
    root.handlers = []  # pytest's own: configure() would close them
    out = io.StringIO()
    try:
        logging.getLogger("uvicorn.access").addHandler(logging.StreamHandler(io.StringIO()))
        configure("json", "DEBUG", out)
        logging.getLogger("uvicorn.access").info('%s - "%s %s"', "127.0.0.1", "GET", "/healthz")
        logging.getLogger("kombu.tests").debug("kombu says")
        logging.getLogger("celery.app.trace").info("dropped: quieted at INFO")
        lines = json_lines(out.getvalue(), "this process")
        assert [line["logger"] for line in lines] == ["uvicorn.access", "kombu.tests"]
        assert lines[0]["message"] == '127.0.0.1 - "GET /healthz"'
    finally:
        root.handlers, sys.excepthook, threading.excepthook = saved[0], saved[2], saved[3]
        root.setLevel(saved[1])
        logging.captureWarnings(False)


# --- real processes ------------------------------------------------------------------------


@pytest.fixture
def json_emulator() -> Iterator[EmulatorProcess]:
    """An emulator of this test's own, logging JSON at DEBUG."""
    emulator = EmulatorProcess(
        "--seed", "19", "--events-queue", "events", "--log-format", "json", "--log-level", "DEBUG"
    )
    yield emulator
    emulator.stop()


def test_every_process_logs_json_lines_with_the_context_that_applies(
    json_emulator: EmulatorProcess,
    env: dict[str, str],
    producer: Producer,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = json_emulator.url
    queue_url = json_emulator.events_queue_url
    assert queue_url is not None
    zoned = seed_zoned_lab(url)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(zoned))
    lab = seed_lab(url, 17)  # its tagged ENIs are the batch's, not the listener's: their
    lab_sqs_client(url).purge_queue(QueueUrl=queue_url)  # events go
    enis = launch(url, zoned, 4)  # EC2's events for them wait in the listener's queue
    # The faults: throttled (20/s, bursts of 5), a tenth of creates failing with 5xx and a
    # tenth of their answers dropped.
    json_emulator.set_faults(throttle_rate=20, throttle_burst=5, error_rate=0.1, drop_rate=0.1)
    # The setting for the worker and the API, the flags for the listener (and the emulator).
    jenv = {**env, "MIRRORQ_EC2_ENDPOINT_URL": url, "MIRRORQ_LOG_FORMAT": "json"}
    worker = start_worker(None, "--loglevel", "DEBUG", **jenv)
    listener = ListenerProcess(
        f"listener-{uuid.uuid4().hex[:6]}",
        {**env, "MIRRORQ_EC2_ENDPOINT_URL": url},
        "--sqs-queue-url",
        queue_url,
        "--policy",
        str(policy),
        "--log-format",
        "json",
        "--log-level",
        "DEBUG",
    )
    port = free_port()
    api = ApiProcess(
        f"api-{uuid.uuid4().hex[:6]}",
        {**jenv, "MIRRORQ_API_TOKENS": TOKEN, "MIRRORQ_LOG_LEVEL": "debug"},
        "--port",
        str(port),
        "--policy",
        str(policy),
    )
    try:
        listener.wait_ready()
        api.wait_ready()
        batch_id = producer.submit_batch([parse_request(job(lab, i)) for i in range(16)])
        own = {
            "NetworkInterfaceId": lab["eni_ids"][16],
            "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
            "TrafficMirrorFilterId": lab["filter_id"],
            "SessionNumber": 1,
        }
        event = {"id": "api-event-1", "detail-type": "mirrorq.CreateTrafficMirrorSession"}
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        assert http.post("/v1/events", json={**event, "detail": own}).status_code == 401
        answer = http.post(
            "/v1/events",
            json={**event, "source": "my.service", "detail": own},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 202, answer.text
        (api_job,) = answer.json()["job_ids"]

        batch = [j for chunk in producer.store.batches.job_ids(batch_id) for j in chunk]
        done = wait_all(producer, [*batch, api_job])
        assert {r["status"] for r in done} == {"created"}, [r["error"] for r in done if r["error"]]
        wanted = expected_mirrors(zoned, enis)
        wait_until(
            lambda: (
                wanted
                <= {
                    (
                        s["NetworkInterfaceId"],
                        s["TrafficMirrorTargetId"],
                        s["TrafficMirrorFilterId"],
                    )
                    for s in sessions(url)
                }
            ),
            timeout=120,
            interval=0.5,
            what="the events' mirrors",
        )
    finally:
        for process in (listener, api, worker):
            process.stop()  # their shutdown lines too
    # A long-running command that fails at start says why in a line of its log too.
    refused = subprocess.run(
        [*MIRRORQ, "listen", "--sqs-queue-url", queue_url + "-gone", "--policy", str(policy)],
        env={**jenv, "MIRRORQ_LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert not refused.stdout
    (why,) = [line for line in json_lines(refused.stderr, "listen") if line["level"] == "ERROR"]
    assert why["error_code"] == "QueueUnusable"
    assert "NonExistentQueue" in why["message"]
    json_emulator.proc.terminate()
    json_emulator.proc.wait()
    logs = {
        "worker": json_lines(worker.log_path.read_text(), "worker"),
        "listener": json_lines(listener.log_path.read_text(), "listener"),
        "api": json_lines(api.log_path.read_text(), "api"),
        "emulator": json_lines(json_emulator.stderr_text(), "emulator"),
    }
    assert any(line["message"] == f"serving on {url}" for line in logs["emulator"])

    # The worker: Celery's lines and its shutdown notice among them; each job's last line names
    # the job, its batch (or event and rule), the task, the Region.
    work = logs["worker"]
    loggers = {line["logger"] for line in work}
    assert any(name.startswith("celery.") for name in loggers), loggers
    assert any(line["message"].endswith(" ready.") for line in work)
    assert any("Warm shutdown" in line["message"] for line in work)
    assert any(
        line["logger"] == "celery.worker.strategy" and line.get("task") == BATCH_TASK_NAME
        for line in work
    )
    ended = {
        line["job_id"]: line
        for line in work
        if line["logger"] == "worker.runner" and " after " in line["message"]
    }
    assert set(batch) | {api_job} <= ended.keys()
    for job_id in batch:
        assert ended[job_id]["batch_id"] == batch_id
        assert ended[job_id]["task"] == BATCH_TASK_NAME
        assert ended[job_id]["region"] == "us-east-1"
        assert isinstance(ended[job_id]["attempt"], int)
    from_events = [line for line in ended.values() if "rule" in line]
    assert {line["rule"] for line in from_events} == {"prod-web", "db"}
    assert all(line["event_id"] for line in from_events)
    assert ended[api_job]["event_id"] == "api-event-1"
    # EC2's errors: the code and the attempt, with the job and its task.
    retries = [line for line in work if line["logger"] == "worker.execute"]
    assert any(line["error_code"] == "RequestLimitExceeded" for line in retries), retries[:3]
    assert all(
        isinstance(line["attempt"], int) and line["job_id"] and line["task"] for line in retries
    )
    # Context reaches the libraries' lines: botocore's request, logged inside a create.
    sent = [
        line
        for line in work
        if line["logger"] == "botocore.endpoint" and "CreateTrafficMirrorSession" in line["message"]
    ]
    assert sent
    assert all(line.get("job_id") and line.get("attempt") and line.get("task") for line in sent)

    # The listener: each event's job accepted, named with its event, rule and Region.
    accepted = [line for line in logs["listener"] if line["logger"] == "mirrorq.intake"]
    assert {line["rule"] for line in accepted} == {"prod-web", "db"}
    assert all(line["event_id"] and line["job_id"] and line["region"] for line in accepted)
    assert any(line["message"].startswith("listening on") for line in logs["listener"])

    # The API: uvicorn's lines (start, access) and the event it handled.
    served = logs["api"]
    assert any(line["message"].startswith("Uvicorn running on") for line in served)
    assert any(line["logger"] == "uvicorn.access" and "401" in line["message"] for line in served)
    assert any(
        line.get("event_id") == "api-event-1" and line.get("job_id") == api_job for line in served
    )
    for name, lines in logs.items():
        text = json.dumps(lines)
        assert TOKEN not in text, name
        assert not SIGNATURE.search(text), (name, SIGNATURE.search(text))
