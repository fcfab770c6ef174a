"""Every network wait is bounded and says what it waits for: BigQuery's REST and Storage Read
APIs, PostgreSQL (the sink's psycopg, the source's ADBC driver), webhooks and SMTP, each against
loopback servers that accept and never answer, refuse, or drop a connection mid-stream
(``tests/hostile.py``). Each test sets deadlines of a second or two and asserts that the call
fails well within them plus slack (a bound that proves it doesn't hang, not a benchmark), with
a message naming the endpoint and what to check, and that each retry was logged."""

from __future__ import annotations

import base64
import contextlib
import re
import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pytest
from etl_plugins import notify
from etl_plugins._deadlines import DeadlineOptions, Deadlines, shown
from etl_plugins.notify._delivery import deliver
from etl_plugins.notify._message import Message
from loguru import logger
from pydantic import ValidationError

import etl
from etl import Chunk, PermanentError, TransientError
from tests import hostile
from tests.contract.cases_postgres import DSN
from tests.contract.framework import across_processes, make_stage, registry

#: What a bounded wait may take beyond its deadlines: a loaded 2-core machine, start-up costs.
SLACK = 8.0
PROJECT = "test-project"

SHAPES = {
    "silent": hostile.silent,
    "refusing": hostile.refusing,
}


@pytest.fixture
def lines() -> list[str]:
    """The log lines of the test: the core's (chunk retries) and the plugins' (call retries)."""
    found: list[str] = []
    logger.enable("etl")
    logger.enable("etl_plugins")
    logger.add(lambda message: found.append(message.record["message"]), level="DEBUG", format="{message}")
    return found


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Assert that the block takes less than ``seconds`` (plus :data:`SLACK`)."""
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    assert took < seconds + SLACK, f"took {took:.1f}s, more than {seconds}s and {SLACK}s of slack"


# -- the options -----------------------------------------------------------------------------------


def test_the_job_wins_over_the_environment_which_wins_over_the_defaults():
    env = {"ETL_CONNECT_TIMEOUT": "5s", "ETL_STATEMENT_TIMEOUT": "2h"}
    deadlines = Deadlines.of(DeadlineOptions(connect_timeout=3), env)
    assert (deadlines.connect, deadlines.timeout, deadlines.statement) == (3.0, 60.0, 7200.0)
    assert [deadlines.origin(n) for n in ("connect_timeout", "timeout", "statement_timeout")] == [
        "job",
        "default",
        "environment",
    ]
    assert Deadlines.of(DeadlineOptions(), {}).connect == 30.0


def test_a_bad_environment_value_names_the_variable():
    with pytest.raises(PermanentError, match=r"ETL_TIMEOUT: 'soon' is not a duration"):
        Deadlines.of(DeadlineOptions(), {"ETL_TIMEOUT": "soon"})
    with pytest.raises(PermanentError, match=r"ETL_CONNECT_TIMEOUT: '0' must be more than 0"):
        Deadlines.of(DeadlineOptions(), {"ETL_CONNECT_TIMEOUT": "0"})


@pytest.mark.parametrize("stage", ["postgres", "bigquery"])
@pytest.mark.parametrize("kind", ["source", "sink"])
def test_every_database_stage_takes_the_same_options(kind, stage):
    options = registry().get(kind, stage).cls.Options  # type: ignore[union-attr]
    assert {"connect_timeout", "timeout", "statement_timeout"} <= set(options.model_fields)
    with pytest.raises(ValidationError, match="must be more than 0"):
        options.model_validate({"table": "a.b.c", "timeout": 0})


def test_durations_are_shown_as_a_job_writes_them():
    assert [shown(s) for s in (0.5, 2, 1.5, 90, 300, 3600)] == ["500ms", "2s", "1.5s", "90s", "5m", "1h"]


# -- BigQuery: REST ----------------------------------------------------------------------------------


def bq_source(options: dict):
    return make_stage("source", {"type": "bigquery", "project": PROJECT, **options})


@pytest.mark.parametrize("shape", ["silent", "refusing", "dropping"])
def test_bigquery_rest_gives_up_within_its_deadline_naming_the_endpoint(shape, lines):
    server = hostile.dropping(hostile.http_partial) if shape == "dropping" else SHAPES[shape]()
    with server as (host, port):
        endpoint = f"http://{host}:{port}"
        stage = bq_source({"table": "d.t", "api_endpoint": endpoint, "connect_timeout": "1s", "timeout": "1500ms"})
        with within(3), pytest.raises(TransientError) as info:
            stage.count()
    message = str(info.value)
    assert message.startswith("source: reading table test-project.d.t: gave up after")
    assert f"(BigQuery at {endpoint}); check that the emulator is up and listening there" in message
    assert "BIGQUERY_EMULATOR_HOST or api_endpoint" in message
    expected = {"silent": "no answer within 1.5s", "refusing": "connection refused", "dropping": "mid-answer"}
    assert expected[shape] in message
    retries = [line for line in lines if "attempt" in line]
    assert retries and retries[0].startswith("source: reading table test-project.d.t: attempt 1 failed: ")
    assert all(f"(BigQuery at {endpoint}); retried for up to 1.5s in all" in line for line in retries)


def test_the_bigquery_sink_is_bounded_too(lines):
    with hostile.silent() as (host, port):
        options = {"type": "bigquery", "table": f"{PROJECT}.d.t", "api_endpoint": f"http://{host}:{port}"}
        stage = make_stage("sink", {**options, "timeout": "1s"})
        with within(2), pytest.raises(TransientError, match=rf"sink: reading dataset {PROJECT}.d: gave up after"):
            stage.prepare()
    assert any(f"attempt 1 failed: no answer within 1s (BigQuery at http://{host}:{port})" in line for line in lines)


# -- BigQuery: the Storage Read API --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bq_table(bq_emulator) -> Iterator[str]:
    """A table of 20,000 rows in a dataset of the module's own."""
    from tests import bq_emulator as emulators

    client = emulators.client(bq_emulator)
    dataset = f"deadlines_{uuid.uuid4().hex[:8]}"
    client.create_dataset(dataset)
    client.query(
        f"CREATE TABLE {dataset}.t AS SELECT x AS id, CONCAT('row ', CAST(x AS STRING)) AS label "
        "FROM UNNEST(GENERATE_ARRAY(1, 20000)) AS x"
    ).result()
    yield f"{PROJECT}.{dataset}.t"
    client.delete_dataset(dataset, delete_contents=True)
    client.close()


