"""The check of a planned run's columns: every column a transform or the sink names is looked up
in the rows that reach it before the sink prepares its target, and a wrong one is a config error
at its line of the job file (exit 2, nothing written)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import psycopg
import pyarrow as pa
import pytest

import etl
from etl import Chunk, ConfigErrors, Plan, Sink, Source, StageOptions, hookimpl
from etl.manager import get_plugin_manager
from etl.pipeline import JobRun
from etl.preflight import check_columns
from tests.contract.cases_postgres import DSN

GENERATE = "source: {type: generate, rows: 2000, columns: {order_id: {kind: sequence}, amount: {kind: float}}}"


def stages(job: etl.Job, pm) -> tuple[Any, ...]:
    work = JobRun(job, pm)
    return work.source, work.transforms, work.sink


def check(text: str, pm=None, origin: str = "jobs/orders.yaml"):
    pm = pm or get_plugin_manager()
    job = etl.load_job(text=text, pm=pm, origin=origin)
    return check_columns(job, *stages(job, pm))


def test_the_schema_that_reaches_the_sink_is_returned():
    schema = check(
        f"""name: orders
{GENERATE}
transforms:
  - {{type: rename, columns: {{amount: total}}}}
  - {{type: derive, columns: {{double: total * 2}}}}
sink: {{type: duckdb, path: out.duckdb, table: orders, mode: merge, key: [order_id]}}
"""
    )
    assert schema == pa.schema([("order_id", pa.int64()), ("total", pa.float64()), ("double", pa.float64())])


def test_every_problem_of_a_stage_is_named_at_its_line():
    with pytest.raises(ConfigErrors) as caught:
        check(
            f"""name: orders
{GENERATE}
transforms:
  - type: rename
    columns:
      orderid: id
      amount: total
      amont: sum
sink: {{type: duckdb, path: out.duckdb, table: orders}}
"""
        )
    assert [str(e) for e in caught.value.errors] == [
        "jobs/orders.yaml:6: transforms[0].columns.orderid: column 'orderid' is not in the rows; "
        'did you mean "order_id"? The rows have: order_id, amount',
        "jobs/orders.yaml:8: transforms[0].columns.amont: column 'amont' is not in the rows; "
        'did you mean "amount"? The rows have: order_id, amount',
    ]


def test_the_sink_is_checked_against_the_rows_after_the_transforms():
    with pytest.raises(ConfigErrors) as caught:
        check(
            f"""name: orders
{GENERATE}
transforms: [{{type: rename, columns: {{order_id: id}}}}]
sink:
  type: duckdb
  path: out.duckdb
  table: orders
  mode: merge
  key: [order_id]
"""
        )
    assert str(caught.value) == (
        "jobs/orders.yaml:9: sink.key: column 'order_id' is not in the rows; the rows have: id, amount"
    )


class BlindOptions(StageOptions):
    pass


class Blind(Source):
    """A third-party source from before the check: it says nothing of its columns."""

    name = "blind"
    Options = BlindOptions

    def plan(self, chunk_size: int) -> Plan:
        return Plan([Chunk(0, rows=2)])

    def read(self, chunk: Chunk, shared: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"id": [1, 2]})


class Keep(Sink):
    """A third-party sink from before the check."""

    name = "keep"
    Options = BlindOptions
    rows: list[int] = []

    def write(self, chunk: Chunk, batches: Iterable[pa.RecordBatch]) -> int:
        rows = sum(b.num_rows for b in batches)
        Keep.rows.append(rows)
        return rows


class Stages:
    @hookimpl
    def etl_register_sources(self):
        return [Blind]

    @hookimpl
    def etl_register_sinks(self):
        return [Keep]


@pytest.fixture
def pm():
    manager = get_plugin_manager()
    manager.register(Stages())
    Keep.rows = []
    return manager


def test_stages_that_cant_tell_their_columns_skip_the_check_and_run(pm, tmp_path):
    assert check("name: blind\nsource: {type: blind}\nsink: {type: keep}\n", pm) is None
    # A python transform can't tell either: the sink's key after it is left to finalize.
    (tmp_path / "fn.py").write_text("def f(batch):\n    return batch\n")
    text = f"""name: orders
{GENERATE}
transforms: [{{type: python, function: fn.py:f}}]
sink: {{type: duckdb, path: out.duckdb, table: orders, mode: merge, key: [nope]}}
"""
    assert check(text, origin=str(tmp_path / "orders.yaml")) is None
    result = etl.run(etl.load_job(text="name: blind\nsource: {type: blind}\nsink: {type: keep}\n", pm=pm), pm=pm)
    assert result.rows_written == 2 and Keep.rows == [2]


def test_planning_refuses_the_run_before_the_sink_prepares(tmp_path):
    job = etl.load_job(
        text=f"{GENERATE}\nname: orders\nsink: {{type: duckdb, path: out.duckdb, table: t, mode: merge, key: [id]}}\n"
    )
    with pytest.raises(ConfigErrors, match="sink.key: column 'id' is not in the rows"):
        etl.plan(job)
    assert not (tmp_path / "out.duckdb").exists()


# -- etl run -------------------------------------------------------------------------------------


def merge_job(write, sink: str) -> str:
    """A merge into the ``sink`` given (``type: …, table: …``) on a key that is not a column."""
    write(
        "jobs/orders.yaml",
        f"""
        name: orders
        source:
          type: generate
          rows: 200001
          columns: {{order_id: {{kind: sequence}}, amount: {{kind: float}}, ds: {{kind: date}}}}
        chunk_size: 50000
        sink:
          {sink}
          mode: merge
          key: [orderid]
        """,
    )
    return "jobs/orders.yaml"


EXPECTED = (
    "error: jobs/orders.yaml:10: sink.key: column 'orderid' is not in the rows; "
    'did you mean "order_id"? The rows have: order_id, amount, ds\n'
)


@pytest.fixture
def pg_table():
    schema = f"etl_preflight_{uuid.uuid4().hex[:8]}"
    yield f"{schema}.orders"
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_a_postgres_merge_on_a_wrong_key_exits_2_and_writes_nothing(cli, write, pg_table):
    schema = pg_table.split(".")[0]
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
    job = merge_job(write, f"<<: {{type: postgres, dsn: '{DSN}', table: {pg_table}}}")
    for args in [(), ("--dry-run",)]:
        done = cli("run", *args, job)
        assert (done.returncode, done.stderr) == (2, EXPECTED)
    with psycopg.connect(DSN, autocommit=True) as con:
        tables = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema])
        assert tables.fetchall() == []  # neither the table nor a staging table


def test_a_duckdb_merge_on_a_wrong_key_exits_2_and_creates_nothing(cli, write, tmp_path):
    job = merge_job(write, "<<: {type: duckdb, path: out/orders.duckdb, table: orders}")
    done = cli("run", job)
    assert (done.returncode, done.stderr) == (2, EXPECTED)
    assert not (tmp_path / "out").exists()


def test_a_rename_of_a_missing_column_exits_2(cli, write, tmp_path):
    write(
        "jobs/rename.yaml",
        """
        name: rename
        source: {type: generate, rows: 10}
        transforms:
          - type: rename
            columns: {forcast: value}
        sink: {type: parquet, path: out}
        """,
    )
    done = cli("run", "jobs/rename.yaml")
    assert done.returncode == 2
    assert done.stderr == (
        "error: jobs/rename.yaml:5: transforms[0].columns.forcast: column 'forcast' is not in the rows; "
        'did you mean "forecast"? The rows have: id, dataset_id, environment, volume_type, ds, forecast, lower, '
        "upper, updated_at\n"
    )
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
