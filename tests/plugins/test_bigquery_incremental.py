"""Source bigquery read incrementally: each run reads the rows whose cursor passed the last
completed run's mark, up to ``MAX(cursor)`` when it was planned; for a table through the
Storage Read API's row restriction, for a query as typed query parameters around it. Real runs
(``etl.api.run``, the embedded run store in ``$ETL_HOME``) against a BigQuery emulator."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import etl
from etl import ConfigErrors
from etl.incremental import decode

PROJECT = "test-project"


@pytest.fixture(autouse=True)
def _embedded_store(monkeypatch):
    """Marks kept in the embedded store under the test's own ETL_HOME, never in a Redis."""
    monkeypatch.delenv("ETL_QUEUE_URL", raising=False)
    monkeypatch.delenv("REDIS_HOST", raising=False)


@pytest.fixture(scope="module")
def dataset(bq_emulator):
    from tests import bq_emulator as emulators

    client = emulators.client(bq_emulator)
    name = f"inc_{uuid.uuid4().hex[:8]}"
    client.create_dataset(name)
    yield name
    client.delete_dataset(name, delete_contents=True)
    client.close()


# Each cursor type: row `id`'s cursor as a literal (growing with the id; literals, for the
# emulator types a row holding an expression such as DATE_ADD as DECIMAL(18, 3) in its NUMERIC
# column), the `initial` that is row 2's cursor exactly (the first run starts there,
# inclusive), and row 7's value as Python has it (the mark after the second run).
START = dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC)
CURSORS = {
    "TIMESTAMP": (
        lambda i: f"TIMESTAMP '{START + dt.timedelta(hours=i)}'",
        "2026-01-01T02:00:00.000001Z",
        dt.datetime(2026, 1, 1, 7, 0, 0, 1, tzinfo=dt.UTC),
    ),
    "DATETIME": (
        lambda i: f"DATETIME '{dt.datetime(2026, 1, 1, 0, 0, 0, 500000) + dt.timedelta(hours=i)}'",
        "2026-01-01T02:00:00.5",
        dt.datetime(2026, 1, 1, 7, 0, 0, 500000),
    ),
    "DATE": (lambda i: f"DATE '{dt.date(2026, 1, 1) + dt.timedelta(days=i)}'", "2026-01-03", dt.date(2026, 1, 8)),
    "INT64": (lambda i: str(i * 10), 20, 70),
    "NUMERIC": (lambda i: f"NUMERIC '{i}.123456789'", "2.123456789", Decimal("7.123456789")),
    "FLOAT64": (lambda i: f"{i}.25", 2.25, 7.25),
}


def insert(client, table: str, ids: range, cursor: str = "INT64") -> None:
    """Rows ``ids`` into ``table`` (made on the first call): ``id``, ``c`` (the cursor, of type
    ``cursor``), ``env`` (``prod`` for even ids) and ``ds`` (a day per id)."""
    from google.cloud.bigquery import SchemaField, Table

    # Made with a schema: the emulator makes the NUMERIC of a `CREATE TABLE ... AS` a DECIMAL(18, 3).
    schema = [
        SchemaField("id", "INT64"),
        SchemaField("c", cursor),
        SchemaField("env", "STRING"),
        SchemaField("ds", "DATE"),
    ]
    client.create_table(Table(table, schema=schema), exists_ok=True)
    if not ids:
        return
    literal = CURSORS[cursor][0]
    day = dt.date(2026, 2, 1)
    values = ", ".join(
        f"({i}, {literal(i)}, '{'prod' if i % 2 == 0 else 'test'}', DATE '{day + dt.timedelta(days=i)}')" for i in ids
    )
    client.query(f"INSERT INTO `{table}` (id, c, env, ds) VALUES {values}").result()


@pytest.fixture
def table(bigquery, dataset):
    return f"{PROJECT}.{dataset}.t_{uuid.uuid4().hex[:10]}"


def job(write, source: dict, incremental: dict, params: dict | None = None, name: str = "bq-inc") -> Path:
    """A job file (JSON is YAML) reading ``source`` incrementally into a Parquet directory."""
    doc = {
        "name": name,
        "params": params or {},
        "source": {"type": "bigquery", "project": PROJECT, **source},
        "incremental": incremental,
        "sink": {"type": "parquet", "path": "out", "mode": "append"},
    }
    return write(f"{name}.yaml", json.dumps(doc, indent=2))


