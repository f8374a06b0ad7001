"""What sits between mirrorq and EC2 (proxies, load balancers, VPC endpoints) misbehaving:
real workers talk to the emulator through a small HTTP proxy that mangles some answers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import redis

from emulator.errors import throttled
from emulator.lab import seed_lab
from mirrorq.processes import EmulatorProcess, WorkerProcess
from tasks.producer import Producer
from tests.fault_proxy import BAD_GATEWAY_HTML, Answer, FaultProxy
from tests.helpers import job, mirrors, wait_all, wait_until

# Each kind of answer a proxy gives, keyed by the ClientToken prefix of the jobs that get it.
MANGLED = {
    "html502": Answer(502, BAD_GATEWAY_HTML),  # forwarded: the session exists
    "empty503": Answer(503, b"", forward="instead"),  # never reached EC2
    "empty504": Answer(504, b""),
    "text500": Answer(500, b"upstream connect error or disconnect/reset", "text/plain"),
    "junk200": Answer(200, b"<<<this is not EC2's XML", "text/xml"),
}


def test_every_5xx_and_unparseable_answer_to_a_create_is_retried_with_the_same_token(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lab = seed_lab(emulator.url, 10)
    first_try: set[str] = set()
    lock = threading.Lock()

    def rule(action: str, params: dict[str, str], _: int) -> Answer | None:
        token = params.get("ClientToken", "")
        if action != "CreateTrafficMirrorSession":
            return None
        with lock:
            if token in first_try:
                return None  # the retry goes through
            first_try.add(token)
        return MANGLED[token.split("-")[0]]

    with FaultProxy(emulator.url, rule) as proxy:
        start_worker(MIRRORQ_EC2_ENDPOINT_URL=proxy.url)
        job_ids = [
            producer.submit(job(lab, i, ClientToken=f"{kind}-{n}"))
            for i, (kind, n) in enumerate((k, n) for k in MANGLED for n in range(2))
        ]
        results = wait_all(producer, job_ids)
    assert {r["status"] for r in results} == {"created"}, [r["error"] for r in results]
    assert [r["attempts"] for r in results] == [2] * 10
    assert proxy.mangled["CreateTrafficMirrorSession"] == 10
    # The forwarded creates made their sessions; each retry was answered from the token.
    assert mirrors(emulator.url, lab["target_ids"]["nlb"], lab["filter_id"]) == dict.fromkeys(
        lab["eni_ids"], 1
    )
    assert emulator.stats()["CreateTrafficMirrorSession"]["replayed"] == 8


def test_a_throttled_describe_slows_only_the_describe_rate(
    emulator: EmulatorProcess,
    producer: Producer,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """EC2 keeps a bucket per action: throttled DescribeTrafficMirrorSessions calls (SessionNumber
    auto) must not cut the shared CreateTrafficMirrorSession rate."""
    lab = seed_lab(emulator.url, 10)
    no = throttled()

    def rule(action: str, _: dict[str, str], seen: int) -> Answer | None:
        if action == "DescribeTrafficMirrorSessions" and seen < 6:
            return Answer(no.status, no.to_xml(), "text/xml", forward="instead")
        return None

    with FaultProxy(emulator.url, rule) as proxy:
        start_worker(MIRRORQ_EC2_ENDPOINT_URL=proxy.url)
        job_ids = [producer.submit(job(lab, i, SessionNumber="auto")) for i in range(10)]
        results = wait_all(producer, job_ids)
    assert {r["status"] for r in results} == {"created"}
    assert proxy.mangled["DescribeTrafficMirrorSessions"] == 6
    state = redis.Redis.from_url(redis_url)
    create = state.hgetall("mirrorq:rate:default:us-east-1:CreateTrafficMirrorSession")
    describe = state.hgetall("mirrorq:rate:default:us-east-1:DescribeTrafficMirrorSessions")
    assert int(create.get(b"throttles", 0)) == 0
    assert float(create[b"rate"]) == float(create[b"configured"])
    assert int(describe[b"throttles"]) == 6


def test_throttled_describes_spend_no_create_slots(
    emulator: EmulatorProcess,
    producer: Producer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Found in review: every attempt took a create slot before its ENI's Describe, so `auto`
    jobs whose Describe calls were throttled spent the fleet's create rate on retries that
    created nothing. Explicit jobs beside them must still create at the configured rate."""
    lab = seed_lab(emulator.url, 60)
    no = throttled()
    throttling = threading.Event()
    throttling.set()

    def rule(action: str, _: dict[str, str], __: int) -> Answer | None:
        if action == "DescribeTrafficMirrorSessions" and throttling.is_set():
            return Answer(no.status, no.to_xml(), "text/xml", forward="instead")
        return None

    rate = 4.0
    with FaultProxy(emulator.url, rule) as proxy:
        start_worker(
            MIRRORQ_EC2_ENDPOINT_URL=proxy.url,
            MIRRORQ_EC2_RATE=str(rate),
            MIRRORQ_EC2_BURST="1",
            MIRRORQ_JOBS_PER_MESSAGE="1",  # a thread for every job: none waits for one
        )
        auto = [producer.submit(job(lab, i, SessionNumber="auto")) for i in range(10, 60)]
        wait_until(
            lambda: proxy.mangled["DescribeTrafficMirrorSessions"] >= 40,
            what="the auto jobs to be retrying their throttled reads",
        )
        started = time.monotonic()
        explicit = [producer.submit(job(lab, i)) for i in range(10)]
        explicit_results = wait_all(producer, explicit)
        took = time.monotonic() - started
        throttling.clear()
        auto_results = wait_all(producer, auto)
    # 10 creates at 4/s take 2.25 s; with a create slot spent on every throttled read, the 50
    # auto jobs' retries take their turns too: 60 slots, 15 s. The bound lies between, well
    # clear of both (6.2 s was seen on a loaded machine with four test processes on 2 cores).
    assert took < 0.6 * (len(explicit) + len(auto)) / rate, f"{took:.1f} s for 10 creates"
    assert {r["status"] for r in explicit_results + auto_results} == {"created"}
    assert Counter(r["attempts"] for r in explicit_results) == {1: 10}
