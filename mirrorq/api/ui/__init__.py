"""The dashboard at /ui/: coverage, batches and the fleet, read-only, behind a login.

Server-side Jinja2 templates; each page's live part is a fragment the page's small script
(static/ui.js) fetches again every few seconds and swaps in, so the server renders every
figure one way and the browser needs no framework, build step or CDN. A login exchanges an
API token for a session cookie (session.py); every page and data route refuses a request
without one (pages redirect to the login form, fragments answer 401). No route here changes
anything but the browser's own cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from config import Settings
from mirrorq.api.ui import data
from mirrorq.api.ui.feeds import Feed, Snapshot
from mirrorq.api.ui.session import COOKIE, Sessions
from mirrorq.coverage import stored_view
from tasks.producer import Producer

__all__ = ["Dashboard", "ui"]

HERE = Path(__file__).parent
STATIC = {"ui.css": "text/css", "ui.js": "text/javascript"}
POLL_MS = 3000  # how often a page fetches its live part again
WAIT_S = 2.0  # a page answers within this, with the last good figures if Redis is slow
VIEWED_S = 600.0  # the fleet is sampled while a page was viewed within this
WORKER_PING_EVERY = 3  # samples between two pings of the workers (a ping waits 1 s)
LOGIN_BODY_MAX = 4096
RENDERED_KEPT = 64  # coverage pages kept rendered (per filter of the ENI list, one each)
HEADERS = {
    # Everything the pages use is the package's own: no inline script, no other origin.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

CoverageSource = Callable[[], Awaitable[dict[str, Any]]]


class LoginRequired(Exception):
    def __init__(self, page: bool) -> None:
        self.page = page


class Dashboard:
    """The dashboard's state in one API process: sessions, feeds, the fleet's samples."""

    def __init__(
        self,
        settings: Settings,
        producer: Producer,
        tokens: list[str],
        coverage: CoverageSource | None = None,
        has_policy: bool = False,
    ) -> None:
        self.settings, self.producer = settings, producer
        self.sessions = Sessions(tokens, settings.ui_session_ttl_s)
        self.has_policy = has_policy
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(ago=_ago, clock=_clock, num=_num, when=_when)
        self.batches_reader = data.BatchReader(producer)
        self.batches = Feed(self._read(self.batches_reader.overview), 1.0, WAIT_S, "Redis")
        self.last_pass = Feed(self._read(self._last_pass), 5.0, WAIT_S, "Redis")
        self.coverage: Feed[dict[str, Any]] | None = None
        if coverage is not None:
            self.coverage = Feed(coverage, settings.ui_coverage_refresh_s, WAIT_S, "Coverage")
        self.samples: deque[data.Sample] = deque(
            maxlen=max(2, int(settings.ui_history_s / settings.ui_sample_s))
        )
        self.sample_error: str | None = None
        self.sampled_at: float | None = None
        self._viewed = 0.0
        self._sampler: asyncio.Task[None] | None = None
        # Coverage pages rendered from one report, kept until it changes: every browser's
        # update within a refresh period is served without filtering or rendering again.
        self._rendered: OrderedDict[Hashable, str] = OrderedDict()

    async def render_once(
        self, key: Hashable, name: str, context: Callable[[], dict[str, Any]], **extra: Any
    ) -> Response:
        """`name` rendered with `context()` and `extra`, or the text rendered for `key`."""
        text = self._rendered.get(key)
        if text is None:

            def rendering() -> str:
                return self.templates.get_template(name).render(
                    poll_ms=POLL_MS, **context(), **extra
                )

            text = await run_in_threadpool(rendering)
            self._rendered[key] = text
            while len(self._rendered) > RENDERED_KEPT:
                self._rendered.popitem(last=False)
        else:
            self._rendered.move_to_end(key)
        return _timed(HTMLResponse(text))

    @staticmethod
    def _read(read: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
        async def in_thread() -> Any:
            return await run_in_threadpool(read)

        return in_thread

    def _last_pass(self) -> float | None:
        """When the latest reconcile pass read EC2 (the view it stored for the gauges)."""
        view = stored_view(self.producer.store.client)
        return None if view is None else data.iso_seconds(view.get("generated_at"))

    # --- the fleet's samples, taken while someone looks ---

    def viewed(self) -> None:
        self._viewed = time.monotonic()
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.create_task(self._sample_while_viewed())

    async def _sample_while_viewed(self) -> None:
        number = 0
        while time.monotonic() - self._viewed < VIEWED_S:
            ask = number % WORKER_PING_EVERY == 0
            number += 1
            taking = asyncio.ensure_future(run_in_threadpool(self._take_sample, ask))
            done, _ = await asyncio.wait({taking}, timeout=WAIT_S + (1.0 if ask else 0.0))
            if not done:  # Redis commands retry through an outage: say so while they do
                self.sample_error = "Redis does not answer"
            try:
                sample = await taking
            except Exception as error:  # Redis away: say so; the history keeps its gap
                self.sample_error = f"Redis does not answer ({type(error).__name__})"
            else:
                self.samples.append(sample)
                self.sample_error, self.sampled_at = None, sample.at
            await asyncio.sleep(self.settings.ui_sample_s)

    def _take_sample(self, ask_workers: bool) -> data.Sample:
        workers = data.count_workers(self.producer, 1.0) if ask_workers else None
        return data.read_sample(self.producer, workers)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self._sampler is not None:
                self._sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sampler

    # --- what is stale ---

    async def warnings(self, *extra: Snapshot[Any]) -> list[str]:
        """Why the figures may be out of date: Redis away, no reconcile pass for a while,
        coverage not computed lately."""
        found: list[str] = []
        if self.sample_error:
            since = f"; fleet figures from {_clock(self.sampled_at)}" if self.sampled_at else ""
            found.append(self.sample_error + since)
        last = await self.last_pass.get()
        for snapshot in (last, *extra):
            if snapshot.error and snapshot.error not in found:
                found.append(snapshot.error + _as_of(snapshot.read_at))
        if self.has_policy and last.error is None:
            limit = self.settings.ui_reconcile_stale_s
            if last.value is None:
                found.append("No reconcile pass has run: coverage is not being repaired")
            elif time.time() - last.value > limit:
                found.append(f"No reconcile pass for {_ago(last.value)} (more than {limit:.0f} s)")
        return found


def _as_of(at: float | None) -> str:
    return f"; showing figures from {_clock(at)}" if at else ""


def _clock(at: float | None) -> str:
    return "never" if at is None else time.strftime("%H:%M:%S UTC", time.gmtime(at))


def _ago(at: float | None) -> str:
    if at is None:
        return "never"
    seconds = max(0, int(time.time() - at))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _when(text: str | None) -> str:
    """An ISO time as `2026-12-06 14:07:31 UTC`."""
    at = data.iso_seconds(text)
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if digits:
        return f"{float(value):,.{digits}f}"
    return f"{int(value):,}"


# --- the routes ---

ui = APIRouter(prefix="/ui", include_in_schema=False)


def dashboard(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


Dash = Annotated[Dashboard, Depends(dashboard)]


# When the request's handling began (set by the session check, the first thing each route
# does), for the Server-Timing header of its answer (bench/dashboard.py reads it).
_started: contextvars.ContextVar[float] = contextvars.ContextVar("ui_started", default=0.0)


async def page_session(request: Request, d: Dash) -> None:
    _started.set(time.perf_counter())
    if d.sessions.check(request.cookies.get(COOKIE)) is None:
        raise LoginRequired(page=True)
    d.viewed()


async def data_session(request: Request, d: Dash) -> None:
    _started.set(time.perf_counter())
    if d.sessions.check(request.cookies.get(COOKIE)) is None:
        raise LoginRequired(page=False)
    d.viewed()


Page = Depends(page_session)
Live = Depends(data_session)


def install(app: FastAPI) -> None:
    """The router, and the answer to a request without a session."""
    app.include_router(ui)

    @app.exception_handler(LoginRequired)
    async def _login(_: Request, error: LoginRequired) -> Response:
        if error.page:
            return _secured(RedirectResponse("/ui/login", 303))
        return _secured(Response("login required", 401, media_type="text/plain"))


def _secured(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def render(d: Dashboard, name: str, code: int = 200, **context: Any) -> Response:
    text = d.templates.get_template(name).render(poll_ms=POLL_MS, **context)
    return _timed(HTMLResponse(text, code))


def _timed(response: Response) -> Response:
    """The answer with the dashboard's headers and its Server-Timing: the time since the
    request's session was checked (the start of its handling)."""
    _secured(response)
    if _started.get():
        took = (time.perf_counter() - _started.get()) * 1000
        response.headers["Server-Timing"] = f"app;dur={took:.2f}"
    return response


