"""Source postgres: types, bound params, chunking by key ranges, date slices and blocks, errors.

Runs against the real PostgreSQL of the machine (``ETL_TEST_POSTGRES``); every table lives in
a schema of the module's own, dropped at the end.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etl_plugins._files import schema_from_shared
from etl_plugins.postgres.source import PostgresSourceOptions
from pydantic import ValidationError

import etl
from etl import PermanentError, TransientError
from tests.contract.cases_postgres import DSN
from tests.contract.framework import make_stage, read_all


def execute(sql: str, params: list | None = None, dsn: str = DSN) -> list[tuple]:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(dsn, autocommit=True) as con, con.cursor() as cur:
        cur.execute(sql, params)
        try:
            return cur.fetchall()
        except Exception:
            return []


@pytest.fixture(scope="module")
def schema():
    name = f"etl_pg_source_{uuid.uuid4().hex[:8]}"
    execute(f'CREATE SCHEMA "{name}"')
    yield name
    execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def table(schema):
    """A fresh table name in the schema (``schema.t_xxx``), for the test to create."""
    return f"{schema}.t_{uuid.uuid4().hex[:10]}"


def source(options: dict, **context):
    return make_stage("source", {"type": "postgres", "dsn": DSN, **options}, **context)


def read(options: dict, chunk_size: int = 1_000, **context) -> tuple[etl.Plan, pa.Table]:
    """The plan, and every chunk's rows (each chunk read in a fresh source, as in a worker)."""
    return read_all({"type": "postgres", "dsn": DSN, **options}, chunk_size, **context)


# -- types ---------------------------------------------------------------------------------------

