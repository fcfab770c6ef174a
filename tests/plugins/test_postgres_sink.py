"""The postgres sink against the real PostgreSQL: types, bad values, identifiers, schema changes,
replace seen from a concurrent reader, merge without a unique index."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import threading
import time
import uuid

import psycopg
import pyarrow as pa
import pytest

from etl import Chunk, PermanentError, RejectedRows
from etl.rejects import ChunkRejects
from etl.stages import current_rejects
from tests.contract.cases_postgres import DSN
from tests.contract.framework import make_stage


@pytest.fixture
def schema():
    name = f"etl_sink_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def sql(statement: str, params=None):
    with psycopg.connect(DSN, autocommit=True) as con:
        cur = con.execute(statement, params)
        return cur.fetchall() if cur.description else None


def write(options: dict, *batches: pa.RecordBatch, run_id: str = "run-1", finalize: bool = True, **context):
    sink = make_stage("sink", {"type": "postgres", "dsn": DSN, **options}, run_id=run_id, **context)
    try:
        sink.prepare()
        written = [sink.write(Chunk(i), iter([b])) for i, b in enumerate(batches)]
        if finalize:
            sink.finalize()
    finally:
        sink.close()
    return written


EVERY_TYPE = pa.record_batch(
    {
        "i16": pa.array([1, None], pa.int16()),
        "i32": pa.array([2, None], pa.int32()),
        "i64": pa.array([3, None], pa.int64()),
        "u64": pa.array([2**63 + 5, None], pa.uint64()),
        "f32": pa.array([1.5, None], pa.float32()),
        "f64": pa.array([2.25, None]),
        "dec": pa.array([decimal.Decimal("12345.678"), None], pa.decimal128(12, 3)),
        "txt": pa.array(['é,"q"\n', None]),
        "flag": pa.array([True, None]),
        "day": pa.array([dt.date(2026, 2, 28), None]),
        "clock": pa.array([dt.time(13, 14, 15, 123456), None], pa.time64("us")),
        "naive": pa.array([dt.datetime(2026, 1, 1, 12, 30), None], pa.timestamp("us")),
        "aware": pa.array([dt.datetime(2026, 1, 1, 12, 30, tzinfo=dt.UTC), None], pa.timestamp("us", tz="UTC")),
        "raw": pa.array([b"\x00\xff", None]),
        "doc": pa.array(['{"a": [1, 2]}', None], pa.json_(pa.string())),
        "ints": pa.array([[1, None, 3], None], pa.list_(pa.int64())),
        "words": pa.array([["a", "b"], None], pa.list_(pa.string())),
        "nested": pa.array([{"x": 1, "y": "z"}, None], pa.struct([("x", pa.int64()), ("y", pa.string())])),
    }
)

EXPECTED_TYPES = {
    "i16": "smallint",
    "i32": "integer",
    "i64": "bigint",
    "u64": "numeric(20,0)",
    "f32": "real",
    "f64": "double precision",
    "dec": "numeric(12,3)",
    "txt": "text",
    "flag": "boolean",
    "day": "date",
    "clock": "time without time zone",
    "naive": "timestamp without time zone",
    "aware": "timestamp with time zone",
    "raw": "bytea",
    "doc": "jsonb",
    "ints": "bigint[]",
    "words": "text[]",
    "nested": "jsonb",
}


def test_every_listed_type_round_trips_with_nulls(schema):
    write({"table": f"{schema}.every"}, EVERY_TYPE)
    types = dict(
        sql(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0",
            [f'"{schema}".every'],
        )
    )
    assert types == EXPECTED_TYPES
    with psycopg.connect(DSN) as con:
        rows = con.execute(f'SELECT * FROM "{schema}".every ORDER BY i16 NULLS LAST').fetchall()
    first, second = rows
    assert second == (None,) * len(EXPECTED_TYPES)
    values = dict(zip(EXPECTED_TYPES, first, strict=True))
    assert values["u64"] == decimal.Decimal(2**63 + 5)
    assert values["dec"] == decimal.Decimal("12345.678")
    assert values["txt"] == 'é,"q"\n'
    assert values["clock"] == dt.time(13, 14, 15, 123456)
    assert values["naive"] == dt.datetime(2026, 1, 1, 12, 30)
    assert values["aware"] == dt.datetime(2026, 1, 1, 12, 30, tzinfo=dt.UTC)
    assert values["raw"] == b"\x00\xff"
    assert values["doc"] == {"a": [1, 2]}
    assert values["ints"] == [1, None, 3] and values["words"] == ["a", "b"]
    assert values["nested"] == {"x": 1, "y": "z"}


@pytest.fixture
def strict_table(schema):
    sql(f'CREATE SCHEMA "{schema}"')
    sql(f'CREATE TABLE "{schema}".strict (id integer, amount numeric(5,2), note text)')
    return f"{schema}.strict"


BAD = pa.record_batch(
    {
        "id": pa.array([1, 2, 3_000_000_000, 4], pa.int64()),
        "amount": pa.array([decimal.Decimal(v) for v in ("1.50", "123456.00", "2.00", "3.00")], pa.decimal128(10, 2)),
        "note": pa.array(["ok", "fine", "also", "nul\x00inside"]),
    }
)


def test_values_that_do_not_fit_fail_the_chunk_naming_row_and_column(strict_table):
    with pytest.raises(RejectedRows) as info:
        write({"table": strict_table}, BAD)
    # Text with a NUL is checked first; the error names that row, its column and value.
    assert (info.value.row, info.value.column) == (3, "note")
    assert "NUL character" in info.value.reason and "nul" in info.value.value
    assert sql(f"SELECT count(*) FROM {strict_table}") == [(0,)], "nothing of the chunk was written"


def test_with_skip_bad_values_are_rejected_and_the_rest_loaded(strict_table, tmp_path):
    collector = ChunkRejects(tmp_path, 0)
    token = current_rejects.set(collector)
    try:
        write({"table": strict_table}, BAD, on_error="skip")
    finally:
        current_rejects.reset(token)
    collector.commit()
    assert sql(f"SELECT id, amount, note FROM {strict_table}") == [(1, decimal.Decimal("1.50"), "ok")]
    rejected = [json.loads(line) for line in (tmp_path / "chunk-00000.jsonl").read_text().splitlines()]
    assert sorted((r["row"], r["column"]) for r in rejected) == [(1, "amount"), (2, "id"), (3, "note")]
    assert any("NUL character" in r["reason"] for r in rejected)


def test_identifiers_are_quoted_whatever_they_hold(schema):
    name = 'odd"; DROP TABLE canary; --'
    sql("CREATE TABLE IF NOT EXISTS public.canary (x int)")
    try:
        batch = pa.record_batch({'col "x"': pa.array([1]), "select": pa.array(["from"])})
        write({"table": f'{schema}."{name.replace(chr(34), chr(34) * 2)}"'}, batch)
        assert sql("SELECT count(*) FROM pg_tables WHERE tablename = 'canary'") == [(1,)]
        assert sql(f'SELECT "col ""x""", "select" FROM "{schema}"."{name.replace(chr(34), chr(34) * 2)}"') == [
            (1, "from")
        ]
    finally:
        sql("DROP TABLE IF EXISTS public.canary")


