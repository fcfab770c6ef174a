"""The dashboard against hostile requests: a real `etl dashboard` process on a real Redis queue,
sent what a browser never would (non-ASCII tokens, huge page numbers, foreign Host headers,
token guesses, a replayed cookie). Nothing gets a 500; each gets a clear refusal."""

from __future__ import annotations

import math
import time

from tests.background.conftest import queue, submit
from tests.background.dashboards import TOKEN


def signed_in(board) -> dict[str, str]:
    """The cookies of a browser that signed in."""
    response = board.post("/login", data={"token": TOKEN})
    assert response.status_code == 303, response.text
    return {"etl_session": response.cookies["etl_session"]}


def csrf_of(board, cookies: dict[str, str]) -> str:
    import re

    page = board.get("/", cookies=cookies).text
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page)[1]


def text(response) -> str:
    """A page's text, its HTML entities (an apostrophe is &#39;) decoded."""
    import html

    return html.unescape(response.text)


def no_traceback(board) -> None:
    board.proc.terminate()
    board.proc.wait(10)
    assert "Traceback" not in board.log.read_text(), board.log.read_text()


def test_non_ascii_tokens_cookies_and_csrf_tokens_are_refused_not_a_500(dashboard, cli, job_file):
    run_id = submit(cli, job_file(10, 10, name="idle"))
    for token in ("é", "Bearer ☃", "\u00ff" * 40):
        api = dashboard.post(f"/api/runs/{run_id}/cancel", headers={"Authorization": f"Bearer {token}".encode()})
        assert api.status_code == 401 and "Bearer TOKEN" in api.json()["error"]
    login = dashboard.post("/login", data={"token": "jeton-secret-é☃"})
    assert login.status_code == 401 and "not the dashboard's token" in text(login)
    for cookie in ("é.abc", "1234.é", "ünïcode"):
        page = dashboard.get("/", headers={"Cookie": f"etl_session={cookie}".encode()})
        assert page.status_code == 200 and "sign in for actions" in page.text
    cookies = signed_in(dashboard)
    forged = dashboard.post(f"/runs/{run_id}/cancel", data={"csrf": "ça-ne-passe-pas"}, cookies=cookies)
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert queue().store.get_run(run_id).state == "waiting"
    no_traceback(dashboard)


def test_page_numbers_and_limits_are_bounded(dashboard):
    huge = dashboard.get("/?page=999999999999999999999")
    assert huge.status_code == 400 and "page '999999999999999999999' is not a whole number from 0 to 399" in text(huge)
    for page in ("-1", "400", "1e3", "٣", ""):
        assert dashboard.get("/", params={"page": page}).status_code == 400, page
    assert dashboard.get("/?page=399").status_code == 200
    assert dashboard.get("/api/runs", params={"limit": 1001}).json() == {
        "error": "limit '1001' is not a whole number from 1 to 1000"
    }
    assert dashboard.get("/api/runs", params={"limit": 1000}).status_code == 200
    assert dashboard.get("/api/runs", params={"state": ""}).status_code == 400
    no_traceback(dashboard)


def test_the_dashboard_answers_only_to_its_own_host_names(start_dashboard):
    board = start_dashboard()
    port = board.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "10.1.2.3", "LOCALHOST."):
        assert board.get("/", headers={"Host": host}).status_code == 200, host
    rebound = board.get("/", headers={"Host": f"evil.test:{port}"})
    assert rebound.status_code == 400
    assert "does not answer to the host 'evil.test:" in rebound.text and "--allowed-host evil.test" in rebound.text
    assert board.get("/api/runs", headers={"Host": "evil.test"}).json()["error"].startswith("this dashboard does not")
    assert "answers to localhost and IP addresses" in board.log.read_text()

    extended = start_dashboard("--allowed-host", "dash.example.com", ETL_DASHBOARD_ALLOWED_HOSTS="*.corp.test, x.test")
    for host in ("dash.example.com", "dash.example.com:443", "a.corp.test", "b.a.corp.test", "x.test"):
        assert extended.get("/api/summary", headers={"Host": host}).status_code == 200, host
    for host in ("corp.test", "example.com", "evil.test"):
        assert extended.get("/api/summary", headers={"Host": host}).status_code == 400, host
    anything = start_dashboard("--allowed-host", "*")
    assert anything.get("/api/summary", headers={"Host": "whatever.test"}).status_code == 200


def test_every_response_carries_the_security_headers(dashboard):
    for response in (
        dashboard.get("/"),
        dashboard.get("/login"),
        dashboard.get("/api/runs"),
        dashboard.get("/static/dashboard.js"),
        dashboard.get("/runs/nope"),
        dashboard.get("/", headers={"Host": "evil.test"}),
    ):
        headers = response.headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], response.url
        assert "script-src 'self';" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"