def unchanged_or(request: Request, response: Response) -> Response:
    """A live part the page already shows (its script sends the ETag it has) is answered
    304 with no body."""
    tag = '"' + hashlib.blake2b(bytes(response.body), digest_size=12).hexdigest() + '"'
    if request.headers.get("if-none-match") == tag:
        return _timed(Response(status_code=304, headers={"ETag": tag}))
    response.headers["ETag"] = tag
    return response


def _cross_site(request: Request) -> bool:
    """A form posted from another site: its browser says so (Sec-Fetch-Site), or, from one
    that does not, its Origin is not this host. SameSite=Strict already keeps the cookie off
    such a request; this also refuses a login forced on a victim's browser."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != request.headers.get("host")


def _secure(request: Request) -> bool:
    """Behind TLS: served over https, or a proxy says the browser's request was. Trusting the
    header here can only add `Secure` to the cookie, never take it away."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


@ui.get("")
async def ui_root() -> Response:
    return _secured(RedirectResponse("/ui/", 307))


@ui.get("/", dependencies=[Page])
async def home() -> Response:
    return _secured(RedirectResponse("/ui/coverage", 303))


@ui.get("/static/{name}")
async def static(name: str) -> Response:
    """The pages' script and style sheet: code, no data, so the login page may have them."""
    if name not in STATIC:
        return _secured(Response("not found", 404, media_type="text/plain"))
    response = Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name])
    response.headers.update({**HEADERS, "Cache-Control": "no-cache"})
    return response


