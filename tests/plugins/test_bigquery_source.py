"""Source bigquery: tables and queries through the Storage Read API (and REST), chunk plans,
params as query parameters, types, errors. Against a real BigQuery emulator (``bqemulator``)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from decimal import Decimal

import pyarrow as pa
import pytest
from etl_plugins.bigquery import _client
from etl_plugins.bigquery.source import BigQuerySourceOptions
from pydantic import ValidationError

import etl
from etl import PermanentError, TransientError
from tests.contract.framework import across_processes, make_stage, read_all

PROJECT = "test-project"
ROWS = 3_000


@pytest.fixture(scope="module")
def dataset(bq_emulator):
    """A dataset of the module's own holding ``forecast``: ROWS rows, ``ds`` over 30 days, every
    7th ``ds`` NULL."""
    from tests import bq_emulator as emulators

    client = emulators.client(bq_emulator)
    name = f"src_{uuid.uuid4().hex[:8]}"
    client.create_dataset(name)
    client.query(
        f"""
        CREATE TABLE {name}.forecast AS
        SELECT x AS id,
               CONCAT('ds-', CAST(MOD(x, 3) AS STRING)) AS dataset_id,
               IF(MOD(x, 2) = 0, 'production', 'staging') AS environment,
               IF(MOD(x, 7) = 0, NULL, DATE_ADD(DATE '2026-01-01', INTERVAL MOD(x, 30) DAY)) AS ds,
               x * 0.5 AS forecast
        FROM UNNEST(GENERATE_ARRAY(1, {ROWS})) AS x
        """
    ).result()
    yield name
    client.delete_dataset(name, delete_contents=True)
    client.close()


def source(options: dict, **context):
    return make_stage("source", {"type": "bigquery", "project": PROJECT, **options}, **context)


def read(options: dict, chunk_size: int = 1_000, **context) -> tuple[etl.Plan, pa.Table]:
    """The plan, and every chunk's rows by id (each chunk read in a fresh source, as in a worker)."""
    plan, table = read_all({"type": "bigquery", "project": PROJECT, **options}, chunk_size, **context)
    return plan, table.sort_by("id")


def expected(bigquery, sql: str) -> list[int]:
    return sorted(row[0] for row in bigquery.query(sql).result())