def test_new_columns_fail_or_are_added_as_configured(schema):
    table = f"{schema}.grow"
    write({"table": table}, pa.record_batch({"id": pa.array([1])}))
    wider = pa.record_batch({"id": pa.array([2]), "extra": pa.array(["x"])})
    with pytest.raises(PermanentError, match=r"has no column 'extra'; add it, .*on_schema_change: add_columns"):
        write({"table": table}, wider, run_id="run-2")
    write({"table": table, "on_schema_change": "add_columns"}, wider, run_id="run-3")
    assert sql(f'SELECT id, extra FROM "{schema}".grow ORDER BY id') == [(1, None), (2, "x")]


def test_without_create_a_missing_table_is_an_error(schema):
    with pytest.raises(PermanentError, match="does not exist; create it, or set `create: true`"):
        write({"table": f"{schema}.missing", "create": False}, pa.record_batch({"id": pa.array([1])}))


def test_merge_into_a_table_without_a_unique_key_uses_merge(schema):
    sql(f'CREATE SCHEMA "{schema}"')
    sql(f'CREATE TABLE "{schema}".plain (id bigint, v text)')
    sql(f"INSERT INTO \"{schema}\".plain VALUES (1, 'old'), (2, 'old')")
    batch = pa.record_batch({"id": pa.array([2, 3, 3]), "v": pa.array(["new", "first", "last"])})
    write({"table": f"{schema}.plain", "mode": "merge", "key": ["id"]}, batch)
    assert sql(f'SELECT id, v FROM "{schema}".plain ORDER BY id') == [(1, "old"), (2, "new"), (3, "last")]


