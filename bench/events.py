"""Event to session: an EventBridge event put into SQS until its session exists in EC2, for one
event at idle and a burst of 500, beside the same work through `mirrorq submit`."""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import flush, producer, worker_env, workers
from emulator.lab import lab_client, lab_sqs_client
from emulator.zoned_lab import ZonedLab, policy_text, seed_zoned_lab
from mirrorq.processes import EmulatorProcess, ListenerProcess

IDLE_SAMPLES = 30
BURST = 500
POLL_S = 0.005


def _event(eni_id: str) -> str:
    """CloudTrail's record of a CreateNetworkInterface, as EventBridge delivers it."""
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.ec2",
            "region": "us-east-1",
            "detail": {
                "eventName": "CreateNetworkInterface",
                "eventSource": "ec2.amazonaws.com",
                "responseElements": {"networkInterface": {"networkInterfaceId": eni_id}},
            },
        }
    )


def _enis(url: str, lab: ZonedLab, count: int) -> list[str]:
    """ENIs that the policy's db rule mirrors to the NLB (which takes any number of sources),
    made before timing, events aside."""
    ec2 = lab_client(url)
    zone = lab["zones"][0]
    tags = [{"ResourceType": "network-interface", "Tags": [{"Key": "Role", "Value": "db"}]}]
    return [
        ec2.create_network_interface(SubnetId=lab["subnets"][zone], TagSpecifications=tags)[
            "NetworkInterface"
        ]["NetworkInterfaceId"]
        for _ in range(count)
    ]


class _Watch:
    """When each ENI's session first appears (one Describe of all sessions every few ms)."""

    def __init__(self, url: str) -> None:
        self._ec2 = lab_client(url)
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        paginator = self._ec2.get_paginator("describe_traffic_mirror_sessions")
        while not self._stop.is_set():
            now = time.monotonic()
            for page in paginator.paginate():
                for s in page["TrafficMirrorSessions"]:
                    self.seen.setdefault(s["NetworkInterfaceId"], now)
            time.sleep(POLL_S)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _latencies(
    url: str, enis: list[str], send: Callable[[list[str]], None], together: bool, timeout: float
) -> list[float]:
    """Seconds from each ENI's event (or job) being put in to its session existing."""
    sent: dict[str, float] = {}
    with _Watch(url) as watch:
        groups = [enis] if together else [[e] for e in enis]
        for group in groups:
            now = time.monotonic()
            send(group)
            sent.update(dict.fromkeys(group, now))
            if not together:  # at idle: one at a time, each after the last one's session
                deadline = time.monotonic() + timeout
                while group[0] not in watch.seen and time.monotonic() < deadline:
                    time.sleep(POLL_S)
        deadline = time.monotonic() + timeout
        while not all(e in watch.seen for e in enis) and time.monotonic() < deadline:
            time.sleep(0.05)
        missing = [e for e in enis if e not in watch.seen]
        if missing:
            raise TimeoutError(f"{len(missing)} sessions never appeared")
        return sorted(watch.seen[e] - sent[e] for e in enis)


def _percentiles(values: list[float]) -> dict[str, float]:
    cut = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": cut[49] * 1000, "p99_ms": cut[98] * 1000, "max_ms": values[-1] * 1000}


def bench_events() -> dict[str, Any]:
    out: dict[str, Any] = {"idle_samples": IDLE_SAMPLES, "burst": BURST}
    flush()
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess() as emulator:
        url = emulator.url
        lab = seed_zoned_lab(url)
        policy = Path(tmp) / "policy.toml"
        policy.write_text(policy_text(lab))
        sqs = lab_sqs_client(url)
        queue = sqs.create_queue(QueueName="bench-events")["QueueUrl"]
        env = worker_env(emulator, MIRRORQ_JOBS_PER_MESSAGE="1")
        submitter = producer()

        def put_events(enis: list[str]) -> None:
            for start in range(0, len(enis), 10):
                sqs.send_message_batch(
                    QueueUrl=queue,
                    Entries=[
                        {"Id": str(n), "MessageBody": _event(e)}
                        for n, e in enumerate(enis[start : start + 10])
                    ],
                )

        def submit(enis: list[str]) -> None:
            for eni in enis:
                submitter.submit(
                    {
                        "NetworkInterfaceId": eni,
                        "TrafficMirrorTargetId": lab["nlb"],
                        "TrafficMirrorFilterId": lab["f_db"],
                        "SessionNumber": "auto",
                    }
                )

        with (
            workers(emulator, 1, MIRRORQ_JOBS_PER_MESSAGE="1"),
            ListenerProcess(
                "bench-listener",
                env,
                "--sqs-queue-url",
                queue,
                "--policy",
                str(policy),
                "--pollers",
                "4",
            ) as listener,
        ):
            listener.wait_ready(60)
            put_events(_enis(url, lab, 5))  # warm up: connections, the targets' cache
            time.sleep(2)
            for name, send in (("event", put_events), ("submit", submit)):
                idle = _latencies(url, _enis(url, lab, IDLE_SAMPLES), send, False, 30)
                burst = _latencies(url, _enis(url, lab, BURST), send, True, 300)
                out[name] = {"idle": _percentiles(idle), "burst": _percentiles(burst)}
    flush()
    return out