# -- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give `query` or `table`"),
        ({"table": "a.b.c", "query": "SELECT 1"}, "give `query` or `table`"),
        ({"query": "SELECT 1", "columns": ["a"]}, "go with `table`"),
        ({"table": "just_a_name"}, "expected project.dataset.table"),
        ({"table": "a.b.c", "chunk_by": {"column": "ds", "every": "1 fortnight"}}, "whole number of days or hours"),
        ({"table": "a.b.c", "staging_dataset": "no-dashes"}, "not a dataset name"),
        ({"table": "a.b.c", "read_api": "grpc"}, "storage"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(ValidationError, match=message):
        BigQuerySourceOptions.model_validate(options)


def test_an_undeclared_param_in_the_query_is_a_config_error_naming_the_line(cli, write):
    job = write(
        "bad.yaml",
        """
        name: bad
        params:
          start_date: {type: date}
        source:
          type: bigquery
          query: SELECT * FROM forecasts.daily WHERE ds >= @strat_date
        sink: {type: parquet, path: out/x}
        """,
    )
    result = cli("validate", str(job))
    assert result.returncode == 2
    assert 'bad.yaml:6: source.query: @strat_date is not a parameter of the job; did you mean "start_date"?' in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


# -- tables --------------------------------------------------------------------------------------


def test_a_table_is_read_whole_through_storage_streams(bigquery, dataset):
    plan, table = read({"table": f"{PROJECT}.{dataset}.forecast"})
    assert plan.shared["api"] == "storage"
    assert {c.args["kind"] for c in plan.chunks} == {"stream"}
    assert table.column("id").to_pylist() == list(range(1, ROWS + 1))
    assert table.schema.field("ds").type == pa.date32()
    assert table.schema.field("forecast").type == pa.float64()
    assert table.column("forecast").to_pylist()[:3] == [0.5, 1.0, 1.5]


def test_a_stream_of_messages_larger_than_grpcs_default_limit_is_read(bigquery, dataset):
    # The emulator sends about 63,000 rows a message: here some 10 MB, past gRPC's default 4 MB.
    bigquery.query(
        f"CREATE TABLE {dataset}.wide AS SELECT x AS id, REPEAT('x', 150) AS pad "
        "FROM UNNEST(GENERATE_ARRAY(1, 70000)) AS x"
    ).result()
    plan, table = read({"table": f"{dataset}.wide"}, chunk_size=100_000)
    assert len(plan.chunks) == 1
    assert table.num_rows == 70_000 and table.column("id")[-1].as_py() == 70_000


def test_a_tables_count_comes_from_its_metadata(bigquery, dataset):
    count = source({"table": f"{dataset}.forecast"}).count()
    assert (count.rows, count.exact) == (ROWS, True)


def test_columns_and_row_filter_go_to_the_read_session(bigquery, dataset):
    options = {"table": f"{dataset}.forecast", "columns": ["id", "ds"], "row_filter": "environment = 'production'"}
    assert source(options).count().rows == ROWS // 2
    plan, table = read(options)
    assert table.schema.names == ["id", "ds"]
    assert table.column("id").to_pylist() == list(range(2, ROWS + 1, 2))


def test_a_row_filter_with_params_runs_as_a_query_with_typed_parameters(bigquery, dataset):
    options = {"table": f"{dataset}.forecast", "row_filter": "ds >= @since AND dataset_id = @which"}
    params = {"since": dt.date(2026, 1, 25), "which": "ds-1"}
    plan, table = read(options, params=params)
    want = expected(
        bigquery,
        f"SELECT id FROM {dataset}.forecast WHERE ds >= DATE '2026-01-25' AND dataset_id = 'ds-1'",
    )
    assert want and table.column("id").to_pylist() == want


def test_an_unknown_column_is_named_with_a_suggestion(bigquery, dataset):
    with pytest.raises(PermanentError, match=r"has no column 'forcast'.*forecast"):
        source({"table": f"{dataset}.forecast", "columns": ["id", "forcast"]}).plan(1000)


def test_the_schema_is_the_tables_or_the_querys_without_reading_rows(bigquery, dataset):
    table = source({"table": f"{dataset}.forecast", "columns": ["id", "ds"]})
    assert table.output_schema() == pa.schema([("id", pa.int64()), ("ds", pa.date32())])
    query = source({"query": f"SELECT id AS order_id, forecast FROM {dataset}.forecast"}, run_id="schema-1")
    schema = query.output_schema()
    assert schema.names == ["order_id", "forecast"]
    plan = query.plan(1_000)
    assert list(plan.shared["columns"]) == schema.names  # what every chunk is read as
    assert query.output_schema() == schema


def test_chunk_by_an_integer_column_splits_key_ranges(bigquery, dataset):
    plan, table = read({"table": f"{dataset}.forecast", "chunk_by": "id"}, chunk_size=1_000)
    assert [c.args["kind"] for c in plan.chunks] == ["range"] * 3
    assert plan.chunks[0].args["lo"] is None and plan.chunks[-1].args["hi"] is None
    assert table.column("id").to_pylist() == list(range(1, ROWS + 1))


def test_chunk_by_date_slices_a_table_each_chunk_in_its_slice(bigquery, dataset):
    options = {"table": f"{dataset}.forecast", "chunk_by": {"column": "ds", "every": "7 days"}}
    plan = source(options).plan(1000)
    kinds = [c.args["kind"] for c in plan.chunks]
    assert kinds == ["slice"] * 5 + ["null"]
    assert plan.chunks[1].label == "ds [2026-01-08, 2026-01-15)"
    reader = source(options)
    second = pa.Table.from_batches(list(reader.read(*across_processes(plan.chunks[1], plan))))
    days = set(second.column("ds").to_pylist())
    assert days == {dt.date(2026, 1, 8) + dt.timedelta(days=i) for i in range(7)}
    nulls = pa.Table.from_batches(list(reader.read(*across_processes(plan.chunks[-1], plan))))
    assert set(nulls.column("ds").to_pylist()) == {None}
    assert nulls.num_rows == ROWS // 7
    _, table = read(options)
    assert table.num_rows == ROWS


# -- queries -------------------------------------------------------------------------------------


def test_a_query_runs_once_into_the_staging_dataset_and_is_read_from_there(bigquery, dataset):
    options = {"query": f"SELECT id, ds FROM {dataset}.forecast WHERE ds BETWEEN @start AND @end"}
    params = {"start": dt.date(2026, 1, 10), "end": dt.date(2026, 1, 12)}
    counter = source(options, params=params, run_id="run-q1")
    rows = counter.count().rows
    want = expected(
        bigquery, f"SELECT id FROM {dataset}.forecast WHERE ds BETWEEN DATE '2026-01-10' AND DATE '2026-01-12'"
    )
    assert rows == len(want) > 0
    staged = [t.table_id for t in bigquery.list_tables("_etl_staging")]
    # The same run planning again (the CLI counts, then the run plans) reuses the result.
    plan, table = read(options, params=params, run_id="run-q1")
    assert [t.table_id for t in bigquery.list_tables("_etl_staging")] == staged
    assert table.column("id").to_pylist() == want
    assert plan.shared["table"].startswith(f"{PROJECT}._etl_staging.etl_")
    # Another run runs the query again.
    read(options, params=params, run_id="run-q2")
    assert len(list(bigquery.list_tables("_etl_staging"))) == len(staged) + 1


@pytest.mark.parametrize("chunk_by", [None, {"column": "ds", "every": "1 day"}])
def test_a_query_of_no_rows_runs_and_writes_nothing(bigquery, dataset, write, chunk_by):
    job = write(
        "empty.yaml",
        f"""
        name: empty
        source:
          type: bigquery
          project: {PROJECT}
          query: SELECT * FROM {dataset}.forecast WHERE id < 0
          chunk_by: {json.dumps(chunk_by)}
        sink: {{type: parquet, path: out/empty}}
        """,
    )
    result = etl.api.run(job)
    assert (result.state, result.rows_read, result.rows_written) == ("completed", 0, 0)


def test_a_query_chunked_by_day_is_a_query_per_slice(bigquery, dataset):
    options = {
        "query": f"SELECT * FROM {dataset}.forecast WHERE ds BETWEEN @start AND @end",
        "chunk_by": {"column": "ds", "every": "1 day"},
    }
    params = {"start": dt.date(2026, 1, 3), "end": dt.date(2026, 1, 7)}
    plan, table = read(options, params=params, run_id=uuid.uuid4().hex)
    assert [c.label for c in plan.chunks] == [
        "ds < 2026-01-04",
        "ds [2026-01-04, 2026-01-05)",
        "ds [2026-01-05, 2026-01-06)",
        "ds [2026-01-06, 2026-01-07)",
        "ds >= 2026-01-07",
    ]
    want = expected(
        bigquery, f"SELECT id FROM {dataset}.forecast WHERE ds BETWEEN DATE '2026-01-03' AND DATE '2026-01-07'"
    )
    assert table.column("id").to_pylist() == want


def test_chunk_by_must_name_a_date_column_for_slices(bigquery, dataset):
    with pytest.raises(PermanentError, match="slices need a DATE, DATETIME or TIMESTAMP"):
        source({"table": f"{dataset}.forecast", "chunk_by": {"column": "id", "every": "1 day"}}).plan(1000)
    with pytest.raises(PermanentError, match=r"'dss' is not among the columns read.*ds"):
        source({"table": f"{dataset}.forecast", "chunk_by": {"column": "dss", "every": "1 day"}}).plan(1000)


def test_a_param_the_job_lacks_is_named(bigquery, dataset):
    with pytest.raises(PermanentError, match=r"@strat is not a parameter of the job.*start"):
        source({"query": f"SELECT * FROM {dataset}.forecast WHERE ds >= @strat"}, params={"start": 1}).count()


# -- REST ----------------------------------------------------------------------------------------


def test_rest_pages_give_the_same_rows_in_row_ranges(bigquery, dataset):
    plan, table = read({"table": f"{dataset}.forecast", "read_api": "rest"}, chunk_size=1_000)
    assert plan.shared["api"] == "rest"
    assert [c.label for c in plan.chunks] == ["rows 0-999", "rows 1000-1999", "rows 2000-"]
    assert table.column("id").to_pylist() == list(range(1, ROWS + 1))
    _, stored = read({"table": f"{dataset}.forecast"})
    assert table.equals(stored)


def test_rest_slices_and_filters(bigquery, dataset):
    options = {
        "table": f"{dataset}.forecast",
        "read_api": "rest",
        "row_filter": "environment = 'staging'",
        "chunk_by": {"column": "ds", "every": "10 days"},
    }
    _, table = read(options, run_id=uuid.uuid4().hex)
    assert table.column("id").to_pylist() == list(range(1, ROWS + 1, 2))


def test_without_the_storage_package_rows_come_through_rest_with_a_warning(bigquery, dataset, monkeypatch):
    from loguru import logger

    monkeypatch.setitem(sys.modules, "google.cloud.bigquery_storage_v1", None)  # as if not installed
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING")
    logger.enable("etl_plugins")
    try:
        plan, table = read({"table": f"{dataset}.forecast"})
    finally:
        logger.remove(handler)
    assert plan.shared["api"] == "rest"
    assert table.num_rows == ROWS
    assert any("Storage Read API" in line and "REST" in line for line in lines)


# -- types ---------------------------------------------------------------------------------------

TYPES_SCHEMA = [
    ("id", "INT64"),
    ("i", "INT64"),
    ("f", "FLOAT64"),
    ("n", "NUMERIC"),
    ("b", "BOOL"),
    ("s", "STRING"),
    ("by", "BYTES"),
    ("d", "DATE"),
    ("t", "TIME"),
    ("dtm", "DATETIME"),
    ("ts", "TIMESTAMP"),
    ("j", "JSON"),
    ("g", "GEOGRAPHY"),
]
TYPES_ROWS = """
INSERT INTO `{t}` (id, i, f, n, b, s, by, d, t, dtm, ts, j, g, arr, st) VALUES
(1, 42, 1.5, NUMERIC '123.456', TRUE, 'héllo', FROM_BASE64('AP8='), DATE '2026-01-31', TIME '12:34:56.789',
 DATETIME '2026-01-31 01:02:03.456789', TIMESTAMP '2026-01-31 01:02:03.456789+00', JSON '{{"a": 1}}',
 ST_GEOGPOINT(1.5, 2.5), [1, 2, 3], STRUCT(7 AS x, 'y' AS y)),
(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, [], NULL)
"""

TYPES = {
    "id": (pa.int64(), 1),
    "i": (pa.int64(), 42),
    "f": (pa.float64(), 1.5),
    "n": (pa.decimal128(38, 9), Decimal("123.456")),
    "b": (pa.bool_(), True),
    "s": (pa.string(), "héllo"),
    "by": (pa.binary(), b"\x00\xff"),
    "d": (pa.date32(), dt.date(2026, 1, 31)),
    "t": (pa.time64("us"), dt.time(12, 34, 56, 789000)),
    "dtm": (pa.timestamp("us"), dt.datetime(2026, 1, 31, 1, 2, 3, 456789)),
    "ts": (pa.timestamp("us", tz="UTC"), dt.datetime(2026, 1, 31, 1, 2, 3, 456789, tzinfo=dt.UTC)),
    "j": (pa.json_(pa.string()), '{"a":1}'),
    "g": (pa.string(), "POINT (1.5 2.5)"),
    "arr": (pa.list_(pa.int64()), [1, 2, 3]),
    "st": (pa.struct([("x", pa.int64()), ("y", pa.string())]), {"x": 7, "y": "y"}),
}


@pytest.fixture(scope="module")
def types_table(bq_emulator, dataset):
    from google.cloud.bigquery import SchemaField, Table

    from tests import bq_emulator as emulators

    client = emulators.client(bq_emulator)
    name = f"{PROJECT}.{dataset}.types"
    schema = [SchemaField(n, t) for n, t in TYPES_SCHEMA] + [
        SchemaField("arr", "INT64", mode="REPEATED"),
        SchemaField("st", "RECORD", fields=[SchemaField("x", "INT64"), SchemaField("y", "STRING")]),
    ]
    client.create_table(Table(name, schema=schema))
    client.query(TYPES_ROWS.format(t=name)).result()
    client.close()
    return name


@pytest.mark.parametrize("api", ["storage", "rest"])
def test_types_map_to_arrow(bigquery, types_table, api):
    _, table = read({"table": types_table, "read_api": api})
    assert {f.name: f.type for f in table.schema} == {k: v[0] for k, v in TYPES.items()}
    first, second = table.to_pylist()
    got = {k: (v.replace(tzinfo=dt.UTC) if k == "ts" else v) for k, v in first.items()}
    assert got == {k: v[1] for k, v in TYPES.items()}
    assert second == {**{k: None for k in TYPES}, "id": 2, "arr": []}


def test_a_declared_numeric_precision_is_kept():
    from etl_plugins.bigquery._source_types import arrow_type
    from google.cloud.bigquery import SchemaField

    assert arrow_type(SchemaField("n", "NUMERIC", precision=10, scale=2)) == pa.decimal128(10, 2)
    assert arrow_type(SchemaField("n", "BIGNUMERIC")) == pa.decimal256(76, 38)
    assert arrow_type(SchemaField("r", "STRING", mode="REPEATED")) == pa.list_(pa.string())


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"table": "no_such_dataset.forecast"}, r"Not found.*check the project, dataset and table names"),
        ({"table": "{dataset}.no_such_table"}, r"Not found.*no_such_table"),
        ({"query": "SELECT nope FROM {dataset}.forecast"}, r"source: checking the query: .*nope.*\(invalidQuery\)"),
        ({"query": "SELEC 1"}, r"source: checking the query: Syntax error"),
    ],
)
def test_missing_things_and_bad_queries_are_permanent_errors(bigquery, dataset, options, message):
    options = {k: v.format(dataset=dataset) for k, v in options.items()}
    with pytest.raises(PermanentError, match=message) as info:
        stage = source(options)
        stage.count()
        stage.plan(1000)
    assert not isinstance(info.value, TransientError)