def ids_read(result: etl.RunResult) -> list[int]:
    parts = sorted(Path("out").glob(f"part-{result.run_id}-*.parquet"))
    return sorted(i for part in parts for i in pq.read_table(part).column("id").to_pylist())


def run(path: Path, **kwargs) -> tuple[etl.RunResult, list[int]]:
    result = etl.api.run(path, **kwargs)
    assert result.state == "completed", result.error
    return result, ids_read(result)


def mark(name: str = "bq-inc"):
    stored = etl.api.open_store().get_mark(name)
    return None if stored is None else decode(stored["value"])


# -- runs one after another ----------------------------------------------------------------------


@pytest.mark.parametrize("cursor", list(CURSORS))
@pytest.mark.parametrize("kind", ["table", "query"])
def test_each_run_reads_the_rows_past_the_last_mark(bigquery, table, write, kind, cursor):
    insert(bigquery, table, range(1, 6), cursor)
    source = (
        {"table": table}
        if kind == "table"
        else {"query": f"SELECT id, c FROM `{table}` WHERE id >= @min_id"}  # a job param beside the window's
    )
    params = {"min_id": {"type": "integer", "default": 0}} if kind == "query" else None
    path = job(write, source, {"cursor": "c", "initial": CURSORS[cursor][1]}, params)

    result, ids = run(path)
    assert ids == [2, 3, 4, 5] and result.rows_total == 4  # from `initial`, inclusive

    insert(bigquery, table, range(6, 8), cursor)
    result, ids = run(path)
    assert ids == [6, 7] and result.rows_total == 2
    high = mark()
    assert high == CURSORS[cursor][2] and type(high) is type(CURSORS[cursor][2])
    if isinstance(high, dt.datetime):
        assert (high.tzinfo is not None) == (cursor == "TIMESTAMP")

    # Nothing new: nothing read, the run completes, the mark stays.
    result, ids = run(path)
    assert (ids, result.rows_read, result.chunks_total) == ([], 0, 0)
    assert mark() == high


def test_the_window_and_row_filter_go_to_the_read_session_together(bigquery, table, write):
    insert(bigquery, table, range(1, 9))
    path = job(
        write,
        {"table": table, "columns": ["id", "env"], "row_filter": "env = 'prod' OR id = 1"},  # the cursor unselected
        {"cursor": "c", "initial": 30},
    )
    result, ids = run(path)
    assert ids == [4, 6, 8] and result.rows_total == 3  # `OR` stays inside row_filter's parentheses
    assert pq.read_table(next(Path("out").glob(f"part-{result.run_id}-*"))).column_names == ["id", "env"]
    insert(bigquery, table, range(9, 13))
    assert run(path)[1] == [10, 12]


def test_a_row_filter_with_params_is_a_query_with_the_window_as_parameters(bigquery, table, write):
    insert(bigquery, table, range(1, 9))
    path = job(
        write,
        {"table": table, "columns": ["id"], "row_filter": "env = @env OR id = @one"},
        {"cursor": "c"},
        params={"env": {"type": "string", "default": "prod"}, "one": {"type": "integer", "default": 1}},
    )
    assert run(path)[1] == [1, 2, 4, 6, 8]  # without `initial`: every row up to the highest
    insert(bigquery, table, range(9, 12))
    assert run(path)[1] == [10]


@pytest.mark.parametrize("kind", ["table", "query"])
def test_rows_added_after_the_window_was_fixed_are_read_by_the_next_run(bigquery, table, write, kind):
    insert(bigquery, table, range(1, 4))
    source = {"table": table} if kind == "table" else {"query": f"SELECT * FROM `{table}`"}
    path = job(write, source, {"cursor": "c"})
    # As `etl run` does: count and plan (which fixes the window), then run that window.
    planned = etl.api.plan(etl.load_job(path), run_id=uuid.uuid4().hex[:12])
    assert planned.info.rows == 3
    staged = {t.table_id for t in bigquery.list_tables("_etl_staging")} if kind == "query" else set()
    insert(bigquery, table, range(4, 6))
    result, ids = run(planned)
    assert ids == [1, 2, 3] and mark() == 30
    if kind == "query":  # the window given back (as JSON) is the same: the count's result is read
        assert {t.table_id for t in bigquery.list_tables("_etl_staging")} == staged
    result, ids = run(path)
    assert ids == [4, 5] and mark() == 50


