"""The notify plugin against real servers: an HTTP server for webhooks and Slack, aiosmtpd for
email; jobs run end to end, in process and through the ``etl`` command."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from etl_plugins import notify
from loguru import logger

import etl

ROOT = Path(__file__).resolve().parents[2]


# -- Servers --------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: Message  # case-insensitive, as HTTP headers are
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Hooks:
    """A local HTTP server that records every POST and answers from a script of statuses."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # the next answers; 200 when empty
    delay: float = 0.0  # before answering
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        hooks: Hooks = self.server.hooks
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with hooks.changed:
            status = hooks.statuses.pop(0) if hooks.statuses else 200
        time.sleep(hooks.delay)
        answer = b"ok" if status < 400 else b"no_service"
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        with hooks.changed:
            hooks.received.append(Received(self.path, self.headers, body))
            hooks.changed.notify_all()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hooks():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.hooks = Hooks(url=f"http://127.0.0.1:{server.server_address[1]}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.hooks  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()
    thread.join(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dead_url() -> str:
    """A URL where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{_free_port()}/hook"


@pytest.fixture
def silent_url():
    """A URL whose server accepts connections (into its backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


@dataclass
class Mailbox:
    host: str
    port: int
    messages: list[Any] = field(default_factory=list)  # aiosmtpd envelopes
    logins: list[tuple[str, str]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        self.arrived.set()
        return "250 OK"


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    mailbox = Mailbox("127.0.0.1", _free_port())

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            mailbox.logins.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=data.password == b"mail-pw", handled=False)
        return AuthResult(success=False, handled=False)

    controller = Controller(
        mailbox, hostname=mailbox.host, port=mailbox.port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    yield mailbox
    controller.stop()


@pytest.fixture
def logs():
    """The log lines of the test (the plugin logs through loguru like any library)."""
    lines: list[str] = []
    logger.enable("etl_plugins")  # a library's lines, which an application opts in to
    logger.add(lambda message: lines.append(message.record["message"]), level="DEBUG", format="{message}")
    return lines


@pytest.fixture(autouse=True)
def _no_delivery_left_behind():
    yield
    assert notify.flush(timeout=15), "a notification was still being sent after the test"


# -- Jobs -----------------------------------------------------------------------------------


def job_file(write, notify_yaml: str, *, rows: int = 30, fail: bool = False, name: str = "job.yaml") -> Path:
    """A job of ``rows`` generated rows into JSON lines, with ``notify:`` as given (YAML, one
    target a line or block); ``fail``: a cast that rejects the first row fails chunk 0."""
    lines = [
        "name: notified",
        f"source: {{type: generate, rows: {rows}, seed: 1}}",
        *(['transforms: [{type: cast, columns: {forecast: "decimal(3, 2)"}}]'] if fail else []),
        "sink: {type: jsonl, path: out}",
        "chunk_size: 10",
        "notify:",
        *("  " + line for line in notify_yaml.strip("\n").splitlines()),
    ]
    return write(name, "\n".join(lines) + "\n")


def run(path: Path) -> etl.RunResult:
    """Run the job in this process; wait for its notifications."""
    try:
        result = etl.run(path)
    except etl.JobFailed as exc:
        result = exc.result
    assert notify.flush(timeout=30)
    return result


def docs_verify():
    """The ``verify`` function of docs/notifications.md: the snippet readers copy works."""
    text = (ROOT / "docs/notifications.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify" in block]
    scope: dict[str, Any] = {}
    exec(code, scope)
    return scope["verify"]


# -- Webhooks -------------------------------------------------------------------------------


def test_a_completed_run_posts_its_summary(hooks, write):
    result = run(job_file(write, f"- {{type: webhook, url: '{hooks.url}/etl?team=data'}}"))
    [request] = hooks.wait(1)
    assert request.path == "/etl?team=data"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Etl-Event"] == "run.completed"
    assert request.headers["User-Agent"] == f"etl-toolkit/{etl.__version__}"
    assert "X-Etl-Signature" not in request.headers
    body = request.json()
    assert body["event"] == "run.completed"
    assert (body["job"], body["run_id"], body["state"]) == ("notified", result.run_id, "completed")
    assert (body["rows_total"], body["rows_read"], body["rows_written"], body["rows_rejected"]) == (30, 30, 30, 0)
    assert (body["chunks_total"], body["chunks_done"], body["retries"]) == (3, 3, 0)
    assert body["error"] is None and body["error_type"] is None and body["error_chunk"] is None
    assert body["host"] == socket.gethostname()
    assert body["started_at"].endswith("Z") and body["finished_at"] >= body["started_at"]
    assert body["seconds"] >= 0 and body["rows_per_second"] >= 0
    assert body["etl_version"] == etl.__version__
    [example] = re.findall(r"```json\n(.*?)```", (ROOT / "docs/notifications.md").read_text(), re.S)
    assert list(body) == list(json.loads(example)), "docs/notifications.md shows another body"


def test_a_failed_run_sends_its_error(hooks, write):
    result = run(job_file(write, f"- {{type: webhook, url: '{hooks.url}'}}", fail=True))
    assert result.state == "failed"
    [request] = hooks.wait(1)
    body = request.json()
    assert request.headers["X-Etl-Event"] == "run.failed" and body["event"] == "run.failed"
    assert body["state"] == "failed" and body["run_id"] == result.run_id
    assert body["error"] == result.error and "cannot cast to decimal128(3, 2)" in body["error"]
    assert body["error_type"] == "RejectedRows" and body["error_chunk"] == 0
    assert body["rows_written"] == 0 and body["chunks_done"] == 0


def test_a_signed_body_verifies_with_the_secret_and_not_with_another(hooks, write, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cr3t-from-env")
    run(job_file(write, f"- {{type: webhook, url: '{hooks.url}', secret: '${{HOOK_SECRET}}'}}"))
    [request] = hooks.wait(1)
    timestamp, signature = request.headers["X-Etl-Timestamp"], request.headers["X-Etl-Signature"]
    assert abs(int(timestamp) - time.time()) < 60
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", signature)
    verify = docs_verify()
    assert verify(b"s3cr3t-from-env", request.body, timestamp, signature)
    assert not verify(b"another-secret", request.body, timestamp, signature)
    assert not verify(b"s3cr3t-from-env", request.body.replace(b"completed", b"COMPLETED"), timestamp, signature)
    assert not verify(b"s3cr3t-from-env", request.body, str(int(timestamp) + 1), signature)
    # A replay: the same request, presented ten minutes later, is refused.
    assert not verify(b"s3cr3t-from-env", request.body, timestamp, signature, now=int(timestamp) + 600)


def test_headers_are_sent(hooks, write, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "t0ken")
    run(
        job_file(
            write,
            f"""
- type: webhook
  url: {hooks.url}
  secret: k
  headers: {{Authorization: "Bearer ${{HOOK_TOKEN}}", content-type: application/vnd.etl+json}}
""",
        )
    )
    [request] = hooks.wait(1)
    assert request.headers["Authorization"] == "Bearer t0ken"
    assert request.headers["Content-Type"] == "application/vnd.etl+json"  # one Content-Type: theirs
    assert docs_verify()(b"k", request.body, request.headers["X-Etl-Timestamp"], request.headers["X-Etl-Signature"])


def test_when_picks_the_outcomes_a_target_hears_of(hooks, write):
    targets = f"""
- {{type: webhook, url: '{hooks.url}/both'}}
- {{type: webhook, url: '{hooks.url}/completed', when: [completed]}}
- {{type: webhook, url: '{hooks.url}/failed', when: [failed]}}
"""
    run(job_file(write, targets))
    assert sorted(r.path for r in hooks.wait(2)) == ["/both", "/completed"]
    hooks.received.clear()
    run(job_file(write, targets, fail=True))
    assert sorted(r.path for r in hooks.wait(2)) == ["/both", "/failed"]


def test_a_cancelled_run_is_told_to_the_targets_that_ask_for_it(hooks, write):
    write(
        "stop.py",
        """
        from etl import Transform, hookimpl

        class Stop(Transform):
            name = "stop"

            def apply(self, batch):
                raise KeyboardInterrupt  # Ctrl-C in the middle of the run

        @hookimpl
        def etl_register_transforms():
            return [Stop]
        """,
    )
    targets = f"""
- {{type: webhook, url: '{hooks.url}/default'}}
- {{type: webhook, url: '{hooks.url}/cancelled', when: [cancelled]}}
"""
    path = job_file(write, targets)
    path.write_text(path.read_text().replace("sink:", "plugins: [stop.py]\ntransforms: [{type: stop}]\nsink:"))
    with pytest.raises(KeyboardInterrupt):
        etl.run(path)
    assert notify.flush(timeout=30)
    [request] = hooks.wait(1)
    assert request.path == "/cancelled", "the default is completed and failed"
    body = request.json()
    assert (request.headers["X-Etl-Event"], body["state"], body["error"]) == ("run.cancelled", "cancelled", None)


def test_a_run_without_notify_sends_nothing(hooks, write):
    path = write("job.yaml", "name: quiet\nsource: {type: generate, rows: 5}\nsink: {type: jsonl, path: out}\n")
    run(path)
    assert hooks.wait(1, timeout=0.5) == []


# -- Slack ----------------------------------------------------------------------------------


def test_slack_gets_a_line_of_text(hooks, write):
    result = run(job_file(write, f"- {{type: slack, url: '{hooks.url}/services/T0/B0/XYZ'}}"))
    [request] = hooks.wait(1)
    payload = request.json()
    assert list(payload) == ["text"]
    assert payload["text"].startswith("✅ notified completed: 30 rows written in ")
    assert f"run {result.run_id}" in payload["text"]


def test_slack_blocks_and_a_failure(hooks, write):
    result = run(job_file(write, f"- {{type: slack, url: '{hooks.url}', blocks: true}}", fail=True))
    payload = hooks.wait(1)[0].json()
    assert payload["text"].startswith("❌ notified failed at chunk 0 after ")
    assert result.error in payload["text"]
    assert [block["type"] for block in payload["blocks"]] == ["section", "section", "section", "context"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in payload["blocks"][1]["fields"]}
    assert fields["*State*"] == "failed" and fields["*Rows written*"] == "0"
    assert result.error[:50] in payload["blocks"][2]["text"]["text"]


# -- Retries and failures -------------------------------------------------------------------


def test_a_500_is_retried_and_the_retry_is_the_same_delivery(hooks, write, logs):
    hooks.statuses = [500, 503]
    run(job_file(write, f"- {{type: webhook, url: '{hooks.url}/x', secret: k, backoff: 50ms}}"))
    requests = hooks.wait(3)
    assert len(requests) == 3
    assert len({r.headers["X-Etl-Delivery"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    failures = [line for line in logs if "failed (attempt" in line]
    assert failures == [
        f"notification to webhook {hooks.url} failed (attempt 1/3): HTTP 500 Internal Server Error: no_service; "
        "retrying in 0.05s",
        f"notification to webhook {hooks.url} failed (attempt 2/3): HTTP 503 Service Unavailable: no_service; "
        "retrying in 0.1s",
    ]
    assert f"notified webhook {hooks.url} (run.completed)" in logs


def test_a_4xx_is_not_retried(hooks, write, logs):
    hooks.statuses = [404]
    run(job_file(write, f"- {{type: slack, url: '{hooks.url}/services/T/B/secret-part', backoff: 10ms}}"))
    assert len(hooks.wait(2, timeout=1)) == 1
    assert f"notification to slack {hooks.url} failed: HTTP 404 Not Found: no_service" in logs
    assert not any("secret-part" in line for line in logs)


def test_retries_stop_after_the_last_attempt(dead_url, write, logs):
    result = run(job_file(write, f"- {{type: webhook, url: '{dead_url}', retries: 1, backoff: 10ms}}"))
    assert result.state == "completed"
    port = dead_url.split(":")[2].split("/")[0]
    assert [line for line in logs if "notification" in line] == [
        f"notification to webhook http://127.0.0.1:{port} failed (attempt 1/2): ConnectError: "
        "[Errno 111] Connection refused; retrying in 0.01s",
        f"notification to webhook http://127.0.0.1:{port} failed after 2 attempt(s): ConnectError: "
        "[Errno 111] Connection refused; check the URL's host and port, that the endpoint is up, and the network "
        "in between (firewall, proxy)",
    ]


def test_a_dead_endpoint_is_logged_and_the_run_still_succeeds(cli, write, dead_url):
    path = job_file(write, f"- {{type: webhook, url: '{dead_url}', retries: 2, backoff: 100ms}}")
    result = cli("run", str(path))
    assert result.returncode == 0, result.stderr
    assert "completed: 30 rows written" in result.stderr
    assert "failed (attempt 1/3): ConnectError" in result.stderr
    assert "failed after 3 attempt(s): ConnectError" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_waits_for_a_slow_endpoint_before_it_exits(cli, write, hooks):
    hooks.delay = 1.0
    path = job_file(write, f"- {{type: webhook, url: '{hooks.url}'}}")
    result = cli("run", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "completed"
    assert "waiting for 1 notification(s) to be sent" in result.stderr
    assert f"notified webhook {hooks.url} (run.completed)" in result.stderr
    assert len(hooks.received) == 1


def test_a_failed_run_exits_1_after_notifying(cli, write, hooks):
    result = cli("run", str(job_file(write, f"- {{type: webhook, url: '{hooks.url}'}}", fail=True)))
    assert result.returncode == 1
    assert f"notified webhook {hooks.url} (run.failed)" in result.stderr
    assert hooks.received[0].json()["state"] == "failed"


def test_a_silent_endpoint_costs_at_most_the_budget(silent_url, write, logs):
    path = job_file(
        write, f"- {{type: webhook, url: '{silent_url}', timeout: 300ms, backoff: 200ms, retries: 10, budget: 1s}}"
    )
    started = time.monotonic()
    result = etl.run(path)
    ran = time.monotonic() - started
    assert result.state == "completed" and ran < 5  # the run did not wait for the endpoint
    assert notify.flush(timeout=10)
    assert time.monotonic() - started < ran + 1 + 0.5  # the run, then the budget (and a little)
    # 0.3s, a 0.2s wait, 0.3s: a wait of 0.4s would end past the budget.
    assert [line.split(": ", 1)[1] for line in logs if line.startswith("notification to")] == [
        "no answer within 0.3s (ReadTimeout); retrying in 0.2s",
        "no answer within 0.3s (ReadTimeout); giving up after 2 attempt(s) (a retry would end past its budget of "
        "1s); check the URL's host and port, that the endpoint is up, and the network in between (firewall, proxy)",
    ]


def test_the_command_gives_up_on_a_silent_endpoint_within_the_budget(cli, write, silent_url):
    path = job_file(write, f"- {{type: webhook, url: '{silent_url}', timeout: 500ms, budget: 2s}}")
    started = time.monotonic()
    result = cli("run", str(path))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "no answer within 0.5s" in result.stderr


def test_flush_with_a_timeout_returns_while_deliveries_are_in_flight(silent_url, write):
    etl.run(job_file(write, f"- {{type: webhook, url: '{silent_url}', timeout: 1s, retries: 0, budget: 1s}}"))
    started = time.monotonic()
    assert notify.flush(timeout=0.1) is False
    assert time.monotonic() - started < 0.5


# -- Email ----------------------------------------------------------------------------------


def test_an_email_reaches_every_recipient(smtp, write, monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", "mail-pw")
    result = run(
        job_file(
            write,
            f"""
- type: email
  host: {smtp.host}
  port: {smtp.port}
  starttls: false
  username: etl
  password: ${{SMTP_PASSWORD}}
  sender: ETL <etl@example.com>
  to: [ops@example.com, data@example.com]
""",
        )
    )
    assert smtp.arrived.wait(10)
    [envelope] = smtp.messages
    assert smtp.logins == [("etl", "mail-pw")]
    assert envelope.mail_from == "etl@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "data@example.com"]
    from email import message_from_bytes
    from email.policy import default

    mail = message_from_bytes(envelope.original_content, policy=default)
    assert mail["Subject"] == "etl: notified completed (30 rows)"
    assert mail["From"] == "ETL <etl@example.com>" and mail["To"] == "ops@example.com, data@example.com"
    assert mail["X-Etl-Event"] == "run.completed"
    text = mail.get_content().replace("\r\n", "\n")
    assert text.startswith("✅ notified completed: 30 rows written")
    assert f"run_id: {result.run_id}\n" in text and "rows_written: 30\n" in text
    assert f"host: {socket.gethostname()}\n" in text


def test_an_email_for_a_failed_run(smtp, write):
    result = run(
        job_file(
            write,
            f"- {{type: email, host: {smtp.host}, port: {smtp.port}, starttls: false, sender: etl@example.com, "
            "to: [ops@example.com], when: [failed]}",
            fail=True,
        )
    )
    assert smtp.arrived.wait(10)
    from email import message_from_bytes
    from email.policy import default

    mail = message_from_bytes(smtp.messages[0].original_content, policy=default)
    assert mail["Subject"] == "etl: notified FAILED at chunk 0"
    assert f"error: {result.error}\n" in mail.get_content().replace("\r\n", "\n")


def test_a_wrong_smtp_password_is_not_retried(smtp, write, logs):
    run(
        job_file(
            write,
            f"- {{type: email, host: {smtp.host}, port: {smtp.port}, starttls: false, username: etl, "
            "password: wrong, sender: etl@example.com, to: [ops@example.com], backoff: 10ms}",
        )
    )
    assert smtp.logins and set(smtp.logins) == {("etl", "wrong")}  # smtplib tries PLAIN, then LOGIN
    assert smtp.messages == []
    failed = [line for line in logs if line.startswith("notification to email")]
    assert failed == [
        f"notification to email via {smtp.host}:{smtp.port} to 1 recipient(s) failed: SMTP 535 "
        "5.7.8 Authentication credentials invalid"
    ]


def test_starttls_is_required_unless_turned_off(smtp, write, logs):
    run(
        job_file(
            write,
            f"- {{type: email, host: {smtp.host}, port: {smtp.port}, sender: etl@example.com, to: [ops@example.com]}}",
        )
    )
    assert smtp.messages == []
    assert any("STARTTLS extension not supported by server" in line and "set starttls: false" in line for line in logs)


# -- Configuration --------------------------------------------------------------------------


BAD_TARGETS = [
    (
        "- {type: webhok, url: 'http://x'}",
        6,
        "notify[0]: type 'webhok' is not one of: webhook, slack, email; did you mean \"webhook\"?",
    ),
    ("- {url: 'http://x'}", 6, "notify[0]: missing `type:`; expected one of: webhook, slack, email"),
    ("- {type: webhook}", 6, "notify[0].url: missing; expected the URL to POST to"),
    (
        "- type: slack\n  url: http://x\n  when: [sometimes]",
        8,
        "notify[0].when[0]: 'sometimes' is not one of: completed, failed",
    ),
    ("- {type: slack, url: 'http://x', when: []}", 6, "notify[0].when: list should have at least 1 item"),
    ("- {type: webhook, url: 'ftp://x'}", 6, "notify[0].url: 'ftp://x' is not an http(s) URL"),
    ("- {type: webhook, url: 'http://x:99999'}", 6, "notify[0].url: the URL's port is not a number from 0 to 65535"),
    ("- {type: webhook, url: 7}", 6, "notify[0].url: 7: should be a valid string"),
    (
        "- {type: webhook, url: 'http://x', headers: {x-etl-signature: forged}}",
        6,
        "notify[0].headers: x-etl-signature: X-Etl-* headers are set by etl; use another name",
    ),
    ("- {type: webhook, url: 'http://x', retries: 50}", 6, "notify[0].retries: 50: should be less than or equal to 10"),
    ("- {type: webhook, url: 'http://x', timeout: 0}", 6, "notify[0].timeout: must be more than 0"),
    ("- {type: webhook, url: 'http://x', budget: soon}", 6, "notify[0].budget: 'soon' is not a duration"),
    (
        "- {type: webhook, url: 'http://x', on: [failed]}",
        6,
        "notify[0].True: `on:` is read by YAML as true; write `when:`",
    ),
    (
        "- {type: email, hots: h, sender: a@b.c, to: [x@y.z]}",
        6,
        'notify[0].hots: unknown key; did you mean "host"? (valid keys with type email: type, when,',
    ),
    ("- {type: email, sender: a@b.c, to: [x@y.z]}", 6, "notify[0].host: missing; expected the SMTP server"),
    ("- {type: email, host: h, sender: nope, to: [x@y.z]}", 6, "notify[0].sender: 'nope' is not an email address"),
    ("- {type: email, host: h, sender: a@b.c, to: []}", 6, "notify[0].to: list should have at least 1 item"),
    (
        "- {type: email, host: h, sender: a@b.c, to: [x@y.z], username: u}",
        6,
        "notify[0]: set both username and password",
    ),
    (
        "- {type: email, host: h, sender: a@b.c, to: [x@y.z], ssl: true, starttls: true}",
        6,
        "notify[0]: set ssl: true or starttls: true, not both",
    ),
    ("- ping", 6, "notify[0]: 'ping': should be a valid dictionary"),
    ("{type: webhook, url: 'http://x'}", 5, "notify: should be a valid list"),
]


@pytest.mark.parametrize(("targets", "line", "expected"), BAD_TARGETS)
def test_a_bad_target_is_a_config_error_at_its_line(write, targets, line, expected):
    with pytest.raises(etl.ConfigErrors) as info:
        etl.load_job(job_file(write, targets))
    assert f"job.yaml:{line}: {expected}" in str(info.value)


def test_a_notify_mapping_on_one_line_is_an_error_at_the_key(write):
    path = write(
        "job.yaml",
        "name: x\nsource: {type: generate, rows: 1}\nsink: {type: jsonl, path: out}\nnotify: {type: slack}\n",
    )
    with pytest.raises(etl.ConfigErrors, match=r"job.yaml:4: notify: should be a valid list"):
        etl.load_job(path)


def test_defaults_and_durations(write):
    job = etl.load_job(job_file(write, "- {type: webhook, url: 'http://x', timeout: 2s, budget: 1m, backoff: 500ms}"))
    [target] = job.extras["notify"]
    assert (target.when, target.retries) == (["completed", "failed"], 2)
    assert (target.timeout, target.budget, target.backoff) == (2.0, 60.0, 0.5)
    email = etl.load_job(job_file(write, "- {type: email, host: h, sender: a@b.c, to: [x@y.z]}")).extras["notify"][0]
    assert (email.starttls, email.ssl, email.effective_port) == (True, False, 587)
    ssl = etl.load_job(job_file(write, "- {type: email, host: h, ssl: true, sender: a@b.c, to: [x@y.z]}"))
    assert ssl.extras["notify"][0].effective_port == 465


SECRETS = """
- type: webhook
  url: https://hooks.example.com/etl
  secret: ${HOOK_SECRET}
  headers: {Authorization: "Bearer ${TOKEN}"}
- type: slack
  url: ${SLACK_URL}
- type: email
  host: smtp.example.com
  username: etl
  password: ${SMTP_PASSWORD}
  sender: etl@example.com
  to: [ops@example.com]
- type: webhook
  url: https://hooks.example.com/literal
  secret: literal-secret
"""
ENV = {
    "HOOK_SECRET": "hook-s3cr3t",
    "TOKEN": "t0ken",
    "SLACK_URL": "https://hooks.slack.com/services/T/B/sl4ck",
    "SMTP_PASSWORD": "sm7p-pw",
}


def test_secrets_are_masked_in_describe(write, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    job = etl.load_job(job_file(write, SECRETS))
    webhook, slack, email, literal = job.extras["notify"]
    assert webhook.secret.get_secret_value() == "hook-s3cr3t" and slack.url == ENV["SLACK_URL"]
    shown = job.describe()["notify"]
    assert shown[0]["secret"] == "${HOOK_SECRET}" and shown[0]["headers"] == {"Authorization": "Bearer ${TOKEN}"}
    assert shown[1]["url"] == "${SLACK_URL}" and shown[2]["password"] == "${SMTP_PASSWORD}"
    assert shown[3]["secret"] == "***"
    text = json.dumps(shown)
    assert not any(value in text for value in [*ENV.values(), "literal-secret"])


def test_validate_show_masks_secrets(cli, write):
    path = job_file(write, SECRETS)
    result = cli("validate", str(path), "--show", env=ENV)
    assert result.returncode == 0, result.stderr
    assert "secret: ${HOOK_SECRET}" in result.stdout and "password: ${SMTP_PASSWORD}" in result.stdout
    assert not any(value in result.stdout for value in [*ENV.values(), "literal-secret"])


def test_validate_reports_a_bad_target_with_its_line(cli, write):
    path = job_file(write, "- {type: webhook, url: 'http://x'}\n- {type: slack, when: [sometimes]}")
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert f"{path}:7: notify[1].url: missing" in result.stderr
    assert f"{path}:7: notify[1].when[0]: 'sometimes' is not one of: completed, failed" in result.stderr


def test_the_json_schema_describes_the_targets():
    from etl.manager import StageRegistry, get_plugin_manager
    from etl.schema import job_schema

    schema = job_schema(StageRegistry(get_plugin_manager()))
    items = schema["properties"]["notify"]["anyOf"][0]["items"]
    assert items["discriminator"]["propertyName"] == "type"
    assert set(items["discriminator"]["mapping"]) == {"webhook", "slack", "email"}
    assert schema["$defs"]["WebhookTarget"]["properties"]["secret"]["anyOf"][0]["format"] == "password"


# -- Background runs ------------------------------------------------------------------------


def test_a_background_run_on_the_embedded_queue_notifies_once(cli, write, hooks):
    path = job_file(write, f"- {{type: webhook, url: '{hooks.url}'}}")
    result = cli("run", str(path), "--background", "--wait")
    assert result.returncode == 0, result.stderr
    [request] = hooks.received  # sent, once, before the command returned
    body = request.json()
    assert body["state"] == "completed" and body["rows_written"] == 30 and body["chunks_done"] == 3
    assert body["run_id"] in result.stdout + result.stderr


def test_a_failed_background_run_notifies_its_error(cli, write, hooks):
    result = cli("run", str(job_file(write, f"- {{type: webhook, url: '{hooks.url}'}}", fail=True)), "--background")
    assert result.returncode == 1, result.stderr
    [request] = hooks.received
    body = request.json()
    assert body["state"] == "failed" and "cannot cast" in body["error"]
    assert body["error_chunk"] in (0, 1, 2)  # chunks run in parallel: whichever failed first
