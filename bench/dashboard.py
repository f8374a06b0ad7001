"""The dashboard on a policy of 10,000 ENIs: the time to first paint of its pages in headless
Chromium, and the server's time per live update (the Server-Timing each answer carries), with
the bytes each update sends, rendered afresh (a new report or filter) and unchanged (304).

By default the coverage report is a synthetic one of 10,000 ENIs in `mirrorq coverage
--json`'s shape, served by a real uvicorn: the dashboard's own costs. With
MIRRORQ_BENCH_UI_EMULATOR=1 the report is read from an emulator lab of 10,000 ENIs through a
real `mirrorq api --policy` instead; on two shared cores moto took 12 minutes to seed that lab
and had not answered the coverage's DescribeNetworkInterfaces after 10 more (2026-12-06), so
that variant is there for a faster machine.

Run: `uv run python -m bench --only dashboard` (writes bench/results/dashboard.json).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from bench.common import REDIS_URL, RESULTS, console, flush
from emulator.lab import LAB_CREDENTIALS, seed_lab
from mirrorq.processes import ApiProcess, EmulatorProcess, free_port

TOKEN = "bench-dashboard-token-5e1f"  # noqa: S105 - a local benchmark's own
ENIS = 10_000
UPDATES = 30  # live updates timed per fragment
LOADS = 5  # page loads timed per page
# Each live part, with the query variants that make it render afresh: the coverage pages are
# rendered once per report and filter, so a different filter (the search is case-blind:
# "ENI-", "eNi-", ... find the same ENIs) costs what an update after a new report costs.
CASINGS = [
    "".join(c.upper() if bit else c for c, bit in zip(word, bits, strict=True))
    for word in ("eni-",)
    for bits in __import__("itertools").product((0, 1), repeat=4)
]
FRAGMENTS = {
    "coverage by rule": ["/ui/coverage/live"],
    "ENI list (first 500 of 10,000)": [f"/ui/coverage/enis/live?q={c}" for c in CASINGS],
    "ENI list, one state and zone": [
        f"/ui/coverage/enis/live?state=missing&q={c}1b"
        for c in ("US-EAST-", "us-east-", "Us-East-")
    ],
    "batches": ["/ui/batches/live"] * 10,
    "fleet": ["/ui/fleet/live"] * 10,
}
PAGES = {"coverage": "/ui/coverage", "ENI list": "/ui/coverage/enis"}
OUTPUT = RESULTS.parent / "dashboard.json"


def _policy(lab: dict[str, Any]) -> str:
    """Every lab ENI, split by its Role tag into three rules, to the NLB target."""
    rules = []
    for role in ("web", "db", "cache"):
        rules.append(
            f'[[rules]]\nname = "{role}"\ntag = ["mirrorq-lab=1", "Role={role}"]\n'
            f'target = "{lab["target_ids"]["nlb"]}"\nfilter = "{lab["filter_id"]}"\n'
        )
    return "\n".join(rules)


def _timing(answer: httpx.Response) -> float:
    """The server's own time for the answer (its Server-Timing `app`), in ms."""
    found = re.search(r"app;dur=([0-9.]+)", answer.headers.get("server-timing", ""))
    assert found is not None, answer.headers
    return float(found.group(1))


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
        "max": round(ordered[-1], 2),
    }


def _browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


# The page's first contentful paint (buffered: it happened before the script ran), its
# DOMContentLoaded and the bytes of the document.
PAINT = """
const done = arguments[arguments.length - 1];
const nav = performance.getEntriesByType("navigation")[0];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (e.name === "first-contentful-paint") {
      done([e.startTime, nav.domContentLoadedEventEnd, nav.transferSize]);
    }
  }
}).observe({type: "paint", buffered: true});
setTimeout(() => done([null, nav.domContentLoadedEventEnd, nav.transferSize]), 5000);
"""


