"""The API keeps its contract: schemathesis sends what /api/openapi.json describes (and what it
refuses: out-of-bounds values, missing parameters, undeclared methods, no token, a wrong token)
to the dashboard's app, on a real Redis queue with real runs in it, and checks every response
against the description: status, content type, headers and body, event streams included.

The suite runs a bounded number of cases (seconds); `make fuzz-api` runs many more
(``ETL_API_EXAMPLES``, with a new seed each time).
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid

import jsonschema
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from etl.errors import JobFailed
from etl.web.openapi import openapi_schema
from tests.background.conftest import STAGES, quick_queue

TOKEN = "contract-token"
EXAMPLES = int(os.environ.get("ETL_API_EXAMPLES", "15"))
STEPS = int(os.environ.get("ETL_API_STEPS", "10"))
STREAM_EVENTS = 2 if "ETL_API_EXAMPLES" in os.environ else 1


def _job(path, name: str, rows: int, transforms: str = "[]") -> str:
    path.write_text(
        textwrap.dedent(f"""\
            name: {name}
            plugins: ["{STAGES}"]
            params: {{day: {{type: string, default: "2026-01-01"}}}}
            source: {{type: generate, rows: {rows}, columns: {{id: {{kind: sequence}}}}}}
            transforms: {transforms}
            sink: {{type: parquet, path: "{path.parent / "out" / name}"}}
            chunk_size: 50
            retry: {{attempts: 1}}
        """)
    )
    return str(path)


def _add_runs(queue, tmp) -> None:
    """Runs in every state, the newest first in a listing: a failed one (in process: with a log),
    a completed one (with a log and a parameter), a cancelled one, two waiting ones."""
    from etl import api

    ok = _job(tmp / "ok.yaml", "ok", 120)
    for _ in range(2):
        api.submit(ok, queue=queue)
    api.cancel(api.submit(ok, queue=queue).id, queue)
    api.run(ok, params={"day": "2026-02-01"})
    marker = tmp / "down.marker"
    marker.write_text("down")
    broken = _job(tmp / "broken.yaml", "broken", 120, f'[{{type: fail_while, marker: "{marker}", on_id: 60}}]')
    with pytest.raises(JobFailed) as failed:
        api.run(broken)
    # What a worker (or `etl run`) writes, where the dashboard reads it: ETL_HOME/runs/RUN/run.log.
    log = api.state_dir() / "runs" / failed.value.result.run_id / "run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("planned broken: 3 chunks\nchunk 1 failed: the upstream service is down\n")


@pytest.fixture(scope="module")
def world(redis_url, tmp_path_factory):
    """A queue of its own with runs in every state, and a configs directory with a scheduled job
    and an invalid file."""
    from etl import api

    tmp = tmp_path_factory.mktemp("contract")
    with pytest.MonkeyPatch.context() as mp:
        env = quick_queue(redis_url, f"t{uuid.uuid4().hex[:10]}", tmp, mp)
        queue = api.open_queue()
        _add_runs(queue, tmp)
        configs = tmp / "configs"
        configs.mkdir()
        (configs / "nightly.yaml").write_text(
            'name: nightly\nschedule: "30 2 * * *"\nsource: {type: generate, rows: 1}\nsink: {type: jsonl, path: out}\n'
        )
        (configs / "bad.yaml").write_text("name: bad\nsource: {type: nope}\n")
        yield queue, str(configs), tmp
        _forget(env["ETL_QUEUE_URL"], env["ETL_QUEUE_NAME"])


def _keys(client, name: str) -> list[bytes]:
    return [k for pattern in (f"{name}:*", f"huey.*{name}*") for k in client.scan_iter(match=pattern, count=1000)]


def _forget(url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    if keys := _keys(client, name):
        client.unlink(*keys)


class _Snapshot:
    """The queue's keys as they were, put back before each sequence of calls: a sequence that
    cancels, retries or cleans runs leaves the next one the same runs to act on (hypothesis
    replays a sequence, and refuses one whose links lead elsewhere the second time)."""

    def __init__(self, queue) -> None:
        import redis

        self.name = queue.settings.name
        self.client = redis.Redis.from_url(queue.settings.url)
        self.dumps = {key: self.client.dump(key) for key in _keys(self.client, self.name)}

    def restore(self) -> None:
        if keys := _keys(self.client, self.name):
            self.client.unlink(*keys)
        for key, dumped in self.dumps.items():
            self.client.restore(key, 0, dumped, replace=True)


def _config(seed: int | None) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            **({"seed": seed} if seed is not None else {}),
            "base-url": "http://testserver",
            "generation": {"max-examples": EXAMPLES, "database": "none"},
            "phases": {"stateful": {"max-steps": STEPS}},
            "auth": {"openapi": {"token": {"bearer": TOKEN}}},
            # An event stream may never end: read two events, or for a second; a run's stream,
            # one event (a second per call to an unfinished run's adds up; `make fuzz-api` reads
            # two; tests/background/test_dashboard.py checks whole streams against the schema).
            "max-stream-events": 2,
            "request-timeout": 1,
            "operations": [{"include-operation-id": "getRunEvents", "max-stream-events": STREAM_EVENTS}],
        }
    )


class _App:
    """The dashboard's app, made by the `app` fixture: schemathesis loads a schema at import time
    (its loader from a fixture doesn't work with pytest 9.2: it sets a node's `_nodeid`, gone),
    and sends every call, in process, to the app the schema names."""

    app = None

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


APP = _App()
# What /api/openapi.json serves (test_the_description_is_what_the_api_serves).
schema = schemathesis.openapi.from_dict(
    openapi_schema(), config=_config(None if "ETL_API_EXAMPLES" in os.environ else 20261128)
)
schema.app = APP


@pytest.fixture(scope="module")
def app(world):
    from etl.web.app import DashboardSettings, create_app

    queue, configs, _ = world
    settings = DashboardSettings(
        token=TOKEN,
        configs=configs,
        allowed_hosts=("testserver",),  # schemathesis's ASGI client
        free_guesses=1_000_000,  # wrong tokens are part of the test: none must be slowed down
    )
    APP.app = create_app(queue, settings)
    yield APP.app
    APP.app = None


@schema.parametrize()
def test_every_operation_keeps_the_contract(case, app):
    """Examples, boundary and negative values (the coverage phase, undeclared methods too) and
    generated ones, for every operation, with and without the token."""
    case.call_and_validate()


def test_sequences_of_calls_on_real_runs_keep_the_contract(app, world):
    """Listing runs, then following the links to one of them (a failed one, unless a step
    filtered the listing): read it, its chunks, log and events; retry it; cancel it."""
    queue, _, tmp = world
    _add_runs(queue, tmp)  # the calls above cleaned some
    snapshot = _Snapshot(queue)

    class Workflow(schema.as_state_machine()):
        def setup(self) -> None:
            snapshot.restore()

    Workflow.run()


def test_the_description_is_what_the_api_serves(app):
    served = schemathesis.openapi.from_asgi("/api/openapi.json", app).raw_schema
    assert served == openapi_schema("http://testserver")


def test_the_description_is_valid_openapi_and_every_run_field_is_described(world):
    from etl.web.data import run_json

    queue, _, _ = world
    described = openapi_schema()
    schemathesis.openapi.from_dict(described).validate()
    run = queue.store.list_runs(limit=1)[0]
    shown = run_json(run, queue.store.get_chunks(run.id, run.chunks_total))
    properties = described["components"]["schemas"]["Run"]["properties"]
    assert set(shown) == set(properties), "etl/web/openapi.py must describe every field of a run, and only those"
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/Run", "components": described["components"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    validator.validate(json.loads(json.dumps(shown)))


def _get(app, path: str, events: int = 0) -> tuple[int, bytes]:
    """GET ``path`` from the app in process: its status and body; of an event stream, its first
    ``events`` events (then the client goes away)."""
    import anyio

    async def call() -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        status, body = 0, b""
        done = anyio.Event()

        async def receive():
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body += message.get("body", b"")
                if events and body.count(b"\n\n") >= events:
                    done.set()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tasks:

                async def serve() -> None:
                    await app(scope, receive, send)
                    done.set()

                tasks.start_soon(serve)
                await done.wait()
                tasks.cancel_scope.cancel()
        return status, body

    return anyio.run(call)


def test_every_run_the_web_shows_is_serialized_by_run_to_json(world, app, monkeypatch):
    """One function says what of a run is shown (RunRecord.to_json: where secrets are masked):
    the listing, one run and both event streams all go through it."""
    from etl.store import RunRecord

    original = RunRecord.to_json

    def marked(self, *args, **kwargs):
        return {**original(self, *args, **kwargs), "through_to_json": True}

    monkeypatch.setattr(RunRecord, "to_json", marked)
    queue, _, _ = world
    run = queue.store.list_runs(state="waiting", limit=1)[0]
    status, body = _get(app, "/api/runs")
    assert status == 200 and all(r["through_to_json"] for r in json.loads(body))
    assert json.loads(_get(app, f"/api/runs/{run.id}")[1])["through_to_json"]
    for path, count in ((f"/api/runs/{run.id}/events", 1), ("/api/events", 3)):
        status, body = _get(app, path, events=count)
        shown = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
        runs = [d for d in shown if "job" in d]
        assert status == 200 and runs and all(r["through_to_json"] for r in runs), body