TYPES_DDL = """
CREATE TABLE {t} (
    id integer PRIMARY KEY, a smallint, b integer, c bigint, d real, e double precision,
    f numeric(12,3), g numeric, h text, i varchar(20), j boolean, k date, l time, m timestamp,
    n timestamptz, o bytea, p json, q jsonb, r integer[], s text[]
)
"""
TYPES_ROW = """
INSERT INTO {t} VALUES
(1, -32768, 2147483647, 9223372036854775807, 1.5, 2.25, 123456789.123, 1.23456789012345678901234567890,
 'héllo, "world"', 'vär', true, '2026-01-31', '12:34:56.789', '2026-01-31 01:02:03.456789',
 '2026-01-31 01:02:03+02', '\\x00ff', '{"a": 1}', '{"b": [1, 2]}', '{1,NULL,3}', '{"a",NULL,"c,d"}'),
(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""
EXPECTED_TYPES = {
    "id": pa.int32(),
    "a": pa.int16(),
    "b": pa.int32(),
    "c": pa.int64(),
    "d": pa.float32(),
    "e": pa.float64(),
    "f": pa.decimal128(12, 3),
    "g": pa.string(),
    "h": pa.string(),
    "i": pa.string(),
    "j": pa.bool_(),
    "k": pa.date32(),
    "l": pa.time64("us"),
    "m": pa.timestamp("us"),
    "n": pa.timestamp("us", tz="UTC"),
    "o": pa.binary(),
    "p": pa.string(),
    "q": pa.string(),
    "r": pa.list_(pa.int32()),
    "s": pa.list_(pa.string()),
}
EXPECTED_VALUES = {
    "id": 1,
    "a": -32768,
    "b": 2147483647,
    "c": 9223372036854775807,
    "d": 1.5,
    "e": 2.25,
    "f": Decimal("123456789.123"),
    "g": "1.23456789012345678901234567890",
    "h": 'héllo, "world"',
    "i": "vär",
    "j": True,
    "k": dt.date(2026, 1, 31),
    "l": dt.time(12, 34, 56, 789000),
    "m": dt.datetime(2026, 1, 31, 1, 2, 3, 456789),
    "n": dt.datetime(2026, 1, 30, 23, 2, 3, tzinfo=dt.UTC),
    "o": b"\x00\xff",
    "p": '{"a": 1}',
    "q": '{"b": [1, 2]}',
    "r": [1, None, 3],
    "s": ["a", None, "c,d"],
}


@pytest.fixture
def types_table(table):
    execute(TYPES_DDL.replace("{t}", table))
    execute(TYPES_ROW.replace("{t}", table))
    return table


def check_types(got: pa.Table) -> None:
    assert {f.name: f.type for f in got.schema} == EXPECTED_TYPES
    rows = sorted(got.to_pylist(), key=lambda r: r["id"])
    first, nulls = rows
    for name, expected in EXPECTED_VALUES.items():
        value = first[name]
        if name == "n":
            value = value.astimezone(dt.UTC)
        assert value == expected, name
    assert all(v is None for k, v in nulls.items() if k != "id")


def test_every_type_round_trips_with_its_arrow_type(types_table):
    _, got = read({"table": types_table})
    check_types(got)


def test_a_query_with_params_reads_the_same_types(types_table):
    # With parameters the rows come through a server-side cursor rather than COPY: same result.
    _, got = read({"query": f"SELECT * FROM {types_table} WHERE id >= $low", "chunk_by": "id"}, params={"low": 0})
    check_types(got)


def test_types_without_an_arrow_type_come_as_text(table, schema):
    mood = f'"{schema}".mood'
    execute(f"CREATE TYPE {mood} AS ENUM ('sad', 'ok')")
    execute(f"CREATE TABLE {table} (u uuid, m {mood}, ip inet, amounts numeric(5,2)[], cash money, big numeric(80,2))")
    execute(
        f"INSERT INTO {table} VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'ok', '10.0.0.1', "
        "'{1.5,NULL}', 12.34, 1.25), (NULL, NULL, NULL, NULL, NULL, NULL)"
    )
    _, got = read({"table": table})
    assert got.schema.types == [pa.string()] * 3 + [pa.list_(pa.string())] + [pa.string()] * 2
    assert got.to_pylist()[0] == {
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "m": "ok",
        "ip": "10.0.0.1/32",
        "amounts": ["1.50", None],
        "cash": "12.34",
        "big": "1.25",
    }


def test_a_numeric_nan_in_a_decimal_column_is_a_clear_error(table):
    execute(f"CREATE TABLE {table} (x numeric(5,2))")
    execute(f"INSERT INTO {table} VALUES (1.5), ('NaN')")
    with pytest.raises(PermanentError, match="column 'x'.*decimal128"):
        read({"table": table})


# -- params --------------------------------------------------------------------------------------


@pytest.fixture
def people(table):
    execute(f"CREATE TABLE {table} (id integer, name text, born date)")
    execute(f"INSERT INTO {table} SELECT g, 'person ' || g, DATE '2000-01-01' + g FROM generate_series(1, 20) AS g")
    return table


def test_a_param_is_a_value_never_sql(people):
    evil = f"'; DROP TABLE {people}; --"
    for options in (
        {"query": f"SELECT * FROM {people} WHERE name = $who"},
        {"table": people, "where": "name = $who"},
    ):
        _, got = read(options, params={"who": evil})
        assert got.num_rows == 0
    assert execute(f"SELECT count(*) FROM {people}") == [(20,)]


def test_params_of_each_type_and_the_same_name_twice(people):
    options = {"query": f"SELECT id FROM {people} WHERE id >= $low AND id < $low + 3 AND born > $after"}
    _, got = read(options, params={"low": 5, "after": dt.date(2000, 1, 6)})
    assert sorted(got.column("id").to_pylist()) == [6, 7]
    counted = source(options, params={"low": 5, "after": dt.date(2000, 1, 1)})
    assert counted.count() == etl.RowCount(3, exact=True)
    counted.close()


def test_dollar_signs_in_literals_and_comments_are_not_params(people):
    query = f"SELECT id, '$who' AS tag FROM {people} WHERE id = $id -- not $this\n"
    _, got = read({"query": query}, params={"id": 3})
    assert got.to_pylist() == [{"id": 3, "tag": "$who"}]


def test_an_unknown_param_is_refused_with_a_suggestion(people):
    with pytest.raises(ValidationError, match=r'\$sinse is not a parameter of the job; did you mean "since"'):
        PostgresSourceOptions.model_validate(
            {"query": "SELECT 1 WHERE now() > $sinse"}, context={"params": ["since", "until"]}
        )
    with pytest.raises(ValidationError, match=r"\$nope is not a parameter"):
        PostgresSourceOptions.model_validate({"table": people, "where": "id = $nope"}, context={"params": []})
    with pytest.raises(PermanentError, match=r'\$sinse is not a parameter of the job; did you mean "since"'):
        source({"query": "SELECT 1 WHERE now() > $sinse"}, params={"since": dt.date(2026, 1, 1)})


def test_a_job_refuses_templates_and_unknown_params_in_sql(people):
    job = """\