def _first_paints(url: str) -> dict[str, Any]:
    """First contentful paint and DOM content loaded of each page, LOADS times, in ms."""
    browser = _browser()
    try:
        browser.get(url + "/ui/login")
        field = browser.find_element(By.ID, "token")
        field.send_keys(TOKEN)
        field.submit()
        time.sleep(1)
        found: dict[str, Any] = {}
        for name, path in PAGES.items():
            paints, loaded = [], []
            for _ in range(LOADS):
                browser.get(url + path)
                entry = browser.execute_async_script(PAINT)
                paints.append(float(entry[0]))
                loaded.append(float(entry[1]))
            found[name] = {
                "first_contentful_paint_ms": _summary(paints),
                "dom_content_loaded_ms": _summary(loaded),
                "bytes": int(entry[2]),
            }
        return found
    finally:
        browser.quit()


def _seed(url: str, enis: int) -> dict[str, Any]:
    """The lab, its client waiting as long as moto takes to describe 10,000 instances (the
    lab's own gives up after botocore's 60 s)."""
    from botocore.config import Config

    from emulator import lab

    def patient(endpoint_url: str, region: str = "us-east-1", service: str = "ec2") -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"total_max_attempts": 1}, read_timeout=900),
            **LAB_CREDENTIALS,
        )

    own, lab.lab_client = lab.lab_client, patient
    try:
        return seed_lab(url, enis)
    finally:
        lab.lab_client = own


def _time_updates_and_paints(url: str, http: httpx.Client) -> tuple[dict[str, Any], Any]:
    """Each live part's server time and bytes, rendered afresh and unchanged (304); then the
    pages' first paints in headless Chromium."""
    console.print(f"timing {UPDATES} updates of each live part ...")
    updates: dict[str, Any] = {}
    for name, paths in FRAGMENTS.items():
        fresh, fresh_wall, same, size, tag = [], [], [], 0, ""
        for path in paths:
            begun = time.perf_counter()
            answer = http.get(path)
            fresh_wall.append((time.perf_counter() - begun) * 1000)
            assert answer.status_code == 200, answer.text
            fresh.append(_timing(answer))
            size, tag = len(answer.content), answer.headers["etag"]
        for _ in range(UPDATES):  # the page's poll, its part unchanged
            answer = http.get(paths[-1], headers={"If-None-Match": tag})
            if answer.status_code == 304:
                same.append(_timing(answer))
        updates[name] = {
            "rendered_server_ms": _summary(fresh),
            "rendered_round_trip_ms": _summary(fresh_wall),
            "rendered_bytes": size,
            "renders_timed": len(fresh),
            "unchanged_304_server_ms": _summary(same) if same else None,
        }
    console.print("first paints in headless Chromium ...")
    paints = _first_paints(url)
    return updates, paints


def bench_dashboard(enis: int = ENIS) -> dict[str, Any]:
    console.print(f"seeding a lab of {enis:,} ENIs (minutes) ...")
    with EmulatorProcess() as emulator:
        started = time.monotonic()
        lab = _seed(emulator.url, enis)
        seeded_s = time.monotonic() - started
        console.print(f"seeded in {seeded_s:.0f} s")
        flush()
        policy = Path(tempfile.mkdtemp()) / "policy.toml"
        policy.write_text(_policy(lab))
        port = free_port()
        env = {
            **os.environ,
            "MIRRORQ_BROKER_URL": REDIS_URL,
            "MIRRORQ_EC2_ENDPOINT_URL": emulator.url,
            "MIRRORQ_REGION": "us-east-1",
            "MIRRORQ_API_TOKENS": TOKEN,
            "MIRRORQ_UI_COVERAGE_REFRESH_S": "3600",  # one EC2 read for the whole run
            "MIRRORQ_EC2_DESCRIBE_RATE": "1000",
            "MIRRORQ_READ_TIMEOUT_S": "600",  # moto describes 8,334 instances slowly
            "MIRRORQ_VISIBILITY_TIMEOUT_S": "1000",  # must exceed deadline + read timeout
            "MIRRORQ_EC2_DESCRIBE_BURST": "200",
            "AWS_ACCESS_KEY_ID": LAB_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LAB_CREDENTIALS["aws_secret_access_key"],
        }
        with ApiProcess(
            "bench-dashboard", env, "--port", str(port), "--policy", str(policy)
        ) as api:
            api.wait_ready()
            url = f"http://127.0.0.1:{port}"
            http = httpx.Client(base_url=url, timeout=600)
            assert http.post("/ui/login", data={"token": TOKEN}).status_code == 303
            console.print("computing the coverage of the policy once ...")
            started = time.monotonic()
            while 'data-total="matched"' not in http.get("/ui/coverage/live").text:
                time.sleep(0.2)
            coverage_s = time.monotonic() - started
            page = http.get("/ui/coverage/live").text
            found = re.search(r'data-total="matched">([0-9,]+)<', page)
            assert found is not None, page
            matched = int(found.group(1).replace(",", ""))
            updates, paints = _time_updates_and_paints(url, http)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores",
        "enis_in_policy": matched,
        "lab_seeded_s": round(seeded_s, 1),
        "coverage_read_once_s": round(coverage_s, 2),
        "update_every_s": 3,
        "updates": updates,
        "first_paint": paints,
    }


