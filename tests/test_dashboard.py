"""The dashboard (/ui/) in a real headless Chromium (Debian's, driven through its
chromedriver by Selenium) against a real `mirrorq api`, real workers, Redis and the emulator:
log in; coverage as `mirrorq coverage --json` says it; a sensor's sessions turning dark and
live again on the page without a reload; a 2,000-job batch's bar; every route refused
without a session; the token in no URL, page or log. Screenshots at 1280 and 390 px go to
the run's temporary directory (`screenshots/`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from emulator.lab import LAB_IMAGE_ID, lab_client, seed_lab
from emulator.zoned_lab import launch, seed_zoned_lab
from mirrorq.processes import MIRRORQ, ApiProcess, EmulatorProcess, WorkerProcess, free_port
from tests.forkserver import run_mirrorq
from tests.helpers import wait_until
from tests.redis_server import RedisServer

TOKEN = "dashboard-token-7c1e55aa"  # noqa: S105 - the tests' own
OTHER_TOKEN = "dashboard-token-second-9f"  # noqa: S105
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WIDTHS = (1280, 390)
# The dashboard's timings shortened so that a test sees its updates within seconds.
UI_FAST = {
    "MIRRORQ_UI_COVERAGE_REFRESH_S": "1",
    "MIRRORQ_UI_SAMPLE_S": "1",
}
PAGES = [
    "/ui/",
    "/ui/coverage",
    "/ui/coverage/enis",
    "/ui/coverage/enis?state=dark&q=eni",
    "/ui/batches",
    "/ui/batches/some-batch",
    "/ui/jobs/some-job",
    "/ui/fleet",
]
LIVE = [
    "/ui/coverage/live",
    "/ui/coverage/enis/live",
    "/ui/batches/live",
    "/ui/batches/some-batch/live",
    "/ui/fleet/live",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for every test of the module: Debian's browser and driver, so
    Selenium Manager has nothing to find or download."""
    if shutil.which(CHROMEDRIVER) is None:
        pytest.fail("chromium-driver is not installed: run ./scripts/bootstrap.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Dashboard:
    """A real `mirrorq api` and the browser pointed at it; every URL the browser was sent to
    kept, to check the token is in none."""

    def __init__(self, process: ApiProcess, url: str, browser: webdriver.Chrome) -> None:
        self.process, self.url, self.browser = process, url, browser
        self.visited: list[str] = []
        self.sources: list[str] = []

    def open(self, path: str) -> None:
        self.browser.get(self.url + path)
        self.visited.append(self.browser.current_url)

    def seen(self) -> None:
        """Keep the page as it is now (its URL and source) for the token check."""
        self.visited.append(self.browser.current_url)
        self.sources.append(self.browser.page_source)

    def login(self, token: str = TOKEN) -> None:
        self.browser.delete_all_cookies()
        self.open("/ui/login")
        field = self.browser.find_element(By.ID, "token")
        field.send_keys(token)
        field.submit()
        wait_until(lambda: "/ui/login" not in self.browser.current_url, 10, 0.1, "the login")
        self.seen()

    def read(self, css: str, what: str = "innerText") -> Any:
        """An element's property read in one script (the live part is swapped in whole every
        few seconds, so an element found in one call may be gone by the next); None if no
        element matches."""
        return self.browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e[arguments[1]] : null;",
            css,
            what,
        )

    def text(self, css: str) -> str:
        return str(self.read(css) or "").strip()

    def count(self, css: str) -> int:
        found = self.browser.execute_script(
            "return document.querySelectorAll(arguments[0]).length;", css
        )
        return int(found)

    def mark(self) -> None:
        """A value the page keeps until it is loaded again: its absence means a reload."""
        self.browser.execute_script("window.__notReloaded = true;")

    def not_reloaded(self) -> bool:
        return bool(self.browser.execute_script("return window.__notReloaded === true;"))

    def screenshot(self, folder: Path, name: str) -> list[Path]:
        taken = []
        for width in WIDTHS:
            self.browser.set_window_size(width, 900)
            height = self.browser.execute_script("return document.documentElement.scrollHeight")
            self.browser.set_window_size(width, min(max(int(height), 600), 4000))
            path = folder / f"{name}-{width}.png"
            self.browser.save_screenshot(str(path))
            taken.append(path)
        self.browser.set_window_size(1280, 900)
        return taken