def test_an_unreachable_endpoint_is_transient(bigquery, dataset):
    from tests.bq_emulator import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    stage = source({"table": f"{dataset}.forecast", "api_endpoint": endpoint, "timeout": "500ms"})
    with pytest.raises(TransientError, match=f"reading table .*connection refused \\(BigQuery at {endpoint}\\)"):
        stage.count()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        ("TooManyRequests", True),
        ("InternalServerError", True),
        ("ServiceUnavailable", True),
        ("NotFound", False),
        ("BadRequest", False),
        ("Forbidden", False),
    ],
)
def test_google_errors_are_classified(error, transient):
    from google.api_core import exceptions as g

    made = _client.classify(getattr(g, error)("boom"), "source: reading")
    assert isinstance(made, TransientError) is transient
    assert "source: reading" in str(made)


@pytest.mark.parametrize("reason", ["rateLimitExceeded", "quotaExceeded", "backendError"])
def test_quota_and_rate_reasons_are_transient_even_as_403(reason):
    from google.api_core import exceptions as g

    error = g.Forbidden("Exceeded rate limits", errors=[{"reason": reason, "message": "too many"}])
    assert isinstance(_client.classify(error, "source"), TransientError)


def test_a_permission_error_says_so():
    from google.api_core import exceptions as g

    error = g.Forbidden("Access Denied: Table p:d.t", errors=[{"reason": "accessDenied"}])
    made = _client.classify(error, "source: reading table p.d.t")
    assert isinstance(made, PermanentError) and not isinstance(made, TransientError)
    assert "lack a permission" in str(made)