def synthetic_report(enis: int) -> dict[str, Any]:
    """A coverage report in `mirrorq coverage --json`'s shape: `enis` ENIs over three rules,
    most live, some dark, missing or unsupported, as the dashboard would be handed it."""
    states = ["live"] * 16 + ["dark", "missing", "missing", "unsupported"]
    reasons = {
        "dark": "instance_terminated",
        "missing": "session_limit",
        "unsupported": "unsupported_instance_type",
    }
    rules: list[dict[str, Any]] = []
    for r, name in enumerate(("web", "db", "cache")):
        entries = []
        for n in range(r, enis, 3):
            state = states[n % len(states)]
            entries.append(
                {
                    "eni": f"eni-{n:017x}",
                    "instance_id": f"i-{n // 2:017x}",
                    "zone": f"us-east-1{'abc'[n % 3]}",
                    "state": state,
                    "reason": reasons.get(state),
                    "target": f"tmt-{r:017x}",
                    "session_id": f"tms-{n:017x}" if state in ("live", "dark") else None,
                }
            )
        count = {k: sum(1 for e in entries if e["state"] == k) for k in reasons | {"live": 0}}
        eligible = len(entries) - count["unsupported"]
        rules.append(
            {
                "rule": name,
                "account_id": "123456789012",
                "region": "us-east-1",
                "matched": len(entries),
                "eligible": eligible,
                "live": count["live"],
                "dark": count["dark"],
                "missing": {"session_limit": count["missing"]},
                "unsupported": count["unsupported"],
                "percent": round(100 * count["live"] / eligible, 1),
                "enis": entries,
            }
        )
    totals = {
        k: sum(r[k] for r in rules) for k in ("matched", "eligible", "live", "dark", "unsupported")
    }
    totals["missing"] = sum(r["missing"]["session_limit"] for r in rules)
    totals["unwanted"] = 0
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "percent": round(100 * totals["live"] / totals["eligible"], 1),
        "totals": totals,
        "rules": rules,
        "unwanted": [],
        "notes": [],
        "complete": True,
    }


def bench_synthetic(enis: int = ENIS) -> dict[str, Any]:
    """The dashboard's own costs on a 10,000-ENI report, served by a real uvicorn (in this
    process), without the EC2 read behind it (moto takes more than ten minutes to describe
    10,000 ENIs on two shared cores: that read is EC2's cost, paid once per refresh)."""
    import threading

    import uvicorn
    from pydantic import SecretStr

    from config import Settings
    from mirrorq.api import create_app
    from mirrorq.api.ui.feeds import Feed

    flush()
    report = synthetic_report(enis)

    async def coverage() -> dict[str, Any]:
        return report

    app = create_app(Settings(broker_url=REDIS_URL, api_tokens=SecretStr(TOKEN)))
    app.state.dashboard.coverage = Feed(coverage, 3600, 2.0, "Coverage")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)
    try:
        http = httpx.Client(base_url=url, timeout=600)
        assert http.post("/ui/login", data={"token": TOKEN}).status_code == 303
        updates, paints = _time_updates_and_paints(url, http)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores",
        "enis_in_policy": report["totals"]["matched"],
        "report": "synthetic, in mirrorq coverage --json's shape (no EC2 read)",
        "update_every_s": 3,
        "updates": updates,
        "first_paint": paints,
    }


def main() -> None:
    found = (
        bench_synthetic()
        if os.environ.get("MIRRORQ_BENCH_UI_EMULATOR") != "1"
        else (bench_dashboard())
    )
    OUTPUT.write_text(json.dumps(found, indent=2) + "\n")
    console.print_json(json.dumps(found))