def start_api(env: dict[str, str], *args: str) -> tuple[ApiProcess, str]:
    port = free_port()
    process = ApiProcess(
        f"ui-api-{uuid.uuid4().hex[:6]}",
        {**env, **UI_FAST, "MIRRORQ_API_TOKENS": f"{TOKEN},{OTHER_TOKEN}"},
        "--port",
        str(port),
        *args,
    )
    process.wait_ready()
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's screenshots: `screenshots/` in pytest's base temporary directory."""
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


def test_without_a_session_every_route_is_refused_and_a_session_is_a_signed_cookie(
    env: dict[str, str], browser: webdriver.Chrome
) -> None:
    process, url = start_api(env)
    try:
        bare = httpx.Client(base_url=url, follow_redirects=False)
        forged = "eyJzaWQiOiJ4IiwiZnAiOiJ5In0.aaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbb"
        for cookie in (None, forged, TOKEN, ""):
            cookies = {} if cookie is None else {"mirrorq_ui": cookie}
            client = httpx.Client(base_url=url, follow_redirects=False, cookies=cookies)
            for path in PAGES:
                answer = client.get(path)
                assert answer.status_code == 303, (path, cookie)
                assert answer.headers["location"] == "/ui/login", path
            for path in LIVE:
                assert client.get(path).status_code == 401, (path, cookie)
        # The API's bearer token opens /v1, never the dashboard.
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert bare.get("/ui/coverage/live", headers=headers).status_code == 401
        assert bare.get("/ui").status_code == 307
        # The login form, its script and style sheet are all one sees without a session.
        assert bare.get("/ui/login").status_code == 200
        assert bare.get("/ui/static/ui.js").status_code == 200
        assert bare.get("/ui/static/nope.js").status_code == 404
        wrong = bare.post("/ui/login", data={"token": TOKEN + "x"})
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        assert TOKEN not in wrong.text
        # A login posted from another site is refused (SameSite=Strict keeps the cookie off
        # cross-site requests already; this refuses a session forced on someone's browser).
        cross = bare.post(
            "/ui/login", data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert cross.status_code == 403
        assert "set-cookie" not in cross.headers
        evil = bare.post(
            "/ui/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 403
        # The session: HttpOnly, SameSite=Strict, only under /ui, Secure behind TLS, no token.
        good = bare.post("/ui/login", data={"token": OTHER_TOKEN})
        assert good.status_code == 303
        cookie_header = good.headers["set-cookie"]
        assert re.search(r"(?i)httponly", cookie_header)
        assert re.search(r"(?i)samesite=strict", cookie_header)
        assert "Path=/ui" in cookie_header
        assert "secure" not in cookie_header.lower()
        session = good.cookies["mirrorq_ui"]
        assert OTHER_TOKEN not in session
        behind_tls = bare.post(
            "/ui/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"}
        )
        assert "secure" in behind_tls.headers["set-cookie"].lower()
        signed_in = httpx.Client(base_url=url, cookies={"mirrorq_ui": session})
        for path in [*LIVE[:3], "/ui/fleet/live"]:
            assert signed_in.get(path).status_code == 200, path
        tampered = session[:-2] + ("A" if session[-2] != "A" else "B") + session[-1]
        forger = httpx.Client(base_url=url, cookies={"mirrorq_ui": tampered})
        assert forger.get("/ui/fleet/live").status_code == 401
        # Nothing in the dashboard changes anything: no route takes another method.
        for path in PAGES[1:] + LIVE:
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                assert signed_in.request(method, path).status_code in (404, 405), (method, path)
        # Logging out clears the cookie in the browser.
        out = signed_in.post("/ui/logout", follow_redirects=False)
        assert out.status_code == 303
        assert (
            'mirrorq_ui=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
        )

        # In the browser: a page without a session is the login form; after logging in the
        # views open; after logging out they are refused again.
        ui = Dashboard(process, url, browser)
        browser.delete_all_cookies()
        ui.open("/ui/fleet")
        assert browser.current_url.endswith("/ui/login")
        ui.login()
        ui.open("/ui/fleet")
        assert browser.current_url.endswith("/ui/fleet")
        browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
        wait_until(lambda: browser.current_url.endswith("/ui/login"), 10, 0.1, "the logout")
        ui.open("/ui/batches")
        assert browser.current_url.endswith("/ui/login")
    finally:
        process.stop()
    log = process.log_path.read_text()
    assert TOKEN not in log
    assert OTHER_TOKEN not in log
    assert "GET /ui/fleet/live" in log  # the access log is on: the check above means something


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_mirrorq([*MIRRORQ, *args], env=env, check=False, timeout=300)


def batch_bar_advances(ui: Dashboard, lab: dict[str, Any], screenshots: Path) -> None:
    """A 2,000-job batch submitted through the API: its page's bar advances as the workers
    run it, without a reload, and ends at the batch's final counts."""
    jobs = [
        {
            "NetworkInterfaceId": eni,
            "TrafficMirrorTargetId": lab["target_ids"]["nlb"],
            "TrafficMirrorFilterId": lab["filter_id"],
            "SessionNumber": "auto",
        }
        for eni in lab["eni_ids"]
    ]
    api = httpx.Client(base_url=ui.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    accepted = api.post("/v1/batches", content="\n".join(json.dumps(j) for j in jobs))
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    ui.open("/ui/batches")
    card = f'[data-batch="{batch_id}"]'
    wait_until(lambda: ui.count(card) > 0, 10, 0.2, "the card")
    ui.open(f"/ui/batches/{batch_id}")
    ui.mark()
    bar = f"{card} progress"
    assert ui.read(bar, "value") < 2000
    assert ui.count("table.jobs tbody tr") == 100
    values: list[int] = []

    def finished() -> bool:
        value = ui.read(bar, "value")
        if value is not None and (not values or value != values[-1]):
            values.append(int(value))
        return bool(values) and values[-1] == 2000

    wait_until(finished, 240, 0.2, "the bar to reach 2,000")
    assert ui.not_reloaded()
    assert values == sorted(values), values  # it only ever advances
    assert len([v for v in values if 0 < v < 2000]) >= 2, values  # seen on its way
    wait_until(lambda: "finished" in ui.text(f"{card} > p:nth-of-type(1)"), 10, 0.2, "the end")
    status = api.get(f"/v1/batches/{batch_id}").json()
    assert status["counts"] == {"created": 2000}
    assert ui.text(f"{card} .counts") == "created 2,000"
    assert ui.text(f"{card} strong") == "2,000 / 2,000"
    ui.seen()
    ui.screenshot(screenshots, "batch")
    ui.open("/ui/batches")
    wait_until(
        lambda: "created 2,000" in ui.text(f'tr[data-batch="{batch_id}"]'), 10, 0.2, "recent"
    )
    ui.seen()
    ui.screenshot(screenshots, "batches")


def policy(lab: dict[str, Any]) -> str:
    """prod-web: Env=prod in the lab's VPC to either sensor, the least loaded; db: Role=db to
    the NLB (the VPC named, so a batch's lab elsewhere in the emulator is none of its)."""
    a, b = lab["sensors"].values()
    return f"""\
[[rules]]
name = "prod-web"
vpc = ["{lab["vpc_id"]}"]
tag = ["Env=prod"]
targets = ["{a}", "{b}"]
choose = "least-loaded"
filter = "{lab["f_web"]}"

[[rules]]
name = "db"
vpc = ["{lab["vpc_id"]}"]
tag = ["Role=db"]
target = "{lab["nlb"]}"
filter = "{lab["f_db"]}"
"""


def number(text: str) -> int:
    return int(text.replace(",", ""))


def page_coverage(ui: Dashboard) -> dict[str, Any]:
    """The coverage figures the Coverage page shows, in `mirrorq coverage --json`'s shape."""
    found: dict[str, Any] = ui.browser.execute_script(
        """
        const n = (e) => Number(e.innerText.replace(/,/g, ""));
        const totals = {};
        document.querySelectorAll("dd[data-total]").forEach((e) => {
          totals[e.dataset.total] = n(e);
        });
        const rules = [...document.querySelectorAll("tr[data-rule]")].map((row) => {
          const cell = (name) => row.querySelector(`[data-n="${name}"]`);
          const missing = {};
          row.querySelectorAll("[data-reason]").forEach((e) => {
            missing[e.dataset.reason] = n(e);
          });
          return {
            rule: row.dataset.rule, matched: n(cell("matched")), live: n(cell("live")),
            dark: n(cell("dark")), missing: missing, unsupported: n(cell("unsupported")),
            percent: Number(cell("percent").innerText),
          };
        });
        const percent = document.querySelector('[data-total="percent"]');
        return {percent: percent ? Number(percent.innerText) : null, totals, rules};
        """
    )
    return found


def cli_coverage(env: dict[str, str], policy_path: Path) -> dict[str, Any]:
    """`mirrorq coverage --json`, in the page's shape."""
    done = run(env, "coverage", "--policy", str(policy_path), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    return {
        "percent": report["percent"],
        "totals": report["totals"],
        "rules": [
            {
                "rule": r["rule"],
                "matched": r["matched"],
                "live": r["live"],
                "dark": r["dark"],
                "missing": r["missing"],
                "unsupported": r["unsupported"],
                "percent": r["percent"],
            }
            for r in report["rules"]
        ],
    }


def same_as_cli(ui: Dashboard, env: dict[str, str], policy_path: Path) -> None:
    """The page comes to show what `mirrorq coverage --json` says (the page's figures are
    at most a few seconds old: the CLI is asked again until both agree on a state)."""
    seen: dict[str, Any] = {}

    def agree() -> bool:
        seen["cli"], seen["page"] = cli_coverage(env, policy_path), page_coverage(ui)
        return bool(seen["cli"] == seen["page"])

    try:
        wait_until(agree, 60, 1.0, "the page to show the CLI's coverage")
    except AssertionError:
        raise AssertionError(f"page {seen.get('page')} != CLI {seen.get('cli')}") from None


def eni_states(ui: Dashboard, enis: set[str]) -> dict[str, str]:
    states: dict[str, str] = ui.browser.execute_script(
        "const s = {}; document.querySelectorAll('tr[data-eni]')"
        ".forEach((r) => { s[r.dataset.eni] = r.dataset.state; }); return s;"
    )
    return {eni: state for eni, state in states.items() if eni in enis}


@pytest.mark.timeout(600)  # a 2,000-job batch besides the coverage scenario, on 2 shared cores
def test_the_dashboard_shows_coverage_batches_and_the_fleet_live(
    env: dict[str, str],
    emulator: EmulatorProcess,
    browser: webdriver.Chrome,
    start_worker: Callable[..., WorkerProcess],
    screenshots: Path,
    tmp_path: Path,
) -> None:
    lab = seed_zoned_lab(emulator.url)
    enis = launch(emulator.url, lab, 24)
    # The batch's 2,000 ENIs (another VPC, none of the policy's) seeded meanwhile.
    seeding = ThreadPoolExecutor(1)
    batch_lab = seeding.submit(seed_lab, emulator.url, 2000)
    ec2 = lab_client(emulator.url)
    # One source that cannot be mirrored: listed, not counted.
    ec2.run_instances(
        ImageId=LAB_IMAGE_ID,
        MinCount=1,
        MaxCount=1,
        InstanceType="t2.micro",
        SubnetId=lab["subnets"][lab["zones"][0]],
        TagSpecifications=[
            {"ResourceType": "network-interface", "Tags": [{"Key": "Env", "Value": "prod"}]}
        ],
    )
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(policy(lab))
    process, url = start_api(env, "--policy", str(policy_path))
    ui = Dashboard(process, url, browser)
    workers = [start_worker()]
    try:
        ui.login()
        # No pass yet: nothing is mirrored, and the page says no reconcile has run.
        ui.open("/ui/coverage")
        wait_until(lambda: ui.count("tr[data-rule]") == 2, 30, 0.2, "the coverage table")
        assert "No reconcile pass has run" in ui.text("#live")
        same_as_cli(ui, env, policy_path)
        assert page_coverage(ui)["totals"]["live"] == 0
        done = run(env, "reconcile", "--policy", str(policy_path), "--wait")
        assert done.returncode == 0, done.stderr
        same_as_cli(ui, env, policy_path)
        shown = page_coverage(ui)
        assert shown["percent"] == 100.0
        assert shown["totals"]["unsupported"] == 1
        wait_until(lambda: ui.count("[data-stale]") == 0, 20, 0.2, "the stale banner to go")
        ui.seen()
        ui.screenshot(screenshots, "coverage")

        # A sensor dies: its sessions turn dark on the page, then live after a reconcile,
        # with no reload.
        ui.open("/ui/coverage/enis?rule=0")
        ui.mark()
        sensor_a = next(iter(lab["sensors"].values()))
        on_a = {
            s["NetworkInterfaceId"]
            for s in ec2.describe_traffic_mirror_sessions()["TrafficMirrorSessions"]
            if s["TrafficMirrorTargetId"] == sensor_a
        }
        assert on_a
        assert on_a <= set(enis)
        wait_until(lambda: set(eni_states(ui, on_a).values()) == {"live"}, 30, 0.2, "live")
        target = ec2.describe_traffic_mirror_targets(TrafficMirrorTargetIds=[sensor_a])
        sensor_eni = target["TrafficMirrorTargets"][0]["NetworkInterfaceId"]
        attachment = ec2.describe_network_interfaces(NetworkInterfaceIds=[sensor_eni])
        instance = attachment["NetworkInterfaces"][0]["Attachment"]["InstanceId"]
        ec2.terminate_instances(InstanceIds=[instance])
        wait_until(lambda: set(eni_states(ui, on_a).values()) == {"dark"}, 60, 0.3, "dark sessions")
        assert ui.not_reloaded()
        ui.seen()
        ui.screenshot(screenshots, "enis-dark")
        ui.open("/ui/coverage")
        same_as_cli(ui, env, policy_path)
        assert page_coverage(ui)["totals"]["dark"] == len(on_a)
        ui.seen()
        ui.screenshot(screenshots, "coverage-dark")
        ui.open("/ui/coverage/enis?rule=0")
        ui.mark()
        wait_until(lambda: set(eni_states(ui, on_a).values()) == {"dark"}, 30, 0.3, "dark")
        done = run(env, "reconcile", "--policy", str(policy_path), "--wait")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: set(eni_states(ui, on_a).values()) == {"live"}, 60, 0.3, "live again")
        assert ui.not_reloaded()
        ui.open("/ui/coverage")
        same_as_cli(ui, env, policy_path)
        assert page_coverage(ui)["totals"]["dark"] == 0

        workers.append(start_worker())
        batch_bar_advances(ui, batch_lab.result(timeout=120), screenshots)
        ui.open("/ui/fleet")
        wait_until(lambda: ui.text('[data-fleet="workers"]') == "2", 20, 0.2, "two workers")
        assert ui.count("figure.chart polyline") >= 3
        ui.seen()
        ui.screenshot(screenshots, "fleet")
    finally:
        seeding.shutdown(wait=True)
        process.stop()
    # The token is in no URL the browser went to, no page it was shown, no log line.
    assert ui.visited
    assert all(TOKEN not in u and OTHER_TOKEN not in u for u in ui.visited)
    assert all(TOKEN not in page for page in ui.sources)
    for log in [process.log_path, *(w.log_path for w in workers)]:
        assert TOKEN not in log.read_text(), log
    assert all(TOKEN not in c["value"] for c in browser.get_cookies())


def test_the_pages_say_their_figures_are_stale_while_redis_is_away(
    env: dict[str, str], private_redis: RedisServer
) -> None:
    """Redis stops: every view still answers within a few seconds, with its last figures and
    a banner saying they are stale; once Redis is back the banner goes."""
    url_of_redis = private_redis.url(0)
    process, url = start_api(
        {**env, "MIRRORQ_BROKER_URL": url_of_redis, "MIRRORQ_REDIS_RETRY_S": "30"}
    )
    try:
        signed_in = httpx.Client(base_url=url, timeout=30)
        assert signed_in.post("/ui/login", data={"token": TOKEN}).status_code == 303
        views = ["/ui/batches/live", "/ui/fleet/live"]
        wait_until(
            lambda: "Workers alive" in signed_in.get("/ui/fleet/live").text, 20, 0.5, "a sample"
        )
        for path in views:
            assert "Stale" not in signed_in.get(path).text, path
        private_redis.stop()

        def stale() -> bool:
            return all("Stale: Redis does not answer" in signed_in.get(p).text for p in views)

        wait_until(stale, 30, 0.5, "the stale banners")
        for path in views:
            started = time.monotonic()
            answer = signed_in.get(path)
            assert answer.status_code == 200
            assert time.monotonic() - started < 10  # not held for MIRRORQ_REDIS_RETRY_S
        assert "Workers alive" in signed_in.get("/ui/fleet/live").text  # the last figures
        private_redis.start()
        wait_until(lambda: not any("Stale" in signed_in.get(p).text for p in views), 60, 0.5)
    finally:
        process.stop()