def test_a_query_staged_for_one_window_is_not_read_for_another(bigquery, table, write):
    # The same run id counting with one window and running with a wider one (no window given
    # back): the result staged for the count holds only the first window's rows.
    insert(bigquery, table, range(1, 4))
    path = job(write, {"query": f"SELECT * FROM `{table}`"}, {"cursor": "c"})
    run_id = uuid.uuid4().hex[:12]
    planned = etl.api.plan(etl.load_job(path), run_id=run_id)
    planned.close()  # not run: the run below counts and plans for itself
    assert planned.info.rows == 3
    insert(bigquery, table, range(4, 6))
    result, ids = run(path, run_id=run_id)
    assert ids == [1, 2, 3, 4, 5] and mark() == 50


@pytest.mark.parametrize("kind", ["table", "query"])
def test_lookback_reads_again_below_the_mark(bigquery, table, write, kind):
    insert(bigquery, table, range(1, 6), "DATE")
    source = {"table": table} if kind == "table" else {"query": f"SELECT * FROM `{table}`"}
    path = job(write, source, {"cursor": "c", "lookback": "2d"})
    assert run(path)[1] == [1, 2, 3, 4, 5]  # c: 2026-01-02 .. 2026-01-06
    insert(bigquery, table, range(6, 7), "DATE")
    assert run(path)[1] == [4, 5, 6]  # c > 2026-01-04 (the mark less two days)


@pytest.mark.parametrize(
    ("kind", "chunk_by"),
    [
        ("table", {"column": "ds", "every": "2 days"}),
        ("table", "id"),
        ("query", {"column": "ds", "every": "2 days"}),
        ("query", "id"),
    ],
)
def test_chunk_by_slices_only_the_window(bigquery, table, write, kind, chunk_by):
    insert(bigquery, table, range(1, 11))
    source = {"table": table} if kind == "table" else {"query": f"SELECT * FROM `{table}`"}
    path = job(write, {**source, "chunk_by": chunk_by}, {"cursor": "c", "initial": 40})
    result, ids = run(path)
    assert ids == [4, 5, 6, 7, 8, 9, 10] and result.rows_total == 7
    insert(bigquery, table, range(11, 16))
    result, ids = run(path)
    assert ids == [11, 12, 13, 14, 15] and result.rows_total == 5
    if isinstance(chunk_by, dict):  # the slices cover the window's days, not the table's
        assert result.chunks_total == 3


def test_rest_pages_read_the_window_too(bigquery, table, write):
    insert(bigquery, table, range(1, 6))
    path = job(write, {"table": table, "read_api": "rest"}, {"cursor": "c", "initial": 30})
    assert run(path)[1] == [3, 4, 5]
    insert(bigquery, table, range(6, 8))
    assert run(path)[1] == [6, 7]


def test_an_empty_table_is_nothing_new(bigquery, table, write):
    insert(bigquery, table, range(0))
    path = job(write, {"table": table}, {"cursor": "c"})
    result, ids = run(path)
    assert (ids, result.rows_read) == ([], 0)
    assert mark() is None


# -- errors --------------------------------------------------------------------------------------


def test_a_cursor_that_is_not_a_column_name_is_a_config_error(write, cli):
    path = job(write, {"table": "d.t"}, {"cursor": "c` OR TRUE --"})
    with pytest.raises(ConfigErrors, match=r"incremental\.cursor: 'c` OR TRUE --' is not a column name"):
        etl.load_job(path)
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert "incremental.cursor" in result.stderr and "Traceback" not in result.stderr


def test_a_cursor_the_source_lacks_or_cant_follow_fails_the_run_naming_it(bigquery, table, write):
    insert(bigquery, table, range(1, 3))
    with pytest.raises(etl.JobFailed, match=r"the incremental cursor 'cc' is not a column of table .*did you mean"):
        etl.api.run(job(write, {"table": table}, {"cursor": "cc"}))
    with pytest.raises(etl.JobFailed, match=r"the incremental cursor 'env' is STRING; a cursor is a number, date"):
        etl.api.run(job(write, {"query": f"SELECT * FROM `{table}`"}, {"cursor": "env"}))
    assert mark() is None


def test_initial_of_another_type_than_the_cursor_fails_the_run(bigquery, table, write):
    insert(bigquery, table, range(1, 3), "DATE")
    with pytest.raises(etl.JobFailed, match="is a date, and the cursor's values are numbers|is not a date"):
        etl.api.run(job(write, {"table": table}, {"cursor": "c", "initial": 5}))