PG_TYPES = {
    "id": ("bigint", 1),
    "i": ("bigint", 42),
    "f": ("double precision", 1.5),
    "n": ("numeric", Decimal("123.456")),
    "b": ("boolean", True),
    "s": ("text", "héllo"),
    "by": ("bytea", b"\x00\xff"),
    "d": ("date", dt.date(2026, 1, 31)),
    "t": ("time without time zone", dt.time(12, 34, 56, 789000)),
    "dtm": ("timestamp without time zone", dt.datetime(2026, 1, 31, 1, 2, 3, 456789)),
    "ts": ("timestamp with time zone", dt.datetime(2026, 1, 31, 1, 2, 3, 456789, tzinfo=dt.UTC)),
    "j": ("jsonb", {"a": 1}),
    "g": ("text", "POINT (1.5 2.5)"),
    "arr": ("ARRAY", [1, 2, 3]),
    "st": ("jsonb", {"x": 7, "y": "y"}),
}


def test_types_arrive_in_postgresql(bigquery, types_table, write):
    import psycopg

    from tests.contract.cases_postgres import DSN

    table = f"public.bq_types_{uuid.uuid4().hex[:8]}"
    job = write(
        "types.yaml",
        f"""
        name: bq-types
        source: {{type: bigquery, project: {PROJECT}, table: "{types_table}"}}
        sink: {{type: postgres, dsn: "{DSN}", table: {table}}}
        """,
    )
    result = etl.api.run(job)
    assert result.rows_written == 2
    with psycopg.connect(DSN, autocommit=True) as con:
        try:
            name = table.split(".")[1]
            columns = dict(
                con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", [name]
                ).fetchall()
            )
            cur = con.execute(f"SELECT * FROM {table} ORDER BY id")
            names = [c.name for c in cur.description]
            first, second = (dict(zip(names, row, strict=True)) for row in cur.fetchall())
        finally:
            con.execute(f"DROP TABLE IF EXISTS {table}")
    assert columns == {k: v[0] for k, v in PG_TYPES.items()}
    assert first == {k: v[1] for k, v in PG_TYPES.items()}
    assert second == {**{k: None for k in PG_TYPES}, "id": 2, "arr": []}


def test_without_google_cloud_bigquery_a_run_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_client, "_installed", lambda module: False)
    with pytest.raises(PermanentError, match=r"pip install 'etl-toolkit\[bigquery\]'"):
        source({"table": "a.b.c"})