def test_an_emulator_without_a_storage_endpoint_reads_through_rest_and_says_so_at_once(
    bigquery, bq_table, cli, write, monkeypatch
):
    """The issue's case: BIGQUERY_EMULATOR_HOST set, the Storage host unset. Google's Storage
    endpoint is not tried (it can't read an emulator's tables): the plan says so and reads REST."""
    monkeypatch.delenv("BIGQUERY_STORAGE_EMULATOR_HOST")
    job = write(
        "job.yaml",
        f"""
        name: emulated
        source: {{type: bigquery, project: {PROJECT}, table: {bq_table}}}
        sink: {{type: parquet, path: out}}
        chunk_size: 100000
        thresholds: {{background: 1000000}}
        """,
    )
    with within(30):
        result = cli("run", str(job))
    assert result.returncode == 0, result.stderr
    assert "no Storage Read API endpoint is set: set BIGQUERY_STORAGE_EMULATOR_HOST" in result.stderr
    assert "reading through REST pages, far slower" in result.stderr
    assert "completed: 20,000 rows written" in result.stderr


@pytest.mark.parametrize("shape", ["silent", "refusing"])
def test_a_storage_endpoint_that_does_not_answer_fails_the_plan_within_its_deadline(shape, bigquery, bq_table, lines):
    with SHAPES[shape]() as (host, port):
        stage = bq_source(
            {"table": bq_table, "storage_endpoint": f"{host}:{port}", "connect_timeout": "1s", "timeout": "2s"}
        )
        with within(4), pytest.raises(TransientError) as info:
            stage.plan(100_000)
    message = str(info.value)
    assert f"opening a Storage Read API session on {bq_table}: gave up after" in message
    assert f"(the Storage Read API at {host}:{port}); check that the emulator's gRPC port is up" in message
    assert "BIGQUERY_STORAGE_EMULATOR_HOST or storage_endpoint), or set read_api: rest" in message
    assert ("no connection within 1s" if shape == "silent" else "connection refused") in message
    assert any("attempt 1 failed" in line and f"(the Storage Read API at {host}:{port})" in line for line in lines)


