"""The dashboard and the progress API: a Starlette app over the run store.

Views and the JSON API are open to whoever can reach the server (it binds to loopback unless
told otherwise, and answers only to the host names it is allowed: :mod:`etl.web.security`).
Actions (retry, cancel, clean) need ``ETL_DASHBOARD_TOKEN``: API clients send it as
``Authorization: Bearer TOKEN``; a browser signs in with it once and gets a session cookie
(HttpOnly, SameSite=Strict) for a session that the run store keeps until it signs out, and
every form carries a CSRF token tied to that session. Wrong tokens from one address are slowed
down. Without a token configured, or with ``read_only``, there are no actions at all.

Progress is pushed as server-sent events: ``/api/runs/{id}/events`` for one run,
``/api/events`` for all of them. Each stream is polled from the store once every half second
whatever the number of its subscribers (:class:`~etl.web.feeds.Feed`), so a browser holds no
connection to Redis and any number of pages can watch.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
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
from etl.store import RunRecord
from etl.units import format_duration, parse_duration
from etl.web.data import MAX_PAGE, STATES, Board, run_json
from etl.web.feeds import Feed, all_events, run_events, sse
from etl.web.openapi import OLDER_THAN, openapi_schema
from etl.web.security import Guesses, HostGuard, SecurityHeaders, Sessions, default_hosts, same, sign

__all__ = ["DashboardSettings", "create_app"]

HERE = Path(__file__).parent
POLL_SECONDS = 0.5
SESSION_SECONDS = 12 * 3600
COOKIE = "etl_session"
FINISHED = STATES[2:]
_NUMBER = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class DashboardSettings:
    """How the dashboard serves.

    Attributes:
        token: ``ETL_DASHBOARD_TOKEN``: actions need it; ``None`` means no actions.
        read_only: serve views only, whatever the token.
        configs: a directory of job files whose schedules to show.
        cors_origins: origins whose pages may call the JSON API and event streams.
        allowed_hosts: the host names it answers to (IP addresses always); ``*`` for any.
        free_guesses: wrong tokens one client address may send before it must wait.
        poll: how often event streams look at the store.
    """

    token: str | None = None
    read_only: bool = False
    configs: str | None = None
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = default_hosts("127.0.0.1")
    free_guesses: int = 5
    poll: float = POLL_SECONDS

    @property
    def actions(self) -> bool:
        return bool(self.token) and not self.read_only


def create_app(queue: Any, settings: DashboardSettings | None = None) -> Starlette:
    """The ASGI app over ``queue`` (its run store; actions send its messages)."""
    settings = settings or DashboardSettings()
    web = _Dashboard(queue, settings)
    get, post = ["GET"], ["POST"]
    routes = [
        Route("/", web.index, methods=get),
        Route("/runs/{run_id}", web.run_page, methods=get),
        Route("/login", web.login, methods=["GET", "POST"]),
        Route("/logout", web.logout, methods=post),
        Route("/runs/{run_id}/retry", web.form_action("retry"), methods=post),
        Route("/runs/{run_id}/cancel", web.form_action("cancel"), methods=post),
        Route("/clean", web.form_clean, methods=post),
        Route("/api/summary", web.api_summary, methods=get),
        Route("/api/runs", web.api_runs, methods=get),
        Route("/api/runs/{run_id}", web.api_run, methods=get),
        Route("/api/runs/{run_id}/chunks", web.api_chunks, methods=get),
        Route("/api/runs/{run_id}/log", web.api_log, methods=get),
        Route("/api/runs/{run_id}/events", web.api_run_events, methods=get),
        Route("/api/events", web.api_events, methods=get),
        Route("/api/workers", web.api_workers, methods=get),
        Route("/api/throughput", web.api_throughput, methods=get),
        Route("/api/schedule", web.api_schedule, methods=get),
        Route("/api/runs/{run_id}/retry", web.api_action("retry"), methods=post),
        Route("/api/runs/{run_id}/cancel", web.api_action("cancel"), methods=post),
        Route("/api/clean", web.api_clean, methods=post),
        Route("/api/openapi.json", web.openapi, methods=get),
        Route("/metrics", web.metrics, methods=get),
        Route("/healthz", web.healthz, methods=get),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(HostGuard, allowed=settings.allowed_hosts),
        Middleware(SecurityHeaders),
    ]
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


class _Dashboard:
    def __init__(self, queue: Any, settings: DashboardSettings) -> None:
        self.queue = queue
        self.store = queue.store
        self.board = Board(queue, settings.configs)
        self.settings = settings
        self.sessions = Sessions(self.store.kv, self.store.prefix, SESSION_SECONDS)
        self.guesses = Guesses(free=settings.free_guesses)
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.templates.env.globals.update(format_duration=format_duration, states=STATES, chunk_states=CHUNK_STATES)
        self.templates.env.filters["when"] = _when
        self._feeds: dict[str, Feed] = {}

    # -- helpers -----------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call (blocking I/O) in a worker thread."""
        return await to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def render(
        self, request: Request, name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
    ) -> HTMLResponse:
        session = await self._session(request)
        context.update(
            settings=self.settings,
            signed_in=session is not None,
            csrf=sign(self.settings.token, f"csrf:{session}") if session and self.settings.token else "",
            now=time.time(),
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status, headers=headers)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/") or request.url.path == "/metrics":
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return await self.render(request, "error.html", status=exc.status_code, headers=exc.headers, message=exc.detail)

    async def _run(self, run_id: str) -> RunRecord:
        run = await self.call(self.store.get_run, run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id!r} (it may have been cleaned)")
        return run

    # -- authentication ------------------------------------------------------------------------

    async def _session(self, request: Request) -> str | None:
        """The browser's session, if it signed in: a cookie signed with the token, for a session
        that the run store still keeps (not signed out, not ended)."""
        if "session" in request.scope.setdefault("state", {}):
            return request.scope["state"]["session"]
        token = self.settings.token
        cookie = request.cookies.get(COOKIE, "")
        session: str | None = None
        if token and "." in cookie:
            given, _, signature = cookie.rpartition(".")
            if same(signature, sign(token, f"session:{given}")) and await self.call(self.sessions.valid, given):
                session = given
        request.scope["state"]["session"] = session
        return session

    def _client(self, request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def _right_token(self, request: Request, given: str) -> bool:
        """Whether ``given`` is the token; 429 while this client must wait after wrong ones."""
        client = self._client(request)
        wait = self.guesses.wait(client)
        if wait:
            seconds = math.ceil(wait)
            raise HTTPException(
                429,
                f"too many wrong tokens from {client}: try again in {seconds}s",
                headers={"Retry-After": str(seconds)},
            )
        if same(given, self.settings.token or ""):
            self.guesses.right(client)
            return True
        self.guesses.wrong(client)
        return False

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
            raise HTTPException(
                403,
                f"a form posted from another site ({origin}) is refused (behind a proxy that "
                "terminates TLS, set FORWARDED_ALLOW_IPS to its address)",
            )
        session = await self._session(request)
        if session is None:
            raise HTTPException(401, "sign in with the dashboard token first")
        form = await request.form()
        if not same(str(form.get("csrf", "")), sign(self.settings.token or "", f"csrf:{session}")):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        return form

    def _check_bearer(self, request: Request) -> None:
        self._may_act()
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._right_token(request, given.strip()):
            raise HTTPException(401, "send the dashboard token: Authorization: Bearer TOKEN")

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return await self.render(request, "login.html")
        self._may_act()
        form = await request.form()
        if not self._right_token(request, str(form.get("token", ""))):
            return await self.render(request, "login.html", status=401, message="That is not the dashboard's token.")
        session = await self.call(self.sessions.start)
        target = str(form.get("next") or "/")
        if not target.startswith("/") or target.startswith(("//", "/\\")):
            target = "/"  # only a page of this dashboard: never a redirect to another site
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            f"{session}.{sign(self.settings.token or '', f'session:{session}')}",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=SESSION_SECONDS,
        )
        return response

    async def logout(self, request: Request) -> Response:
        session = await self._session(request)
        if session is not None:
            await self.call(self.sessions.end, session)  # the cookie, replayed, is refused from now on
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
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

    async def _clean(self, state: str | None, older_than: str | None) -> int:
        if state not in FINISHED:
            raise HTTPException(400, f"state {state!r} is not one of: {', '.join(FINISHED)}")
        if older_than is not None and not OLDER_THAN.fullmatch(older_than):
            raise HTTPException(
                400, f"older_than {older_than!r} is not a duration such as 90s, 30m, 12h, 7d or 2w (or 0)"
            )
        try:
            return await self.call(api.clean, state, parse_duration(older_than or 0), self.queue)
        except UsageError as exc:
            raise HTTPException(400, str(exc)) from None

    async def form_clean(self, request: Request) -> Response:
        form = await self._check_form(request)
        await self._clean(str(form.get("state", "")), str(form.get("older_than", "")))
        return RedirectResponse("/", status_code=303)

    async def api_clean(self, request: Request) -> Response:
        self._check_bearer(request)
        state = request.query_params.get("state")
        deleted = await self._clean(state, request.query_params.get("older_than"))
        return JSONResponse({"deleted": deleted, "state": state})

    # -- pages -----------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        state = request.query_params.get("state") or None  # the filter form sends "" for any state
        job = request.query_params.get("job") or None
        if state is not None:
            _choice(request, "state", STATES)
        page = _number(request, "page", 0, MAX_PAGE, 0)
        runs, more = await self.call(self.board.runs_page, state, job, page)
        return await self.render(
            request,
            "index.html",
            summary=await self.call(self.board.summary),
            runs=runs,
            progress={r.id: RunProgress.of(r) for r in runs},
            more=more,
            page=page,
            state=state,
            job=job,
            workers=await self.call(api.workers, self.queue),
            throughput=await self.call(self.board.throughput),
            schedule=await self.call(self.board.schedule),
        )

    async def run_page(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        chunks = await self.call(self.store.get_chunks, run.id, run.chunks_total)
        return await self.render(
            request,
            "run.html",
            run=run,
            progress=RunProgress.of(run, chunks),
            chunks=chunks,
            log=await self.call(self.board.log_lines, run.id),
        )

    # -- the JSON API ------------------------------------------------------------------------

    async def api_summary(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.board.summary))

    async def api_runs(self, request: Request) -> Response:
        state = _choice(request, "state", STATES)
        limit = _number(request, "limit", 1, 1000, 50)
        runs = await self.call(
            self.store.list_runs, state=state, job=request.query_params.get("job") or None, limit=limit
        )
        return JSONResponse([run_json(r) for r in runs])

    async def api_run(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        chunks = await self.call(self.store.get_chunks, run.id, run.chunks_total)
        return JSONResponse(run_json(run, chunks))

    async def api_chunks(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        chunks = await self.call(self.store.get_chunks, run.id, run.chunks_total)
        return JSONResponse([c.to_json() for c in chunks])

    async def api_log(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        lines = await self.call(self.board.log_lines, run.id)
        if lines is None:
            raise HTTPException(404, f"no log of run {run.id} here: it is kept on the worker's machine, in ETL_HOME")
        return JSONResponse({"run": run.id, "lines": lines})

    async def api_workers(self, request: Request) -> Response:
        workers = await self.call(api.workers, self.queue)
        return JSONResponse([w.to_json() for w in workers])

    async def api_throughput(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.board.throughput))

    async def api_schedule(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.board.schedule))

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

    def _feed(self, key: str, poll: Callable[[], Any]) -> Feed:
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(poll, self.settings.poll, lambda: self._feeds.pop(key, None))
        return feed

    async def api_run_events(self, request: Request) -> Response:
        run = await self._run(request.path_params["run_id"])
        return sse(run_events(run.id, self._feed(f"run:{run.id}", lambda: self.board.run_snapshot(run.id))))

    async def api_events(self, request: Request) -> Response:
        return sse(all_events(self._feed("all", self.board.all_snapshot)))


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    """A query parameter that is one of ``choices``, or absent (``None``); 400 otherwise."""
    value = request.query_params.get(name)
    if value is not None and value not in choices:
        raise HTTPException(400, f"{name} {value!r} is not one of: {', '.join(choices)}")
    return value


def _number(request: Request, name: str, low: int, high: int, default: int) -> int:
    """A query parameter that is a whole number from ``low`` to ``high``; 400 otherwise."""
    value = request.query_params.get(name)
    if value is None:
        return default
    if not _NUMBER.fullmatch(value) or not low <= int(value) <= high:
        raise HTTPException(400, f"{name} {value!r} is not a whole number from {low} to {high}")
    return int(value)
