"""The dashboard and the progress API: a Starlette app over the run store.

Views and the JSON API are open to whoever can reach the server (it binds to loopback unless
told otherwise). Actions (retry, cancel, clean) need ``ETL_DASHBOARD_TOKEN``: API clients send
it as ``Authorization: Bearer TOKEN``; a browser signs in with it once and gets a session cookie
(HttpOnly, SameSite=Strict) and every form carries a CSRF token tied to that session. Without a
token configured, or with ``read_only``, there are no actions at all.

Progress is pushed as server-sent events: ``/api/runs/{id}/events`` for one run,
``/api/events`` for all of them. Each stream is polled from the store once every half second
whatever the number of its subscribers (:class:`~etl.web.feeds.Feed`), so a browser holds no connection to
Redis and any number of pages can watch.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from etl import api
from etl.errors import UsageError
from etl.progress import CHUNK_STATES, RunProgress
from etl.store import ChunkRecord, RunRecord
from etl.store import iso_time as _iso
from etl.units import format_duration
from etl.web.feeds import KEEP_ALIVE, Feed, event, sse
from etl.web.openapi import openapi_schema

__all__ = ["DashboardSettings", "create_app"]

HERE = Path(__file__).parent
STATES = ("waiting", "active", "completed", "failed", "cancelled")
PAGE_SIZE = 25
POLL_SECONDS = 0.5
LOG_LINES = 200
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class DashboardSettings:
    """How the dashboard serves.

    Attributes:
        token: ``ETL_DASHBOARD_TOKEN``: actions need it; ``None`` means no actions.
        read_only: serve views only, whatever the token.
        configs: a directory of job files whose schedules to show.
        cors_origins: origins whose pages may call the JSON API and event streams.
        poll: how often event streams look at the store.
    """

    token: str | None = None
    read_only: bool = False
    configs: str | None = None
    cors_origins: tuple[str, ...] = ()
    poll: float = POLL_SECONDS

    @property
    def actions(self) -> bool:
        return bool(self.token) and not self.read_only


def create_app(queue: Any, settings: DashboardSettings | None = None) -> Starlette:
    """The ASGI app over ``queue`` (its run store; actions send its messages)."""
    settings = settings or DashboardSettings()
    web = _Dashboard(queue, settings)
    routes = [
        Route("/", web.index),
        Route("/runs/{run_id}", web.run_page),
        Route("/login", web.login, methods=["GET", "POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/runs/{run_id}/retry", web.form_action("retry"), methods=["POST"]),
        Route("/runs/{run_id}/cancel", web.form_action("cancel"), methods=["POST"]),
        Route("/clean", web.form_clean, methods=["POST"]),
        Route("/api/summary", web.api_summary),
        Route("/api/runs", web.api_runs),
        Route("/api/runs/{run_id}", web.api_run),
        Route("/api/runs/{run_id}/chunks", web.api_chunks),
        Route("/api/runs/{run_id}/log", web.api_log),
        Route("/api/runs/{run_id}/events", web.api_run_events),
        Route("/api/events", web.api_events),
        Route("/api/workers", web.api_workers),
        Route("/api/throughput", web.api_throughput),
        Route("/api/schedule", web.api_schedule),
        Route("/api/runs/{run_id}/retry", web.api_action("retry"), methods=["POST"]),
        Route("/api/runs/{run_id}/cancel", web.api_action("cancel"), methods=["POST"]),
        Route("/api/clean", web.api_clean, methods=["POST"]),
        Route("/api/openapi.json", web.openapi),
        Route("/metrics", web.metrics),
        Route("/healthz", web.healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET"],
                allow_headers=["Authorization", "Last-Event-ID"],
            )
        )
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: web.http_error})


def _sign(token: str, what: str) -> str:
    return hmac.new(token.encode(), what.encode(), hashlib.sha256).hexdigest()


class _Dashboard:
    def __init__(self, queue: Any, settings: DashboardSettings) -> None:
        self.queue = queue
        self.store = queue.store
        self.settings = settings
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.templates.env.globals.update(format_duration=format_duration, states=STATES, chunk_states=CHUNK_STATES)
        self.templates.env.filters["when"] = _when
        self._throughput: tuple[float, list[dict[str, Any]]] | None = None
        self._feeds: dict[str, Feed] = {}

    # -- helpers -----------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call (blocking I/O) in a worker thread."""
        return await to_thread.run_sync(lambda: fn(*args, **kwargs))

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = self._session(request)
        context.update(
            settings=self.settings,
            signed_in=session is not None,
            csrf=_sign(self.settings.token, f"csrf:{session}") if session and self.settings.token else "",
            now=time.time(),
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/") or request.url.path == "/metrics":
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return self.render(request, "error.html", status=exc.status_code, message=exc.detail)

    async def _run(self, run_id: str) -> RunRecord:
        run = await self.call(self.store.get_run, run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id!r} (it may have been cleaned)")
        return run

    # -- authentication ------------------------------------------------------------------------

    def _session(self, request: Request) -> str | None:
        """The browser's session (a value signed with the token), if it signed in."""
        token = self.settings.token
        cookie = request.cookies.get("etl_session", "")
        if not token or "." not in cookie:
            return None
        session, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, _sign(token, f"session:{session}")):
            return None
        issued, _, _ = session.partition("-")
        if not issued.isdigit() or time.time() - int(issued) > SESSION_SECONDS:
            return None  # signed in too long ago: sign in again
        return session

    def _bearer(self, request: Request) -> bool:
        token = self.settings.token
        header = request.headers.get("authorization", "")
        return bool(token) and header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), token or "")

    def _may_act(self) -> None:
        if self.settings.read_only:
            raise HTTPException(403, "this dashboard is read-only (--read-only)")
        if not self.settings.token:
            raise HTTPException(403, "actions are off: start the dashboard with ETL_DASHBOARD_TOKEN set")

    async def _check_form(self, request: Request) -> FormData:
        """A form post from a signed-in browser, with a valid CSRF token and no foreign Origin."""
        self._may_act()
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise HTTPException(403, f"a form posted from another site ({origin}) is refused")
        session = self._session(request)
        if session is None:
            raise HTTPException(401, "sign in with the dashboard token first")
        form = await request.form()
        expected = _sign(self.settings.token or "", f"csrf:{session}")
        if not hmac.compare_digest(str(form.get("csrf", "")), expected):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        return form

    def _check_bearer(self, request: Request) -> None:
        self._may_act()
        if not self._bearer(request):
            raise HTTPException(401, "send the dashboard token: Authorization: Bearer TOKEN")

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.render(request, "login.html")
        self._may_act()
        form = await request.form()
        given = str(form.get("token", ""))
        if not hmac.compare_digest(given, self.settings.token or ""):
            return self.render(request, "login.html", status=401, message="That is not the dashboard's token.")
        session = f"{int(time.time())}-{secrets.token_hex(16)}"
        target = str(form.get("next") or "/")
        if not target.startswith("/") or target.startswith(("//", "/\\")):
            target = "/"  # only a page of this dashboard: never a redirect to another site
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            "etl_session",
            f"{session}.{_sign(self.settings.token or '', f'session:{session}')}",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=SESSION_SECONDS,
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie("etl_session")
        return response

    # -- actions ---------------------------------------------------------------------------

    async def _act(self, action: str, run_id: str) -> dict[str, Any]:
        await self._run(run_id)
        try:
            if action == "retry":
                chunks = await self.call(api.retry, run_id, self.queue)
                return {"run": run_id, "action": "retry", "chunks": chunks}
            run = await self.call(api.cancel, run_id, self.queue)
            return {"run": run_id, "action": "cancel", "state": run.state}
        except UsageError as exc:
            raise HTTPException(409, str(exc)) from None

    def form_action(self, action: str) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            await self._check_form(request)
            run_id = request.path_params["run_id"]
            await self._act(action, run_id)
            return RedirectResponse(f"/runs/{run_id}", status_code=303)

        return handle

    def api_action(self, action: str) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            self._check_bearer(request)
            return JSONResponse(await self._act(action, request.path_params["run_id"]))

        return handle

    async def _clean(self, state: str, older_than: str) -> int:
        from etl.units import parse_duration

        try:
            seconds = parse_duration(older_than or 0)
            return await self.call(api.clean, state, seconds, self.queue)
        except (ValueError, UsageError) as exc:
            raise HTTPException(400, str(exc)) from None

    async def form_clean(self, request: Request) -> Response:
        form = await self._check_form(request)
        await self._clean(str(form.get("state", "")), str(form.get("older_than", "")))
        return RedirectResponse("/", status_code=303)

    async def api_clean(self, request: Request) -> Response:
        self._check_bearer(request)
        state = request.query_params.get("state", "")
        deleted = await self._clean(state, request.query_params.get("older_than", ""))
        return JSONResponse({"deleted": deleted, "state": state})

    # -- data ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        from etl.worker import WorkerOptions

        counts = {state: self.store.count_runs(state) for state in STATES}
        live = self.store.workers(WorkerOptions.from_env().heartbeat * 3)
        return {
            "counts": counts,
            "workers": len(live),
            "slots": sum(w.concurrency for w in live),
            "stalled": counts["waiting"] + counts["active"] > 0 and not live,
        }

    def runs_page(self, state: str | None, job: str | None, page: int) -> tuple[list[RunRecord], bool]:
        found = self.store.list_runs(state=state or None, job=job or None, limit=(page + 1) * PAGE_SIZE + 1)
        start = page * PAGE_SIZE
        return found[start : start + PAGE_SIZE], len(found) > start + PAGE_SIZE

    def throughput(self) -> list[dict[str, Any]]:
        """Rows read per minute over the last hour (from the chunks done in that time), as the
        runs' rows/s count them."""
        now = time.time()
        if self._throughput is not None and now - self._throughput[0] < 5:
            return self._throughput[1]
        since = now - 3600
        runs = {r.id: r for r in [*self.store.active_runs(limit=200), *self.store.finished_since(since)]}
        minutes: dict[int, int] = {}
        for run in runs.values():
            for chunk in self.store.get_chunks(run.id, run.chunks_total):
                if chunk.finished_at is not None and chunk.finished_at >= since:
                    minute = int(chunk.finished_at // 60) * 60
                    minutes[minute] = minutes.get(minute, 0) + chunk.rows_read
        first = int(since // 60) * 60 + 60
        points = [{"minute": _iso(m), "rows": minutes.get(m, 0)} for m in range(first, int(now // 60) * 60 + 60, 60)]
        self._throughput = (now, points)
        return points

    def schedule(self) -> list[dict[str, Any]]:
        if not self.settings.configs or not Path(self.settings.configs).is_dir():
            return []
        from etl.schedule import next_slots
        from etl.scheduler import clock_from_env, scheduled_jobs

        found = []
        for job in scheduled_jobs(self.settings.configs)[0]:
            spec = job.spec
            state = self.store.schedule_state(job.name)
            found.append(
                {
                    "job": job.name,
                    "schedule": spec.schedule,
                    "timezone": spec.timezone,
                    "paused": bool(state.get("paused")),
                    "next": [s.isoformat() for s in next_slots(spec.schedule, spec.timezone, clock_from_env()(), 3)],
                }
            )
        return found

    def log_lines(self, run_id: str) -> list[str] | None:
        path = api.state_dir() / "runs" / run_id / "run.log"
        if not path.is_file():
            return None
        with path.open(encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        return [line.rstrip("\n") for line in lines[-LOG_LINES:]]

    # -- pages -----------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        state = request.query_params.get("state") or None
        job = request.query_params.get("job") or None
        if state is not None and state not in STATES:
            raise HTTPException(400, f"state {state!r} is not one of: {', '.join(STATES)}")
        try:
            page = max(int(request.query_params.get("page", "0")), 0)
        except ValueError:
            raise HTTPException(400, "page is a number") from None
        runs, more = await self.call(self.runs_page, state, job, page)
        return self.render(
            request,
            "index.html",
            summary=await self.call(self.summary),
            runs=runs,
            progress={r.id: RunProgress.of(r) for r in runs},
            more=more,
            page=page,
            state=state,
            job=job,
            workers=await self.call(api.workers, self.queue),
            throughput=await self.call(self.throughput),
            schedule=await self.call(self.schedule),
        )

    async def run_page(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        chunks = await self.call(self.store.get_chunks, run.id, run.chunks_total)
        return self.render(
            request,
            "run.html",
            run=run,
            progress=RunProgress.of(run, chunks),
            chunks=chunks,
            log=await self.call(self.log_lines, run.id),
        )

    # -- the JSON API ------------------------------------------------------------------------

    async def api_summary(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.summary))

    async def api_runs(self, request: Request) -> Response:
        state = request.query_params.get("state") or None
        if state is not None and state not in STATES:
            raise HTTPException(400, f"state {state!r} is not one of: {', '.join(STATES)}")
        try:
            limit = min(max(int(request.query_params.get("limit", "50")), 1), 1000)
        except ValueError:
            raise HTTPException(400, "limit is a number from 1 to 1000") from None
        runs = await self.call(
            self.store.list_runs, state=state, job=request.query_params.get("job") or None, limit=limit
        )
        return JSONResponse([_progress(r) for r in runs])

    async def api_run(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        chunks = await self.call(self.store.get_chunks, run.id, run.chunks_total)
        return JSONResponse(_progress(run, chunks))

    async def api_chunks(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        chunks = await self.call(self.store.get_chunks, run.id, run.chunks_total)
        return JSONResponse([c.to_json() for c in chunks])

    async def api_log(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        lines = await self.call(self.log_lines, run.id)
        if lines is None:
            raise HTTPException(404, f"no log of run {run.id} here: it is kept on the worker's machine, in ETL_HOME")
        return JSONResponse({"run": run.id, "lines": lines})

    async def api_workers(self, request: Request) -> Response:
        workers = await self.call(api.workers, self.queue)
        return JSONResponse([w.to_json() for w in workers])

    async def api_throughput(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.throughput))

    async def api_schedule(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.schedule))

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_schema(str(request.base_url).rstrip("/")))

    async def metrics(self, request: Request) -> Response:
        from etl.metrics import render

        body, content_type = await self.call(render, self.store)
        return Response(body, media_type=content_type)

    async def healthz(self, request: Request) -> Response:
        await self.call(self.store.kv.ping)
        return JSONResponse({"ok": True})

    # -- event streams -------------------------------------------------------------------------

    async def api_run_events(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        return sse(self._run_events(run.id))

    def _feed(self, key: str, poll: Callable[[], Any]) -> Feed:
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(poll, self.settings.poll, lambda: self._feeds.pop(key, None))
        return feed

    def _run_snapshot(self, run_id: str) -> dict[str, Any] | None:
        run = self.store.get_run(run_id)
        return None if run is None else _progress(run, self.store.get_chunks(run.id, run.chunks_total))

    async def _run_events(self, run_id: str) -> AsyncIterator[str]:
        feed = self._feed(f"run:{run_id}", lambda: self._run_snapshot(run_id))
        async for data in feed.subscribe():
            if data is KEEP_ALIVE:
                yield ": keep-alive\n\n"
            elif data is None:
                yield event("gone", {"run": run_id})
                return
            else:
                yield event("progress", data)
                if data["state"] in ("completed", "failed", "cancelled"):
                    yield event("end", {"run": run_id, "state": data["state"]})
                    return

    async def api_events(self, request: Request) -> Response:
        return sse(self._all_events())

    def _all_snapshot(self) -> dict[str, Any]:
        """The counts, and the progress of every run waiting, active, or finished in the last
        minute (so that a stream sees a run's last change)."""
        found = [*self.store.list_runs(state="waiting", limit=200), *self.store.active_runs(limit=200)]
        found += self.store.finished_since(time.time() - 60, limit=200)
        return {"summary": self.summary(), "runs": {r.id: _progress(r) for r in found}}

    async def _all_events(self) -> AsyncIterator[str]:
        feed = self._feed("all", self._all_snapshot)
        summary_last: Any = None
        seen: dict[str, Any] = {}
        async for data in feed.subscribe():
            if data is KEEP_ALIVE:
                yield ": keep-alive\n\n"
                continue
            if data["summary"] != summary_last:
                summary_last = data["summary"]
                yield event("summary", summary_last)
            for run_id, progress in data["runs"].items():
                if seen.get(run_id) != progress:
                    seen[run_id] = progress
                    yield event("progress", progress)
            seen = {k: v for k, v in seen.items() if k in data["runs"]}


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _progress(run: RunRecord, chunks: list[ChunkRecord] | None = None) -> dict[str, Any]:
    """A run as the API and the event streams show it: the run's fields and the figures of
    :class:`~etl.progress.RunProgress` (``RunRecord.to_json``), the same figures as text
    (``display``, which the pages show as they are), and (given the chunks) each chunk's state."""
    now = time.time()
    data = run.to_json(now, chunks)
    data.pop("signature", None)
    data["display"] = RunProgress.of(run, chunks, now).display()
    if chunks is not None:
        data["chunks"] = [
            {
                "index": c.index,
                "state": c.state,
                "attempts": c.attempts,
                "rows_read": c.rows_read,
                "rows_written": c.rows_written,
                "label": c.label,
            }
            for c in chunks
        ]
    return data