@pytest.fixture(scope="module")
def bq_long(bq_emulator) -> Iterator[str]:
    """A table of 150,000 ids: three messages of a read stream (the emulator sends about 63,000
    rows a message)."""
    from tests import bq_emulator as emulators

    client = emulators.client(bq_emulator)
    dataset = f"deadlines_{uuid.uuid4().hex[:8]}"
    client.create_dataset(dataset)
    client.query(f"CREATE TABLE {dataset}.t AS SELECT x AS id FROM UNNEST(GENERATE_ARRAY(1, 150000)) AS x").result()
    yield f"{PROJECT}.{dataset}.t"
    client.delete_dataset(dataset, delete_contents=True)
    client.close()


def _planned_stream(table: str) -> tuple[Chunk, dict]:
    planner = bq_source({"table": table})
    try:
        plan = planner.plan(1_000_000)
    finally:
        planner.close()
    assert plan.shared["api"] == "storage" and len(plan.chunks) == 1
    return across_processes(plan.chunks[0], plan)


def test_an_emulators_stream_dropped_mid_way_fails_the_attempt(bigquery, bq_emulator, bq_long, lines):
    """The emulator starts a stream over whatever offset it is asked for: a break there is not
    resumed (that would read rows twice) but fails the attempt, for the chunk to be read again."""
    chunk, shared = _planned_stream(bq_long)
    with hostile.cutting(("127.0.0.1", bq_emulator.grpc_port), after=700_000, times=1) as (host, port):
        reader = bq_source({"table": bq_long, "storage_endpoint": f"{host}:{port}", "timeout": "5s"})
        with within(5), pytest.raises(TransientError) as info:
            list(reader.read(chunk, shared))
        again = pa.Table.from_batches(list(reader.read(chunk, shared)))  # the chunk's next attempt
        reader.close()
    assert re.search(r"reading stream \S+: the stream broke at row 65,536 \(", str(info.value))
    assert f"the Storage Read API at {host}:{port}); an emulator's stream is read again" in str(info.value)
    assert sorted(again.column("id").to_pylist()) == list(range(1, 150_001))