def test_wrong_tokens_from_one_address_are_slowed_down(dashboard, cli, job_file):
    run_id = submit(cli, job_file(10, 10, name="guarded"))
    started = time.monotonic()
    answers = [dashboard.post("/login", data={"token": f"guess-{i}"}).status_code for i in range(30)]
    elapsed = time.monotonic() - started
    # Five free guesses, then a wait that doubles with each wrong one (1s, 2s, 4s...): however
    # fast the machine sends them, 5 are answered, and one more each time a wait runs out.
    assert answers[:6] == [401] * 5 + [429] and set(answers) == {401, 429}
    assert answers.count(401) <= 5 + 1 + math.log2(elapsed + 1), (elapsed, answers)
    refused = dashboard.post("/login", data={"token": TOKEN})  # the right token waits too
    wait = int(refused.headers["retry-after"])
    assert refused.status_code == 429 and 1 <= wait <= 2 ** (answers.count(401) - 5)
    assert f"too many wrong tokens from 127.0.0.1: try again in {wait}s" in text(refused)
    api = dashboard.post(f"/api/runs/{run_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert api.status_code == 429 and "too many wrong tokens" in api.json()["error"]
    time.sleep(int(api.headers["retry-after"]) + 0.1)
    assert dashboard.post("/login", data={"token": TOKEN}).status_code == 303  # the right one clears the address
    # A client can't choose its own address: X-Forwarded-For counts only from a proxy named in
    # FORWARDED_ALLOW_IPS.
    answers = [
        dashboard.post(
            f"/api/runs/{run_id}/cancel", headers={"Authorization": "Bearer nope", "X-Forwarded-For": f"10.0.0.{i}"}
        ).status_code
        for i in range(6)
    ]
    assert answers == [401] * 5 + [429]
    assert time.monotonic() - started < 30  # (a bound so that it can't hang, not a timing test)
    no_traceback(dashboard)


def test_signing_out_ends_the_session_for_good(dashboard, cli, job_file, redis_url):
    import redis

    run_id = submit(cli, job_file(10, 10, name="session"))
    cookies = signed_in(dashboard)
    csrf = csrf_of(dashboard, cookies)
    assert "sign out" in dashboard.get("/", cookies=cookies).text
    name = queue().store.prefix
    client = redis.Redis.from_url(redis_url)
    assert len(list(client.scan_iter(match=f"{name}:dashboard-session:*"))) == 1  # kept on the server
    assert dashboard.post("/logout", cookies=cookies).status_code == 303
    assert not list(client.scan_iter(match=f"{name}:dashboard-session:*"))
    # The same cookie, replayed: signed out on the server, it is refused.
    assert "sign in for actions" in dashboard.get("/", cookies=cookies).text
    replayed = dashboard.post(f"/runs/{run_id}/cancel", data={"csrf": csrf}, cookies=cookies)
    assert replayed.status_code == 401 and "sign in with the dashboard token first" in replayed.text
    assert queue().store.get_run(run_id).state == "waiting"
    # A new sign-in works, and one session's sign-out leaves the others be.
    first, second = signed_in(dashboard), signed_in(dashboard)
    dashboard.post("/logout", cookies=first)
    ok = dashboard.post(f"/runs/{run_id}/cancel", data={"csrf": csrf_of(dashboard, second)}, cookies=second)
    assert ok.status_code == 303 and queue().store.get_run(run_id).state == "cancelled"


def test_behind_a_named_proxy_each_client_counts_on_its_own(start_dashboard):
    proxied = start_dashboard(FORWARDED_ALLOW_IPS="127.0.0.1")
    for client in range(3):
        forwarded = {"X-Forwarded-For": f"203.0.113.{client}"}
        answers = [proxied.post("/login", data={"token": "x"}, headers=forwarded).status_code for _ in range(6)]
        assert answers == [401] * 5 + [429]
    refused = proxied.post("/login", data={"token": "x"}, headers={"X-Forwarded-For": "203.0.113.2"})
    assert "too many wrong tokens from 203.0.113.2" in text(refused)


def test_sessions_live_in_the_embedded_store_too(tmp_path, monkeypatch):
    """Without Redis, sessions are kept in the embedded store's file: signing out ends them there."""
    import asyncio

    import httpx

    from etl import api
    from etl.web.app import DashboardSettings, create_app

    for variable in ("ETL_QUEUE_URL", "REDIS_URL", "REDIS_HOST"):
        monkeypatch.delenv(variable, raising=False)
    app = create_app(api.open_queue(), DashboardSettings(token=TOKEN))

    async def visit() -> list[bool]:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            cookie = (await client.post("/login", data={"token": TOKEN})).cookies["etl_session"]
            before = "sign out" in (await client.get("/")).text
            await client.post("/logout")
            client.cookies.set("etl_session", cookie)  # replayed
            return [before, "sign out" in (await client.get("/")).text]

    assert asyncio.run(visit()) == [True, False]