def test_replace_is_atomic_for_a_concurrent_reader(schema):
    table = f"{schema}.swap"
    old = pa.record_batch({"id": pa.array(range(1_000))})
    write({"table": table, "mode": "replace"}, old, run_id="run-old")
    seen: set[int] = set()
    stop = threading.Event()

    def reader():
        with psycopg.connect(DSN, autocommit=True) as con:
            while not stop.is_set():
                seen.add(con.execute(f'SELECT count(*) FROM "{schema}".swap').fetchone()[0])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        new = [pa.record_batch({"id": pa.array(range(i * 500, (i + 1) * 500))}) for i in range(6)]
        sink = make_stage("sink", {"type": "postgres", "dsn": DSN, "table": table, "mode": "replace"}, run_id="run-new")
        for i, batch in enumerate(new):
            sink.write(Chunk(i), iter([batch]))
            time.sleep(0.05)
        assert sql(f'SELECT count(*) FROM "{schema}".swap') == [(1_000,)], "the old table until finalize"
        sink.finalize()
        sink.close()
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert seen == {1_000, 3_000}, f"a reader saw only the old or the new table, never a mix: {seen}"


def test_a_null_merge_key_is_rejected_not_collapsed(schema, tmp_path):
    batch = pa.record_batch({"id": pa.array([1, None, None]), "v": pa.array(["a", "b", "c"])})
    with pytest.raises(RejectedRows, match="the merge key is NULL"):
        write({"table": f"{schema}.keyed", "mode": "merge", "key": ["id"]}, batch)
    collector = ChunkRejects(tmp_path, 0)
    token = current_rejects.set(collector)
    try:
        write({"table": f"{schema}.keyed", "mode": "merge", "key": ["id"]}, batch, run_id="run-2", on_error="skip")
    finally:
        current_rejects.reset(token)
    collector.commit()
    assert collector.count == 2
    assert sql(f'SELECT id, v FROM "{schema}".keyed') == [(1, "a")]


def test_without_create_replace_refuses_a_missing_table_too(schema):
    with pytest.raises(PermanentError, match="does not exist; create it, or set `create: true`"):
        write(
            {"table": f"{schema}.missing", "create": False, "mode": "replace"}, pa.record_batch({"id": pa.array([1])})
        )