@ui.get("/login")
async def login_form(request: Request, d: Dash) -> Response:
    if d.sessions.check(request.cookies.get(COOKIE)) is not None:
        return _secured(RedirectResponse("/ui/", 303))
    return render(d, "login.html", failed=False)


@ui.post("/login")
async def login(request: Request, d: Dash) -> Response:
    if _cross_site(request):
        return _secured(Response("cross-site form refused", 403, media_type="text/plain"))
    body = await request.body()
    fields = parse_qs(body[:LOGIN_BODY_MAX].decode("utf-8", "replace"), max_num_fields=4)
    cookie = d.sessions.login((fields.get("token") or [""])[0])
    if cookie is None:
        return render(d, "login.html", code=401, failed=True)
    response = _secured(RedirectResponse("/ui/", 303))
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=d.sessions.ttl_s,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@ui.post("/logout")
async def logout(request: Request) -> Response:
    if _cross_site(request):
        return _secured(Response("cross-site form refused", 403, media_type="text/plain"))
    response = _secured(RedirectResponse("/ui/login", 303))
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


# --- coverage ---


async def _coverage(d: Dashboard) -> tuple[dict[str, Any] | None, float | None, list[str]]:
    """The coverage report (None until computed), when it was read, and what is stale."""
    if d.coverage is None:
        return None, None, await d.warnings()
    snapshot = await d.coverage.get()
    return snapshot.value, snapshot.read_at, await d.warnings(snapshot)


def _coverage_context(d: Dashboard, report: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "view": "coverage",
        "available": d.coverage is not None,
        "coverage": data.coverage_view(report),
    }


async def _coverage_answer(d: Dashboard, name: str, **extra: Any) -> Response:
    report, read_at, warnings = await _coverage(d)
    key = (name, read_at, tuple(warnings), tuple(sorted(extra.items())))
    return await d.render_once(
        key, name, lambda: _coverage_context(d, report), warnings=warnings, **extra
    )


@ui.get("/coverage", dependencies=[Page])
async def coverage_page(d: Dash) -> Response:
    return await _coverage_answer(d, "coverage.html", live="/ui/coverage/live")


@ui.get("/coverage/live", dependencies=[Live])
async def coverage_live(request: Request, d: Dash) -> Response:
    return unchanged_or(request, await _coverage_answer(d, "coverage_live.html"))


EniFilter = dict[str, Any]