@contextlib.contextmanager
def offset_honouring_server(rows: int, per_message: int, drops: int = 0, pause: float = 0) -> Iterator[str]:
    """A Storage Read API server that honours ``ReadRows``' offset, as Google's does, whose
    first ``drops`` calls break after their first message (UNAVAILABLE, as a lost connection),
    and which pauses ``pause`` seconds after each message."""
    from concurrent import futures

    import grpc
    from google.cloud.bigquery_storage_v1 import types

    table = pa.table({"id": pa.array(range(1, rows + 1), pa.int64())})
    calls: list[int] = []

    def read_rows(request, context):
        calls.append(request.offset)
        for index, batch in enumerate(table.slice(request.offset).to_batches(max_chunksize=per_message)):
            if index and len(calls) <= drops:
                context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
            yield types.ReadRowsResponse(
                row_count=batch.num_rows,
                arrow_record_batch=types.ArrowRecordBatch(serialized_record_batch=batch.serialize().to_pybytes()),
            )
            time.sleep(pause)

    handler = grpc.unary_stream_rpc_method_handler(
        read_rows,
        request_deserializer=types.ReadRowsRequest.deserialize,
        response_serializer=types.ReadRowsResponse.serialize,
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("google.cloud.bigquery.storage.v1.BigQueryRead", {"ReadRows": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", calls
    finally:
        server.stop(0)


def _stream_of_ids() -> tuple[Chunk, dict]:
    from etl_plugins._files import schema_to_shared

    schema = pa.schema([pa.field("id", pa.int64())])
    shared = {
        **schema_to_shared(schema),
        "fields": [{"name": "id", "type": "INTEGER", "mode": "NULLABLE"}],
        "arrow_schema": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
    }
    return Chunk(0, args={"kind": "stream", "stream": "projects/p/locations/us/sessions/s/streams/x"}), shared


def _google_like_reader(endpoint: str, **options):
    reader = bq_source({"table": "d.t", "api_endpoint": "http://127.0.0.1:9", "storage_endpoint": endpoint, **options})
    reader.clients.resumable = True  # the server honours offsets, as Google's does
    return reader


def test_a_stream_dropped_mid_way_is_resumed_where_it_broke(lines):
    chunk, shared = _stream_of_ids()
    with offset_honouring_server(rows=300, per_message=100, drops=2) as (endpoint, calls):
        reader = _google_like_reader(endpoint)
        with within(5):
            ids = pa.Table.from_batches(list(reader.read(chunk, shared))).column("id").to_pylist()
        reader.close()
    assert ids == list(range(1, 301))  # every row once, in order
    assert calls == [0, 100, 200]
    broke = [line for line in lines if "the stream broke" in line]
    assert [re.sub(r" \(.*\)", "", line) for line in broke] == [
        "source: reading stream x: the stream broke at row 100; resuming from there",
        "source: reading stream x: the stream broke at row 200; resuming from there",
    ]


def test_a_stream_longer_than_statement_timeout_fails_the_attempt_saying_so():
    chunk, shared = _stream_of_ids()
    with offset_honouring_server(rows=300, per_message=100, pause=5) as (endpoint, _):
        reader = _google_like_reader(endpoint, statement_timeout="1s")
        with within(1), pytest.raises(TransientError) as info:
            list(reader.read(chunk, shared))
        reader.close()
    assert str(info.value) == (
        "source: reading stream x: the stream took longer than statement_timeout (1s), at row 100: raise "
        "statement_timeout (or ETL_STATEMENT_TIMEOUT), or make chunk_size smaller"
    )


def test_a_stream_that_breaks_before_its_first_rows_is_retried_then_given_up_on(bigquery, bq_emulator, bq_long, lines):
    chunk, shared = _planned_stream(bq_long)
    with hostile.cutting(("127.0.0.1", bq_emulator.grpc_port), after=30_000) as (host, port):
        reader = bq_source({"table": bq_long, "storage_endpoint": f"{host}:{port}", "timeout": "2s"})
        with within(4), pytest.raises(TransientError, match=r"reading stream \S+: gave up after \d+ attempt") as info:
            list(reader.read(chunk, shared))
        reader.close()
    assert f"(the Storage Read API at {host}:{port}); check that the emulator's gRPC port is up" in str(info.value)
    assert len([line for line in lines if "attempt" in line and f"Storage Read API at {host}:{port}" in line]) >= 2


# -- PostgreSQL ---------------------------------------------------------------------------------------


def _dsn(host: str, port: int) -> str:
    return f"postgresql://etl:S3cret@{host}:{port}/test"


@pytest.mark.parametrize("shape", ["silent", "refusing", "dropping"])
def test_a_postgres_sink_that_cannot_connect_retries_the_chunk_then_fails_naming_the_server(shape, write, lines):
    server = hostile.dropping(hostile.postgres_partial) if shape == "dropping" else SHAPES[shape]()
    with server as (host, port):
        job = write(
            "job.yaml",
            f"""
            name: pg-unreachable
            source: {{type: generate, rows: 10, seed: 1}}
            sink: {{type: postgres, dsn: "{_dsn(host, port)}", table: t, connect_timeout: 1s}}
            retry: {{attempts: 2, backoff: 100ms, jitter: false}}
            """,
        )
        with within(2 * 2), pytest.raises(etl.JobFailed) as info:  # libpq waits 2s at least
            etl.run(job)
    where = f"PostgreSQL at {host}:{port} (database test, user etl)"
    error = info.value.result.error or ""
    assert f"sink (postgres): connecting to {where}: " in error
    hints = {
        "silent": "nothing answered within connect_timeout (2s): check the host and port",
        "refusing": "check the host and port, and that the server is up and listening there",
        "dropping": "the connection was lost: check the server's log",
    }
    assert hints[shape] in error
    assert "S3cret" not in error
    retried = [line for line in lines if line.startswith("chunk 0 attempt 1/2 failed: ")]
    assert len(retried) == 1 and f"sink (postgres): connecting to {where}" in retried[0]
    assert "retrying in 0.1s" in retried[0]
    assert not any("S3cret" in line for line in lines)


@pytest.mark.parametrize("shape", ["silent", "refusing", "dropping"])
def test_a_postgres_source_that_cannot_connect_fails_within_its_deadline(shape):
    server = hostile.dropping(hostile.postgres_partial) if shape == "dropping" else SHAPES[shape]()
    with server as (host, port):
        stage = make_stage("source", {"type": "postgres", "dsn": _dsn(host, port), "table": "t", "connect_timeout": 2})
        with within(2), pytest.raises(TransientError, match=f"source: connecting to PostgreSQL at {host}:{port}"):
            stage.count()


@pytest.fixture
def pg_table() -> Iterator[str]:
    import adbc_driver_postgresql.dbapi as adbc

    name = f"public.deadlines_{uuid.uuid4().hex[:8]}"
    with adbc.connect(DSN, autocommit=True) as con, con.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} AS SELECT x AS id, repeat('x', 100) AS pad FROM generate_series(1, 50000) x")
    yield name
    with adbc.connect(DSN, autocommit=True) as con, con.cursor() as cur:
        cur.execute(f"DROP TABLE {name}")


def test_a_postgres_read_dropped_mid_stream_fails_at_once_naming_the_server(pg_table):
    from urllib.parse import urlsplit

    planner = make_stage("source", {"type": "postgres", "dsn": DSN, "table": pg_table})
    plan = planner.plan(1_000_000)
    planner.close()
    chunk, shared = across_processes(plan.chunks[0], plan)
    target = urlsplit(DSN)
    address = (target.hostname or "127.0.0.1", target.port or 5432)

    def via(host: str, port: int) -> str:
        return DSN.replace(f"{target.hostname}:{target.port}", f"{host}:{port}")

    # Cut a megabyte into the rows (5 MB), past what connecting takes: the catalog the driver
    # reads as it connects grows with every table the database holds.
    connecting: list[int] = []
    with hostile.cutting(address, after=1 << 62, moved=connecting) as (host, port):
        counter = make_stage("source", {"type": "postgres", "dsn": via(host, port), "table": pg_table})
        counter.count()
        counter.close()
        deadline = time.monotonic() + 5
        while not connecting and time.monotonic() < deadline:
            time.sleep(0.01)
    assert connecting, "the connection that counted did not end"
    with hostile.cutting(address, after=connecting[0] + 1_000_000) as (host, port):
        proxied = via(host, port)
        reader = make_stage("source", {"type": "postgres", "dsn": proxied, "table": pg_table, "timeout": "5s"})
        with within(5), pytest.raises(TransientError) as info:
            list(reader.read(chunk, shared))
        reader.close()
    message = str(info.value)
    assert f"source: reading table {pg_table} (PostgreSQL at {host}:{port}" in message
    assert "the connection was lost: check the server's log" in message


def test_a_statement_longer_than_statement_timeout_is_stopped(monkeypatch):
    stage = make_stage("source", {"type": "postgres", "dsn": DSN, "query": "SELECT pg_sleep(30) AS x"})
    monkeypatch.setenv("ETL_STATEMENT_TIMEOUT", "1s")
    with within(1), pytest.raises(TransientError) as info:
        stage.count()
    assert "canceling statement due to statement timeout" in str(info.value)
    assert "ran longer than statement_timeout (1s): raise statement_timeout (or ETL_STATEMENT_TIMEOUT)" in str(
        info.value
    )


def _statement_timeout(dsn: str, **options) -> str:
    from etl_plugins.postgres._common import Server, pg_connect

    server = Server.of(make_stage("sink", {"type": "postgres", "dsn": dsn, "table": "t", **options}).options)
    with pg_connect(server, "sink") as con:
        return con.execute("SELECT current_setting('statement_timeout')").fetchone()[0]


def test_statement_timeout_is_the_jobs_else_the_environments_else_the_shorter_of_an_hour_and_the_servers(
    monkeypatch,
):
    assert _statement_timeout(DSN) == "1h"
    assert _statement_timeout(DSN + "?options=-c%20statement_timeout%3D5min") == "5min"  # the server's, shorter
    monkeypatch.setenv("ETL_STATEMENT_TIMEOUT", "2h")
    assert _statement_timeout(DSN) == "2h"
    assert _statement_timeout(DSN, statement_timeout="30s") == "30s"


# -- notifications --------------------------------------------------------------------------------------


def _message() -> Message:
    return Message("run.failed", "d-1", {"host": "h"}, b"{}", "text", "subject", "plain")


@pytest.mark.parametrize("shape", ["silent", "refusing", "dropping"])
def test_a_webhook_gives_up_within_its_budget_naming_the_endpoint(shape, lines):
    server = hostile.dropping(hostile.http_partial) if shape == "dropping" else SHAPES[shape]()
    with server as (host, port):
        target = notify.WebhookTarget(type="webhook", url=f"http://{host}:{port}/secret-path", timeout=0.5, backoff=0.1)
        with within(2):
            assert deliver(target, _message(), logger) is False
    retries = [line for line in lines if "(attempt" in line]
    assert retries[0].startswith(f"notification to webhook http://{host}:{port} failed (attempt 1/3): ")
    assert lines[-1].endswith(
        "check the URL's host and port, that the endpoint is up, and the network in between (firewall, proxy)"
    )
    assert not any("secret-path" in line for line in lines)


@pytest.mark.parametrize("shape", ["silent", "refusing", "dropping"])
def test_an_smtp_server_that_does_not_answer_gives_up_within_the_budget(shape, lines):
    server = hostile.dropping(hostile.smtp_partial) if shape == "dropping" else SHAPES[shape]()
    with server as (host, port):
        target = notify.EmailTarget(
            type="email", host=host, port=port, starttls=False, sender="etl@example.com", to=["ops@example.com"],
            timeout=0.5, backoff=0.1, retries=1,
        )  # fmt: skip
        with within(2):
            assert deliver(target, _message(), logger) is False
    expected = {"silent": "no answer in time", "refusing": "Connection refused", "dropping": "Connection unexpectedly"}
    assert any(f"email via {host}:{port} to 1 recipient(s) failed (attempt 1/2): " in line for line in lines)
    assert expected[shape] in lines[-1]
    assert "check host and port (and ssl or starttls to match the port), that the SMTP server is up" in lines[-1]


def test_the_environment_sets_a_targets_timeout_and_budget_unless_the_job_does(monkeypatch, lines):
    monkeypatch.setenv("ETL_NOTIFY_TIMEOUT", "300ms")
    monkeypatch.setenv("ETL_NOTIFY_BUDGET", "1s")
    default = notify.WebhookTarget(type="webhook", url="http://h")
    assert default.limits() == (0.3, 1.0)
    assert notify.WebhookTarget(type="webhook", url="http://h", timeout=2, budget=5).limits() == (2.0, 5.0)
    monkeypatch.setenv("ETL_NOTIFY_TIMEOUT", "later")
    assert deliver(default, _message(), logger) is False
    assert lines[-1].startswith("notification to webhook http://h not sent: ETL_NOTIFY_TIMEOUT: 'later' is not a")