def test_a_user_without_create_privileges_loads_existing_tables(schema):
    role = f"etl_loader_{uuid.uuid4().hex[:6]}"
    write({"table": f"{schema}.shared"}, pa.record_batch({"id": pa.array([1])}))  # made by an owner once
    sql(f'CREATE ROLE "{role}" LOGIN')
    try:
        sql(f'GRANT USAGE ON SCHEMA "{schema}", _etl TO "{role}"')
        sql(f'GRANT SELECT, INSERT ON "{schema}".shared TO "{role}"')
        sql(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA _etl TO "{role}"')
        dsn = DSN.replace("root@", f"{role}@")
        sink = make_stage("sink", {"type": "postgres", "dsn": dsn, "table": f"{schema}.shared"}, run_id="run-2")
        try:
            assert sink.write(Chunk(0), iter([pa.record_batch({"id": pa.array([2])})])) == 1
        finally:
            sink.close()
        assert sql(f'SELECT count(*) FROM "{schema}".shared') == [(2,)]
    finally:
        sql(f'DROP OWNED BY "{role}"')
        sql(f'DROP ROLE "{role}"')


def test_values_a_column_type_would_change_are_rejected(schema):
    sql(f'CREATE SCHEMA "{schema}"')
    sql(f'CREATE TABLE "{schema}".narrow (r real, d date)')
    table = f"{schema}.narrow"
    with pytest.raises(RejectedRows, match="1e.300 is beyond the range of float"):
        write({"table": table}, pa.record_batch({"r": pa.array([1e300])}))
    with pytest.raises(RejectedRows, match="has a time of day, which a date can't hold"):
        write({"table": table}, pa.record_batch({"d": pa.array([dt.datetime(2026, 1, 1, 5)], pa.timestamp("us"))}))
    write({"table": table}, pa.record_batch({"r": pa.array([0.5]), "d": pa.array([dt.datetime(2026, 1, 2)])}))
    assert sql(f"SELECT r, d FROM {table}") == [(0.5, dt.date(2026, 1, 2))]


def test_sinks_making_one_new_schema_at_once_do_not_collide():
    """Found by the soak: the first runs into a fresh database, started together, each created
    the state schema (and their targets' schema) at once, and all but one failed with a
    unique violation."""
    schema, state = f"etl_race_{uuid.uuid4().hex[:6]}", f"etl_race_state_{uuid.uuid4().hex[:6]}"
    batch = pa.record_batch({"id": pa.array(range(10), pa.int64())})
    barrier, errors = threading.Barrier(8), []

    def load(n: int) -> None:
        options = {"type": "postgres", "dsn": DSN, "table": f"{schema}.t{n}", "state_schema": state}
        sink = make_stage("sink", options, run_id=f"r{n}")
        try:
            barrier.wait()
            sink.prepare()
            sink.write(Chunk(0), iter([batch]))
            sink.finalize()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            sink.close()

    threads = [threading.Thread(target=load, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert [sql(f"SELECT count(*) FROM {schema}.t{n}")[0][0] for n in range(8)] == [10] * 8
    finally:
        sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        sql(f"DROP SCHEMA IF EXISTS {state} CASCADE")


@pytest.mark.parametrize(
    "text",
    [
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL: the database system '
        "is starting up",
        "connection failed: FATAL: the database system is shutting down",
        "connection failed: FATAL: sorry, too many clients already",
    ],
)
def test_a_server_restarting_or_full_is_a_transient_error(text):
    """Found by the soak: a chunk that connected while PostgreSQL was starting up again failed
    for good. The driver gives no SQLSTATE for a refused connection: the message says it."""
    from etl_plugins.postgres._common import classify

    from etl import TransientError

    assert isinstance(classify(psycopg.OperationalError(text), "connecting to PostgreSQL"), TransientError)


def test_a_connection_the_server_ended_between_chunks_is_replaced(schema):
    """Found by the soak: after a PostgreSQL restart, the sink kept its dead connection, and every
    later chunk failed for good with "the connection is closed"."""
    from etl import TransientError

    batch = pa.record_batch({"id": pa.array(range(10), pa.int64())})
    sink = make_stage("sink", {"type": "postgres", "dsn": DSN, "table": f"{schema}.t"}, run_id="run-restart")
    try:
        sink.prepare()
        assert sink.write(Chunk(0), iter([batch])) == 10
        sql("SELECT pg_terminate_backend(%s)", [sink.con.info.backend_pid])
        # The statement that finds it out is one no rollback follows (reading the target's
        # columns, as a chunk's write does first when they are not known yet).
        with pytest.raises(TransientError):
            sink._columns_of("t", refresh=True)
        assert sink.write(Chunk(1), iter([batch])) == 10  # the next write, on a new connection
        assert sql(f"SELECT count(*), count(DISTINCT id) FROM {schema}.t") == [(20, 10)]
    finally:
        sink.close()
