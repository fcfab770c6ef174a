"""The dashboard end to end: a real `etl dashboard` process, real workers, real Redis, and a real
headless Chromium (Debian's, driven by Playwright). Screenshots land in the test's directory, and
in docs/images with ETL_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.background.conftest import free_port, queue, run_record, submit, wait_finished
from tests.background.dashboards import TOKEN, Dashboard

CHROMIUM = os.environ.get("ETL_TEST_CHROMIUM", "/usr/bin/chromium")
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"the dashboard tests need Chromium at {CHROMIUM} (Debian's `chromium` package; .ci/run installs it)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    """A page whose console must show no Content-Security-Policy violation: the dashboard's own
    scripts and styles all run under its policy."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert not refused, refused


def until(page, expression: str, timeout: float = 30) -> None:
    """Wait until ``expression`` is true in ``page``. (Playwright's wait_for_function evaluates
    its predicate with eval(), which the dashboard's Content-Security-Policy refuses, as it should.)"""
    from playwright.sync_api import Error

    deadline = time.monotonic() + timeout
    while True:
        try:
            if page.evaluate(expression):
                return
        except Error:  # the page is navigating: ask the next one
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {expression}")
        page.wait_for_timeout(100)


def stream_item(path: str, name: str, data: dict) -> None:
    """Check one event of the stream at ``path`` against what /api/openapi.json says of it."""
    import jsonschema

    from etl.web.openapi import openapi_schema

    described = openapi_schema()
    item = described["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]
    (kind,) = [k for k in item["oneOf"] if k["properties"]["event"]["const"] == name]
    schema = {**kind["properties"]["data"]["contentSchema"], "components": described["components"]}
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.Draft202012Validator(schema, format_checker=checker).validate(data)


def screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("ETL_UPDATE_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_IMAGES / f"{name}.png")


def sign_in(page, dashboard: Dashboard, token: str = TOKEN, next_path: str = "/") -> None:
    page.goto(f"{dashboard.url}/login?next={next_path}")
    page.fill("input[name=token]", token)
    with page.expect_navigation():
        page.click("button[type=submit]")


def slow_job(job_file, rows: int = 4000, chunk: int = 200, seconds: float = 0.25, name: str = "slow"):
    return job_file(rows, chunk, transforms=f"[{{type: sleepy, seconds: {seconds}}}]", name=name)


# -- in the browser ----------------------------------------------------------------------------


def test_a_runs_progress_advances_on_its_page_without_reloading(dashboard, page, workers, job_file, cli, tmp_path):
    run_id = submit(cli, slow_job(job_file))
    workers.start(1, concurrency=2)
    page.goto(f"{dashboard.url}/runs/{run_id}")
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    until(page, "document.getElementById('state').textContent === 'active'", 30)

    def rows() -> int:
        return int(page.inner_text("#rows").replace(",", ""))

    first = rows()
    until(page, f"parseInt(document.getElementById('rows').textContent.replace(/,/g, '')) > {first}")
    assert rows() > first
    assert page.evaluate("window.loadedOnce") is True
    done_cells = page.locator("#grid .chunk-done").count()
    assert done_cells >= 1 and page.locator("#grid .cell").count() == 20
    assert page.inner_text("#rate") != "0"
    until(page, "!document.getElementById('log').hidden")  # the run's log lines, as they come
    assert "planned slow" in page.inner_text("#log")
    screenshot(page, tmp_path, "dashboard-run")
    page.goto(dashboard.url + "/")
    page.evaluate("window.indexOnce = true")  # gone if the page reloads
    assert page.locator(f'tr[data-run="{run_id}"]').count() == 1
    until(page, "document.querySelector('[data-count=\"active\"]').textContent === '1'")
    assert "slow" in page.inner_text("#runs") and page.locator("#workers tbody tr").count() == 1
    screenshot(page, tmp_path, "dashboard-runs")
    wait_finished(run_id)
    # The row follows the run to its end without reloading: rows read, and written, as the API has them.
    cells = f'tr[data-run="{run_id}"] [data-field=rows]'
    until(page, f"document.querySelector('{cells}').textContent === '4,000'")
    assert page.inner_text(f'tr[data-run="{run_id}"] [data-field=rows_written]') == "4,000"
    assert page.evaluate("window.indexOnce") is True


def test_retry_and_cancel_work_from_the_run_page(dashboard, page, workers, job_file, cli, tmp_path):
    marker = tmp_path / "fail.marker"
    marker.write_text("fail")
    failing = job_file(
        400,
        100,
        transforms=f'[{{type: fail_while, marker: "{marker}", on_id: 250}}]',
        name="flaky",
    )
    failed_id = submit(cli, failing)
    workers.start(1, concurrency=2)
    assert wait_finished(failed_id).state == "failed"

    page.goto(f"{dashboard.url}/runs/{failed_id}")
    assert page.locator("#retry").count() == 0  # not signed in: no buttons
    assert "the upstream service is down" in page.inner_text("#chunk-table")
    assert page.inner_text("#run-error").startswith("chunk 2:")
    sign_in(page, dashboard, next_path=f"/runs/{failed_id}")
    assert page.url.endswith(f"/runs/{failed_id}")
    screenshot(page, tmp_path, "dashboard-failed")
    marker.unlink()
    with page.expect_navigation():
        page.click("#retry")
    until(page, "document.getElementById('state').textContent === 'completed'", 60)
    assert run_record(failed_id).state == "completed"

    slow_id = submit(cli, slow_job(job_file, rows=20_000, name="long"))
    page.goto(f"{dashboard.url}/runs/{slow_id}")
    until(page, "document.getElementById('state').textContent === 'active'", 30)
    with page.expect_navigation():
        page.click("#cancel")
    until(page, "document.getElementById('state').textContent === 'cancelled'", 30)
    assert wait_finished(slow_id).state == "cancelled"


def test_the_token_is_enforced(dashboard, page, job_file, cli):
    run_id = submit(cli, job_file(10, 10, name="idle"))  # no worker: it stays waiting
    sign_in(page, dashboard, token="not-the-token")
    assert page.inner_text("#error") == "That is not the dashboard's token."
    assert not [c for c in page.context.cookies() if c["name"] == "etl_session"]
    # The API wants the token as a bearer token.
    assert dashboard.post(f"/api/runs/{run_id}/cancel").status_code == 401
    assert dashboard.post(f"/api/runs/{run_id}/cancel", headers={"Authorization": "Bearer nope"}).status_code == 401
    # A form post needs a signed-in session, and that session's CSRF token.
    assert dashboard.post(f"/runs/{run_id}/cancel", data={"csrf": "x"}).status_code == 401
    sign_in(page, dashboard, next_path=f"/runs/{run_id}")
    cookie = next(c for c in page.context.cookies() if c["name"] == "etl_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    jar = {"etl_session": cookie["value"]}
    forged = dashboard.post(f"/runs/{run_id}/cancel", data={"csrf": "forged"}, cookies=jar)
    assert forged.status_code == 403 and "CSRF" in forged.text
    elsewhere = dashboard.post(f"/runs/{run_id}/cancel", data={}, cookies=jar, headers={"Origin": "https://evil.test"})
    assert elsewhere.status_code == 403
    assert run_record(run_id).state == "waiting"  # none of that changed anything
    # Signing in never sends the browser on to another site.
    for elsewhere in ("https://evil.test/x", "//evil.test/x", "/\\evil.test"):
        signed = dashboard.post("/login", data={"token": TOKEN, "next": elsewhere})
        assert signed.status_code == 303 and signed.headers["location"] == "/"
    assert dashboard.post("/login", data={"token": TOKEN, "next": "/runs/x"}).headers["location"] == "/runs/x"
    ok = dashboard.post(f"/api/runs/{run_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["state"] == "cancelled"


def test_read_only_mode_has_no_actions(start_dashboard, page, job_file, cli, workers, tmp_path):
    board = start_dashboard("--read-only")
    run_id = submit(cli, job_file(10, 10, name="ro"))
    page.goto(f"{board.url}/runs/{run_id}")
    assert page.locator("#actions button, #actions a").count() == 0
    assert "read-only" in page.inner_text("header")
    page.goto(f"{board.url}/")
    assert page.locator("#clean").count() == 0
    assert board.post(f"/api/runs/{run_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
    assert board.post("/login", data={"token": TOKEN}).status_code == 403
    assert "read-only: views only" in board.log.read_text() and "loopback only" in board.log.read_text()
    screenshot(page, tmp_path, "dashboard-read-only")
    workers.start(1)
    assert wait_finished(run_id).state == "completed"


def test_a_warning_shows_when_runs_wait_and_no_worker_is_alive(dashboard, page, job_file, cli, workers):
    page.goto(dashboard.url + "/")
    assert not page.is_visible("#stalled")
    run_id = submit(cli, job_file(10, 10, name="nobody"))
    page.wait_for_selector("#stalled", state="visible")  # without reloading
    assert "no worker is alive" in page.inner_text("#stalled")
    workers.start(1)
    wait_finished(run_id)
    page.wait_for_selector("#stalled", state="hidden")


# -- the API for applications ------------------------------------------------------------------


def test_the_event_stream_of_a_run_reports_progress_then_its_end(dashboard, workers, job_file, cli):
    run_id = submit(cli, slow_job(job_file, rows=1200, chunk=200, seconds=0.1, name="sse"))
    workers.start(1)
    events: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{dashboard.url}/api/runs/{run_id}/events", timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if name == "end":
                    break
    progress = [data for name, data in events if name == "progress"]
    assert events[-1] == ("end", {"run": run_id, "state": "completed"})
    for name, data in events:  # each event as the API's description says
        stream_item("/api/runs/{run_id}/events", name, data)
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) >= 3
    assert progress[-1]["rows_written"] == 1200 and len(progress[-1]["chunks"]) == 6
    assert progress[-1]["display"]["percent"] == "100.0%" and progress[-1]["display"]["eta"] == "–"
    assert progress[-1]["chunks_done"] == 6 and progress[-1]["chunks_running"] == 0


def test_the_stream_of_all_runs_and_the_json_api(dashboard, workers, job_file, cli):
    with httpx.stream("GET", f"{dashboard.url}/api/events", timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: summary"
        run_id = submit(cli, job_file(300, 100, name="all"))
        workers.start(1)
        seen = []
        name = "summary"
        for line in lines:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                stream_item("/api/events", name, data)
                if name != "progress":
                    continue
                seen.append(data["state"])
                if data["id"] == run_id and data["state"] == "completed":
                    break
    assert "completed" in seen
    runs = dashboard.get("/api/runs", params={"job": "all"}).json()
    assert [r["id"] for r in runs] == [run_id] and runs[0]["rows_written"] == 300
    one = dashboard.get(f"/api/runs/{run_id}").json()
    assert one["fraction"] == 1.0 and [c["state"] for c in one["chunks"]] == ["done"] * 3
    # The API's figures are those of `etl status` and `etl runs`, for the same run.
    figures = ("state", "fraction", "rows_total", "rows_read", "rows_written", "seconds", "rows_per_second")
    figures += ("eta_seconds", "chunks_done", "chunks_total", "chunks_failed", "retries")
    status = json.loads(cli("status", run_id, "--json").stdout)
    listed = json.loads(cli("runs", "--json").stdout)
    assert {k: one[k] for k in figures} == {k: status[k] for k in figures} == {k: listed[0][k] for k in figures}
    assert {k: runs[0][k] for k in figures} == {k: status[k] for k in figures}
    line = cli("status", run_id).stdout.splitlines()[1]
    assert one["display"]["line"] == line.replace("[##############################] ", "", 1)
    assert dashboard.get("/api/summary").json()["counts"]["completed"] >= 1
    assert dashboard.get("/api/runs/nope").status_code == 404
    assert dashboard.get("/api/runs", params={"state": "bogus"}).status_code == 400
    assert sum(p["rows"] for p in dashboard.get("/api/throughput").json()) >= 300
    assert len(dashboard.get("/api/workers").json()) == 1
    from prometheus_client.parser import text_string_to_metric_families

    scraped = {f.name: f for f in text_string_to_metric_families(dashboard.get("/metrics").text)}
    completed = [s.value for s in scraped["etl_runs"].samples if s.labels == {"state": "completed"}]
    assert completed == [queue().store.count_runs("completed")] and completed[0] >= 1
    assert scraped["etl_workers_live"].samples[0].value == 1


def test_the_openapi_schema_describes_every_api_route(dashboard):
    from starlette.routing import Route

    from etl.web.app import create_app

    schema = dashboard.get("/api/openapi.json").json()
    assert schema["openapi"] == "3.2.0"
    app = create_app(queue())
    api_paths = {
        r.path for r in app.routes if isinstance(r, Route) and r.path.startswith("/api/") and "openapi" not in r.path
    }
    assert api_paths == set(schema["paths"])
    for path, item in schema["paths"].items():
        for operation in item.values():
            assert operation["responses"], path


def test_runs_are_paginated_and_filtered_and_clean_works_from_the_page(start_dashboard, page, job_file, tmp_path):
    from etl import api

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "nightly.yaml").write_text(
        'name: nightly\nschedule: "30 2 * * *"\ntimezone: Europe/Paris\n'
        "source: {type: generate, rows: 1}\nsink: {type: jsonl, path: out}\n"
    )
    (configs / "broken.yaml").write_text("name: broken\nschedule: every day\nsource: {type: generate, rows: 1}\n")
    (configs / "ctl.yaml").write_text("name: ctl\nschedule: '@daily'\nsource: {type: generate, rows: 1}\nsink: \x01\n")
    board = start_dashboard("--configs", str(configs))
    many, other = job_file(10, 10, name="many"), job_file(10, 10, name="other")
    ids = [api.submit(many, queue=queue()).id for _ in range(27)]
    api.submit(other, queue=queue())
    page.goto(board.url + "/?job=many")
    assert page.locator("#runs tbody tr").count() == 25
    assert page.locator(f'tr[data-run="{ids[-1]}"]').count() == 1  # newest first
    page.click("#older")
    assert page.locator("#runs tbody tr").count() == 2 and page.locator("#older").count() == 0
    page.goto(board.url + "/?state=waiting&job=other")
    assert page.locator("#runs tbody tr").count() == 1
    assert page.inner_text("#counts [data-count=waiting]") == "28"
    assert "nightly" in page.inner_text("#schedule") and "30 2 * * * (Europe/Paris)" in page.inner_text("#schedule")
    assert board.get("/?state=bogus").status_code == 400
    # A job file that fails to load is shown, with what is wrong, and breaks nothing.
    invalid = page.locator("#schedule tr.invalid")
    broken, ctl = invalid.nth(0).inner_text(), invalid.nth(1).inner_text()
    assert invalid.count() == 2 and "broken.yaml" in broken and "sink" in broken
    assert "ctl.yaml" in ctl and "U+0001" in ctl
    listed = board.get("/api/schedule").json()
    assert [s.get("job") for s in listed] == ["nightly", None, None]
    assert listed[1]["file"].endswith("broken.yaml") and listed[2]["file"].endswith("ctl.yaml")

    for run_id in ids[:3]:
        api.cancel(run_id, queue())
    sign_in(page, board)
    page.select_option("#clean select[name=state]", "cancelled")
    page.fill("#clean input[name=older_than]", "0s")
    with page.expect_navigation():
        page.click("#clean button")
    assert all(queue().store.get_run(i) is None for i in ids[:3])
    assert page.inner_text("#counts [data-count=cancelled]") == "0"


def test_the_docs_progress_widget_works_from_another_origin(start_dashboard, page, workers, job_file, cli, tmp_path):
    """The copy-paste widget of docs/dashboard.md, served by another site (CORS)."""
    import re
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    docs = (Path(__file__).resolve().parents[2] / "docs" / "dashboard.md").read_text()
    widget = re.search(r"```html\n(.*?)```", docs, re.S)[1]
    app_port = free_port()
    board = start_dashboard("--cors-origin", f"http://127.0.0.1:{app_port}")
    run_id = submit(cli, slow_job(job_file, rows=1000, chunk=100, seconds=0.2, name="widget"))
    html = widget.replace("http://127.0.0.1:8088", board.url).replace("20261128-203300-4f1a2b", run_id)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(f"<!doctype html><html><body>{html}</body></html>")
    handler = partial(SimpleHTTPRequestHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", app_port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{app_port}/index.html")
        workers.start(1)
        until(page, "document.getElementById('sync-bar').value > 0", 30)
        until(page, "document.getElementById('sync-text').textContent === 'Sync completed'", 60)
        assert page.evaluate("document.getElementById('sync-bar').value") == 1
    finally:
        server.shutdown()
        server.server_close()
    # Without --cors-origin, another site's page can't read the stream.
    assert (
        "access-control-allow-origin"
        not in start_dashboard().get(f"/api/runs/{run_id}", headers={"Origin": f"http://127.0.0.1:{app_port}"}).headers
    )