name: j
params:
  since: {{type: date, default: "2026-01-01"}}
source:
  type: postgres
  dsn: {dsn}
  query: "{query}"
sink: {{type: parquet, path: out}}
"""
    good = etl.load_job(text=job.format(dsn=DSN, query=f"SELECT * FROM {people} WHERE born >= $since"))
    assert good.source.options.query.endswith("$since")
    with pytest.raises(etl.ConfigErrors, match='did you mean "since"'):
        etl.load_job(text=job.format(dsn=DSN, query=f"SELECT * FROM {people} WHERE born >= $snice"))
    with pytest.raises(etl.ConfigErrors, match=r"use \$since to pass a parameter to SQL"):
        etl.load_job(text=job.format(dsn=DSN, query=f"SELECT * FROM {people} WHERE born >= '{{{{ params.since }}}}'"))


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give `query` or `table`"),
        ({"query": "SELECT 1", "table": "t"}, "give `query` or `table`"),
        ({"query": "SELECT 1", "where": "true"}, "`columns` and `where` go with `table`"),
        ({"query": "SELECT 1 WHERE 1 = $1"}, "positional parameters are not supported"),
        ({"table": "a.b.c"}, "is not a table name"),
        ({"table": "t", "chunk_by": {"column": "ds"}}, "every: Field required"),
        ({"table": "t", "chunk_by": {"column": "ds", "every": "5 minutes"}}, "not a whole number of days or hours"),
        ({"table": "t", "chunk_by": {"column": "ds", "every": "1 day", "x": 1}}, "x: Extra inputs"),
        ({"table": "t", "chunk_by": 5}, "neither a column name nor a mapping"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(ValidationError, match=message):
        PostgresSourceOptions.model_validate(options)


def test_every_accepts_days_hours_and_weeks():
    for every in ("1 day", "7 days", "6 hours", "1d", "12h", "1 week"):
        PostgresSourceOptions.model_validate({"table": "t", "chunk_by": {"column": "ds", "every": every}})


# -- chunk_by: key ranges ----------------------------------------------------------------------------


@pytest.fixture
def skewed(table):
    """Keys 1..500, a few huge and negative ones, duplicates, and NULLs; ``rid`` names each row."""
    execute(f"CREATE TABLE {table} (rid serial, k bigint, x double precision)")
    execute(f"INSERT INTO {table} (k, x) SELECT g, g / 7.0 FROM generate_series(1, 500) AS g")
    execute(f"INSERT INTO {table} (k, x) VALUES (1000000000000, 1e12), (1000000000001, -3.5), (-5, NULL)")
    execute(f"INSERT INTO {table} (k, x) VALUES (42, 0.5), (42, 0.5)")
    execute(f"INSERT INTO {table} (k, x) SELECT NULL, NULL FROM generate_series(1, 7)")
    return table


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 10_000])
@pytest.mark.parametrize("column", ["k", "x"])
def test_key_ranges_cover_every_row_once(skewed, chunk_size, column):
    plan, got = read({"query": f"SELECT * FROM {skewed}", "chunk_by": column}, chunk_size)
    assert sorted(got.column("rid").to_pylist()) == list(range(1, 513))
    assert plan.chunks[-1].args["kind"] == "null"
    assert all(c.rows is None for c in plan.chunks)
    if chunk_size == 100 and column == "k":
        assert 2 < len(plan.chunks) <= 7  # about rows / chunk_size ranges, plus the NULL chunk


def test_a_key_range_is_the_same_rows_every_time(skewed):
    src = source({"table": skewed, "chunk_by": "k"})
    plan = src.plan(50)
    schema = schema_from_shared(plan.shared)
    for chunk in plan.chunks:
        first = pa.Table.from_batches(list(src.read(chunk, plan.shared)), schema=schema)
        second = pa.Table.from_batches(list(src.read(chunk, plan.shared)), schema=schema)
        assert first.equals(second)
    src.close()


def test_chunk_by_needs_a_number_column_of_the_rows(people):
    with pytest.raises(PermanentError, match="'name' is text; key ranges need an integer or numeric column"):
        source({"table": people, "chunk_by": "name"}).plan(10)
    with pytest.raises(PermanentError, match=r"chunk_by: \{column: \.\.\., every: 1 day\}"):
        source({"table": people, "chunk_by": "born"}).plan(10)
    with pytest.raises(PermanentError, match="'idd' is not among the columns read; did you mean \"id\""):
        source({"table": people, "chunk_by": "idd"}).plan(10)


def test_an_empty_or_all_null_key_plans_only_what_is_there(table):
    execute(f"CREATE TABLE {table} (k integer)")
    assert source({"table": table, "chunk_by": "k"}).plan(10).chunks == []
    execute(f"INSERT INTO {table} VALUES (NULL), (NULL)")
    plan, got = read({"table": table, "chunk_by": "k"}, 10)
    assert [c.args["kind"] for c in plan.chunks] == ["null"] and got.num_rows == 2


# -- chunk_by: date slices ---------------------------------------------------------------------------


@pytest.fixture
def events(table):
    """Rows over about three days, at uneven times; some without a time."""
    execute(f"CREATE TABLE {table} (rid serial, at timestamptz, local timestamp, day date)")
    execute(
        f"INSERT INTO {table} (at, local, day) SELECT ts, ts AT TIME ZONE 'UTC', (ts AT TIME ZONE 'UTC')::date "
        "FROM (SELECT TIMESTAMPTZ '2026-03-01 05:17:00+00' + g * INTERVAL '37 minutes' AS ts "
        "FROM generate_series(0, 199) AS g) AS s"
    )
    execute(f"INSERT INTO {table} (at, local, day) SELECT NULL, NULL, NULL FROM generate_series(1, 3)")
    return table


@pytest.mark.parametrize(
    ("column", "every", "slices"),
    [("day", "1 day", 6), ("day", "2 days", 3), ("at", "1 day", 6), ("at", "6 hours", 21), ("local", "12 hours", 11)],
)
def test_date_slices_cover_every_row_once(events, column, every, slices):
    plan, got = read({"table": events, "chunk_by": {"column": column, "every": every}})
    assert sorted(got.column("rid").to_pylist()) == list(range(1, 204))
    kinds = [c.args["kind"] for c in plan.chunks]
    assert kinds == ["slice"] * slices + ["null"]
    assert plan.chunks[0].args["lo"] is None and plan.chunks[-2].args["hi"] is None
    if slices > 1:
        first_edge = plan.chunks[0].args["hi"]
        assert first_edge.startswith("2026-03-0")


def test_day_slices_start_at_midnight_and_hold_their_day(events):
    plan = source({"table": events, "chunk_by": {"column": "at", "every": "1 day"}}).plan(10)
    assert plan.chunks[0].args["hi"] == "2026-03-02T00:00:00+00:00"
    src = source({"table": events, "chunk_by": {"column": "at", "every": "1 day"}})
    second = pa.Table.from_batches(list(src.read(plan.chunks[1], plan.shared)))
    days = {t.date() for t in second.column("at").to_pylist()}
    assert days == {dt.date(2026, 3, 2)}
    src.close()


def test_slices_need_a_date_or_timestamp_column(events):
    with pytest.raises(PermanentError, match="slices need a date, timestamp or timestamptz column"):
        source({"table": events, "chunk_by": {"column": "rid", "every": "1 day"}}).plan(10)
    with pytest.raises(PermanentError, match="is a date; `every` must be whole days"):
        source({"table": events, "chunk_by": {"column": "day", "every": "6 hours"}}).plan(10)


# -- a table without chunk_by: block ranges -----------------------------------------------------------


def test_block_ranges_see_rows_written_after_planning(table):
    execute(f"CREATE TABLE {table} (id integer, pad text)")
    execute(f"INSERT INTO {table} SELECT g, repeat('x', 100) FROM generate_series(1, 5000) AS g")
    execute(f"ANALYZE {table}")
    src = source({"table": table})
    plan = src.plan(500)
    assert len(plan.chunks) >= 8 and all(c.args["kind"] == "blocks" for c in plan.chunks)
    assert plan.chunks[-1].args["stop"] is None  # open-ended
    execute(f"INSERT INTO {table} SELECT g, repeat('y', 100) FROM generate_series(5001, 6000) AS g")
    ids = [i for c in plan.chunks for b in src.read(c, plan.shared) for i in b.column("id").to_pylist()]
    assert sorted(ids) == list(range(1, 6001))
    src.close()


def test_a_table_never_analyzed_is_still_split_by_blocks(table):
    execute(f"CREATE TABLE {table} (id integer) WITH (autovacuum_enabled = false)")
    execute(f"INSERT INTO {table} SELECT g FROM generate_series(1, 20000) AS g")
    plan, got = read({"table": table, "columns": ["id"], "where": "id % 2 = 0"}, 2_000)
    assert len(plan.chunks) >= 5
    assert sorted(got.column("id").to_pylist()) == list(range(2, 20001, 2))


def test_a_partitioned_table_is_split_partition_by_partition(table, schema):
    execute(f"CREATE TABLE {table} (id integer, day date) PARTITION BY RANGE (day)")
    for month in (1, 2):
        part = f"{table}_{month}"
        execute(
            f"CREATE TABLE {part} PARTITION OF {table} FOR VALUES FROM ('2026-0{month}-01') TO ('2026-0{month + 1}-01')"
        )
    execute(f"INSERT INTO {table} SELECT g, DATE '2026-01-01' + (g % 59) FROM generate_series(1, 10000) AS g")
    execute(f"ANALYZE {table}")
    plan, got = read({"table": table}, 1_000)
    relations = {tuple(c.args["relation"]) for c in plan.chunks}
    assert len(relations) == 2 and len(plan.chunks) >= 6
    assert sorted(got.column("id").to_pylist()) == list(range(1, 10001))


def test_a_view_is_one_chunk(people, schema):
    view = f"{schema}.v_{uuid.uuid4().hex[:8]}"
    execute(f"CREATE VIEW {view} AS SELECT * FROM {people}")
    plan, got = read({"table": view}, 5)
    assert [c.args["kind"] for c in plan.chunks] == ["all"] and got.num_rows == 20


def test_a_query_without_chunk_by_is_one_chunk(people):
    plan, got = read({"query": f"SELECT id FROM {people};"}, 5)
    assert [c.label for c in plan.chunks] == ["all rows"] and got.num_rows == 20


# -- errors -------------------------------------------------------------------------------------------


def test_a_missing_table_or_column_or_a_bad_query_is_permanent(schema, people):
    with pytest.raises(PermanentError, match=rf'relation "{schema}.nope" does not exist'):
        source({"table": f"{schema}.nope"}).plan(10)
    with pytest.raises(PermanentError, match='column "nope" does not exist'):
        source({"table": people, "columns": ["id", "nope"]}).plan(10)
    with pytest.raises(PermanentError, match="syntax error"):
        source({"query": "SELECT FROM WHERE"}).count()
    with pytest.raises(PermanentError, match="division by zero"):
        read({"query": f"SELECT 1 / (id - 20) AS x FROM {people}"})


def test_a_permission_error_is_permanent(people):
    role = f"etl_noperm_{uuid.uuid4().hex[:8]}"
    execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        dsn = DSN.replace("root@", f"{role}@")
        with pytest.raises(PermanentError, match="permission denied"):
            make_stage("source", {"type": "postgres", "dsn": dsn, "table": people}).plan(10)
    finally:
        execute(f'DROP ROLE "{role}"')


def test_an_unreachable_server_is_transient():
    src = make_stage("source", {"type": "postgres", "dsn": "postgresql://root@127.0.0.1:1/test", "query": "SELECT 1"})
    with pytest.raises(TransientError, match="connecting to PostgreSQL"):
        src.plan(10)
    with pytest.raises(TransientError):
        src.count()


# -- memory -----------------------------------------------------------------------------------------


@pytest.fixture
def million(table):
    execute(f"CREATE TABLE {table} AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 1000000) AS g")
    return table


@pytest.mark.parametrize("params", [{}, {"low": 0}], ids=["copy", "cursor"])
def test_a_million_rows_in_one_chunk_come_in_batches_of_at_most_batch_size(million, params):
    where = " WHERE id > $low" if params else ""
    src = source({"query": f"SELECT * FROM {million}{where}"}, params=params, batch_size=50_000)
    plan = src.plan(10_000_000)
    assert len(plan.chunks) == 1
    sizes = [b.num_rows for b in src.read(plan.chunks[0], plan.shared)]
    src.close()
    assert sum(sizes) == 1_000_000
    assert max(sizes) <= 50_000 and len(sizes) >= 20


def test_a_read_abandoned_half_way_leaves_the_source_usable(million):
    src = source({"table": million}, batch_size=1_000)
    plan = src.plan(2_000_000)
    reader = src.read(plan.chunks[0], plan.shared)
    next(reader)
    reader.close()  # the consumer stopped (a failed sink, a cancelled run)
    assert src.count().rows == 1_000_000
    src.close()


# -- the command line -------------------------------------------------------------------------------


def test_a_job_reads_a_table_filtered_by_a_date_param_into_parquet(cli, write, tmp_path, table):
    execute(f"CREATE TABLE {table} (id bigint, day date, amount numeric(10,2), note text)")
    execute(
        f"INSERT INTO {table} SELECT g, DATE '2026-01-01' + (g % 30), g * 1.25, 'n' || g "
        "FROM generate_series(1, 900) AS g"
    )
    job = write(
        "job.yaml",
        f"""
        name: pg_to_parquet
        params:
          since: {{type: date, required: true}}
        source:
          type: postgres
          dsn: {DSN}
          table: {table}
          where: "day >= $since"
        sink:
          type: parquet
          path: out/rows
        chunk_size: 100
        """,
    )
    result = cli("run", str(job), "-p", "since=2026-01-21")
    assert result.returncode == 0, result.stderr
    got = pq.read_table(tmp_path / "out/rows")
    expected = [i for i in range(1, 901) if i % 30 >= 20]
    assert sorted(got.column("id").to_pylist()) == expected
    assert got.schema.field("amount").type == pa.decimal128(10, 2)
    assert min(got.column("day").to_pylist()) == dt.date(2026, 1, 21)


# -- the schema before reading ---------------------------------------------------------------------


def test_the_schema_comes_from_a_query_of_no_rows_and_is_what_chunks_read(table):
    execute(f"CREATE TABLE {table} (id bigint, amount numeric(12, 2), note text, ds date)")
    execute(f"INSERT INTO {table} VALUES (1, 2.50, 'a', '2026-01-01')")
    assert source({"table": table}).output_schema() == pa.schema(
        [("id", pa.int64()), ("amount", pa.decimal128(12, 2)), ("note", pa.string()), ("ds", pa.date32())]
    )
    assert source({"table": table, "columns": ["ds", "id"]}).output_schema().names == ["ds", "id"]
    query = {"query": f"SELECT id AS order_id, note FROM {table}"}
    assert source(query).output_schema().names == ["order_id", "note"]
    _, rows = read(query)
    assert rows.schema == source(query).output_schema()