def eni_filter(
    rule: Annotated[int | None, Query(ge=0)] = None,
    state: Annotated[str | None, Query(pattern="^(live|dark|missing|unsupported)?$")] = None,
    reason: Annotated[str | None, Query(max_length=100)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> EniFilter:
    return {"rule": rule, "state": state or None, "reason": reason or None, "q": q or None}


def _enis_context(d: Dashboard, report: dict[str, Any] | None, chosen: EniFilter) -> dict[str, Any]:
    found = data.coverage_enis(
        report, chosen["rule"], chosen["state"], chosen["reason"], chosen["q"]
    )
    return {
        "view": "coverage",
        "available": d.coverage is not None,
        "generated_at": (report or {}).get("generated_at"),
        "chosen": chosen,
        "rules": [r["rule"] for r in (report or {}).get("rules", [])],
        "states": data.STATES,
        **found,
    }


async def _enis_answer(d: Dashboard, name: str, chosen: EniFilter, **extra: Any) -> Response:
    report, read_at, warnings = await _coverage(d)
    key = (name, read_at, tuple(warnings), tuple(sorted(chosen.items())), tuple(extra.items()))
    return await d.render_once(
        key, name, lambda: _enis_context(d, report, chosen), warnings=warnings, **extra
    )


@ui.get("/coverage/enis", dependencies=[Page])
async def enis_page(
    request: Request, d: Dash, chosen: Annotated[EniFilter, Depends(eni_filter)]
) -> Response:
    live = "/ui/coverage/enis/live" + (f"?{request.url.query}" if request.url.query else "")
    return await _enis_answer(d, "enis.html", chosen, live=live)


@ui.get("/coverage/enis/live", dependencies=[Live])
async def enis_live(
    request: Request, d: Dash, chosen: Annotated[EniFilter, Depends(eni_filter)]
) -> Response:
    return unchanged_or(request, await _enis_answer(d, "enis_live.html", chosen))


# --- batches ---


async def _batches_context(d: Dashboard) -> dict[str, Any]:
    snapshot = await d.batches.get()
    return {
        "view": "batches",
        "warnings": await d.warnings(snapshot),
        "batches": snapshot.value or {"running": [], "recent": []},
    }


@ui.get("/batches", dependencies=[Page])
async def batches_page(d: Dash) -> Response:
    return render(d, "batches.html", **await _batches_context(d), live="/ui/batches/live")


@ui.get("/batches/live", dependencies=[Live])
async def batches_live(request: Request, d: Dash) -> Response:
    return unchanged_or(request, render(d, "batches_live.html", **await _batches_context(d)))


async def _batch_context(
    d: Dashboard, batch_id: str, page: int, status: str | None
) -> dict[str, Any]:
    warnings = await d.warnings()
    try:
        found = await asyncio.wait_for(
            run_in_threadpool(d.batches_reader.jobs, batch_id, page, status), WAIT_S * 2
        )
    except Exception as error:  # Redis away: the page says so and tries again
        warnings.append(f"Redis does not answer ({type(error).__name__})")
        found = None
    return {
        "view": "batches",
        "warnings": warnings,
        "batch_id": batch_id,
        "found": found,
        "page": page,
        "status": status,
    }


JobsPage = Annotated[int, Query(ge=1, le=100_000)]
StatusQ = Annotated[str | None, Query(pattern="^[a-z_]{0,32}$")]


@ui.get("/batches/{batch_id}", dependencies=[Page])
async def batch_page(
    request: Request, d: Dash, batch_id: str, page: JobsPage = 1, status: StatusQ = None
) -> Response:
    context = await _batch_context(d, batch_id, page, status or None)
    live = f"/ui/batches/{batch_id}/live" + (f"?{request.url.query}" if request.url.query else "")
    code = 404 if context["found"] is None and not context["warnings"] else 200
    return render(d, "batch.html", code=code, **context, live=live)


@ui.get("/batches/{batch_id}/live", dependencies=[Live])
async def batch_live(
    request: Request, d: Dash, batch_id: str, page: JobsPage = 1, status: StatusQ = None
) -> Response:
    context = await _batch_context(d, batch_id, page, status or None)
    return unchanged_or(request, render(d, "batch_live.html", **context))


@ui.get("/jobs/{job_id}", dependencies=[Page])
async def job_page(d: Dash, job_id: str) -> Response:
    import json

    record = await run_in_threadpool(d.producer.result, job_id)
    text = None if record is None else json.dumps(record, indent=2, sort_keys=True)
    return render(
        d,
        "job.html",
        code=200 if record else 404,
        view="batches",
        warnings=await d.warnings(),
        job_id=job_id,
        record=record,
        text=text,
    )


# --- the fleet ---


async def _fleet_context(d: Dashboard) -> dict[str, Any]:
    return {
        "view": "fleet",
        "warnings": await d.warnings(),
        "fleet": data.fleet_view(list(d.samples)),
        "sample_s": d.settings.ui_sample_s,
    }


@ui.get("/fleet", dependencies=[Page])
async def fleet_page(d: Dash) -> Response:
    return render(d, "fleet.html", **await _fleet_context(d), live="/ui/fleet/live")


@ui.get("/fleet/live", dependencies=[Live])
async def fleet_live(request: Request, d: Dash) -> Response:
    return unchanged_or(request, render(d, "fleet_live.html", **await _fleet_context(d)))
