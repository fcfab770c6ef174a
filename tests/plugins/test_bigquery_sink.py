"""Sink bigquery against a BigQuery emulator (``bqemulator``): jobs end to end, exactly once
(chunks written twice, finalize retried, attempts fenced, many chunks merged), abort, the type
mapping both ways, and the errors of bad input. Every test has a dataset of its own."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from dataclasses import replace
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from etl_plugins.bigquery import _sink_finalize
from etl_plugins.bigquery import sink as bq_sink
from etl_plugins.bigquery._sink_types import arrow_type, schema_fields
from etl_plugins.bigquery.sink import BigQuerySinkOptions
from pydantic import ValidationError

import etl
from etl import Chunk, Interrupted, PermanentError, RejectedRows, TransientError
from etl.rejects import ChunkRejects
from etl.stages import current_rejects
from tests.contract.framework import make_stage

PROJECT = "test-project"
# The names BigQuery's API may give types in (the emulator gives the legacy ones).
LEGACY = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD"}


@pytest.fixture
def dataset(bigquery):
    name = f"sink_{uuid.uuid4().hex[:10]}"
    bigquery.create_dataset(name)
    yield name
    bigquery.delete_dataset(name, delete_contents=True, not_found_ok=True)


def sink(table: str, run_id: str = "run-1", on_error="fail", **options):
    options = {"type": "bigquery", "project": PROJECT, "table": table, **options}
    return make_stage("sink", options, run_id=run_id, on_error=on_error)


def sink_run(
    table: str, *batches: pa.RecordBatch, run_id: str = "run-1", finalize: bool = True, on_error="fail", **options
) -> list[int]:
    """Prepare, write each batch as a chunk from a sink of its own (as workers would), finalize."""
    first = sink(table, run_id, **options)
    first.prepare()
    first.close()
    written = []
    for index, batch in enumerate(batches):
        stage = sink(table, run_id, on_error=on_error, **options)
        written.append(stage.write(Chunk(index), iter([batch])))
        stage.close()
    if finalize:
        last = sink(table, run_id, **options)
        last.finalize()
        last.close()
    return written


def query(bigquery, sql: str) -> list[tuple]:
    return [tuple(row.values()) for row in bigquery.query(sql).result()]


def tables(bigquery, dataset: str) -> set[str]:
    return {t.table_id for t in bigquery.list_tables(dataset)}


def ids(bigquery, table: str) -> list[int]:
    return [row[0] for row in query(bigquery, f"SELECT id FROM `{PROJECT}.{table}` ORDER BY id")]


def numbers(start: int, stop: int, **more: pa.Array) -> pa.RecordBatch:
    return pa.record_batch({"id": pa.array(range(start, stop), pa.int64()), **more})


# -- jobs end to end -------------------------------------------------------------------------------

JOB = """\
name: orders
source:
  type: generate
  rows: {rows}
  seed: 7
  columns:
    id: {{kind: sequence}}
    name: {{kind: string, prefix: "order-", null_fraction: 0.1}}
    amount: {{kind: float, min: 0, max: 100, decimals: 2}}
    day: {{kind: date}}
sink: {{type: bigquery, project: {project}, table: {table}, mode: {mode}}}
chunk_size: 1000
"""


def run_job(table: str, rows: int, mode: str) -> etl.RunResult:
    job = etl.load_job(text=JOB.format(rows=rows, project=PROJECT, table=table, mode=mode))
    return etl.run(job)


def test_append_then_replace_through_jobs(bigquery, dataset):
    table = f"{dataset}.orders"
    first = run_job(table, 2_500, "append")
    assert (first.state, first.rows_written, first.chunks_done) == ("completed", 2_500, 3)
    run_job(table, 2_500, "append")  # another run: its rows are added
    assert query(bigquery, f"SELECT COUNT(*), COUNT(DISTINCT id) FROM `{PROJECT}.{table}`") == [(5_000, 2_500)]
    run_job(table, 1_200, "replace")
    assert ids(bigquery, table) == list(range(1, 1_201))
    nulls, days, low, high = query(
        bigquery,
        f"SELECT COUNTIF(name IS NULL), COUNT(DISTINCT day), MIN(amount), MAX(amount) FROM `{PROJECT}.{table}`",
    )[0]
    assert 60 < nulls < 180 and days > 200 and 0 <= low < high <= 100
    schema = {f.name: LEGACY.get(f.field_type, f.field_type) for f in bigquery.get_table(f"{PROJECT}.{table}").schema}
    assert schema == {"id": "INT64", "name": "STRING", "amount": "FLOAT64", "day": "DATE"}
    assert tables(bigquery, dataset) == {"orders", "_etl_finalized"}, "no staging table is left"
    assert query(bigquery, f"SELECT COUNT(*) FROM `{PROJECT}.{dataset}._etl_finalized`") == [(3,)]


def test_a_run_that_fails_keeps_its_staging_until_it_is_cancelled(bigquery, dataset):
    """Append is run-atomic here: chunks 0-2 were staged, chunk 3 fails; the target is untouched,
    the staging waits for `etl retry`, and a cancel drops it."""
    text = JOB.format(rows=40_000, project=PROJECT, table=f"{dataset}.orders", mode="append")
    text = text.replace("chunk_size: 1000", "chunk_size: 10000\ntransforms: [{type: cast, columns: {id: int16}}]")
    with pytest.raises(etl.JobFailed, match=r"failed at chunk 3: .*column 'id' value 32768") as info:
        etl.run(etl.load_job(text=text))
    result = info.value.result
    assert result.chunks_done == 3
    assert f"etl retry {result.run_id}" in str(info.value), "the message says what was kept"
    staged = tables(bigquery, dataset) - {"_etl_finalized"}
    assert len(staged) == 3 and all(t.startswith("_etl_stage_orders_") for t in staged), "no target, its staging"
    assert etl.api.cancel(result.run_id).aborted
    assert tables(bigquery, dataset) == {"_etl_finalized"}, "no table, no staging table"


def test_the_command_line_runs_and_validates_bigquery_jobs(cli, write, bigquery, dataset):
    job = write("orders.yaml", JOB.format(rows=1_500, project=PROJECT, table=f"{dataset}.orders", mode="append"))
    result = cli("run", str(job), "--sync")
    assert result.returncode == 0, result.stderr
    assert ids(bigquery, f"{dataset}.orders") == list(range(1, 1_501))
    bad = write("bad.yaml", JOB.format(rows=10, project=PROJECT, table="orders", mode="append"))
    result = cli("validate", str(bad))
    assert result.returncode == 2
    assert "bad.yaml:11: sink: 'orders' is not a table name; expected project.dataset.table" in result.stderr


# -- exactly once ------------------------------------------------------------------------------------


def test_a_chunk_written_twice_leaves_one_copy(bigquery, dataset):
    table = f"{dataset}.t"
    first = sink(table)
    first.prepare()
    assert first.write(Chunk(0), iter([numbers(0, 3)])) == 3
    assert first.write(Chunk(0), iter([numbers(0, 3)])) == 3
    assert first.write(Chunk(1), iter([numbers(3, 5)])) == 2
    first.close()
    again = sink(table)  # a retry in another process
    one_by_one = pa.Table.from_batches([numbers(0, 3)]).to_batches(max_chunksize=1)
    assert again.write(Chunk(0, attempt=2), iter(one_by_one)) == 3
    assert "t" not in tables(bigquery, dataset), "nothing is visible before finalize, not even the table"
    again.finalize()
    again.close()
    assert ids(bigquery, table) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_a_finalize_retried_after_its_commit_changes_nothing(bigquery, dataset, monkeypatch, mode):
    table = f"{dataset}.t"
    sink_run(table, numbers(100, 103), run_id="run-0")  # rows from before
    sink_run(table, numbers(0, 3), numbers(3, 5), mode=mode, finalize=False)
    crashed = sink(table, mode=mode)

    def die(self):
        raise ConnectionError("the worker died")

    with monkeypatch.context() as patch:  # after the commit, before dropping the staging tables
        patch.setattr(bq_sink.BigQuerySink, "_drop_staging", die)
        with pytest.raises(ConnectionError):
            crashed.finalize()
    crashed.close()
    expected = ([100, 101, 102] if mode == "append" else []) + [0, 1, 2, 3, 4]
    assert ids(bigquery, table) == sorted(expected)
    assert any(t.startswith("_etl_stage_") for t in tables(bigquery, dataset))
    for _ in range(2):
        retried = sink(table, mode=mode)
        retried.finalize()
        retried.close()
        assert ids(bigquery, table) == sorted(expected)
    assert tables(bigquery, dataset) == {"t", "_etl_finalized"}


def test_a_finalize_refuses_when_a_chunks_staged_rows_are_gone(bigquery, dataset):
    table = f"{dataset}.t"
    written = sink_run(table, numbers(0, 3), numbers(3, 5), numbers(5, 9), finalize=False)
    [gone] = [t for t in tables(bigquery, dataset) if t.endswith("c000001")]
    bigquery.delete_table(f"{PROJECT}.{dataset}.{gone}")  # as if it expired before a late retry
    last = sink(table)
    last.context.written = dict(enumerate(written))
    with pytest.raises(PermanentError, match=r"the staged rows of chunk\(s\) 1 are gone .* nothing was made visible"):
        last.finalize()
    last.close()
    assert "t" not in tables(bigquery, dataset)
    # A chunk that wrote no rows stages nothing, and nothing is missed for it.
    empty = sink(table, run_id="run-2")
    empty.prepare()
    empty.write(Chunk(0), iter([numbers(0, 2)]))
    empty.context.written = {0: 2, 1: 0}
    empty.finalize()
    empty.close()
    assert ids(bigquery, table) == [0, 1]


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_abort_drops_the_staging_tables_and_leaves_the_table(bigquery, dataset, mode):
    table = f"{dataset}.t"
    sink_run(table, numbers(0, 3), run_id="run-0")
    sink_run(table, numbers(10, 20), numbers(20, 30), run_id="run-1", mode=mode, finalize=False)
    assert len([t for t in tables(bigquery, dataset) if t.startswith("_etl_stage_")]) == 2
    aborting = sink(table, "run-1", mode=mode)
    aborting.abort()
    aborting.close()
    assert tables(bigquery, dataset) == {"t", "_etl_finalized"}
    assert ids(bigquery, table) == [0, 1, 2]


def test_a_newer_attempt_fences_out_an_older_one(bigquery, dataset):
    table = f"{dataset}.t"
    batches = pa.Table.from_batches([numbers(0, 400)]).to_batches(max_chunksize=100)

    def stalling():
        yield batches[0]
        newer = sink(table)  # the lease was lost meanwhile: attempt 2 writes the chunk
        assert newer.write(Chunk(0, attempt=2), iter(batches)) == 400
        newer.close()
        yield from batches[1:]

    older = sink(table)
    older.prepare()
    with pytest.raises(Interrupted):
        older.write(Chunk(0, attempt=1), stalling())
    with pytest.raises(Interrupted):  # and an older attempt that starts late is refused at once
        older.write(Chunk(0, attempt=1), iter(batches))
    older.finalize()
    older.close()
    assert ids(bigquery, table) == list(range(400))


def test_many_staging_tables_are_merged_first_and_a_crash_mid_merge_is_safe(bigquery, dataset, monkeypatch):
    monkeypatch.setattr(_sink_finalize, "MAX_UNION", 2)
    table = f"{dataset}.t"
    chunks = [numbers(i * 10, i * 10 + 10) for i in range(5)] + [numbers(0, 0)]
    assert sink_run(table, *chunks, finalize=False) == [10] * 5 + [0]
    real_delete = bq_sink.BigQuerySink._delete
    calls = []

    def crash_once(self, refs):
        calls.append(1)
        if len(calls) == 1:  # the first merge made its table, then the process died
            raise ConnectionError("gone")
        real_delete(self, refs)

    with monkeypatch.context() as patch:
        patch.setattr(bq_sink.BigQuerySink, "_delete", crash_once)
        crashed = sink(table)
        with pytest.raises(ConnectionError):
            crashed.finalize()
        crashed.close()
    staged = {t for t in tables(bigquery, dataset) if t.startswith("_etl_stage_")}
    assert any(t.endswith("_m000000_000001") for t in staged) and any(t.endswith("_c000000") for t in staged)
    retried = sink(table)
    retried.finalize()
    retried.close()
    assert ids(bigquery, table) == list(range(50))
    assert tables(bigquery, dataset) == {"t", "_etl_finalized"}


def test_an_empty_replace_run_empties_the_table(bigquery, dataset):
    table = f"{dataset}.t"
    sink_run(table, numbers(0, 5), run_id="run-0")
    sink_run(table, run_id="run-1", mode="replace")
    assert ids(bigquery, table) == []
    assert [f.name for f in bigquery.get_table(f"{PROJECT}.{table}").schema] == ["id"]


def test_a_staging_dataset_of_its_own_holds_the_staging_tables(bigquery, dataset):
    staging = f"{dataset}_staging"
    table = f"{dataset}.t"
    try:
        sink_run(table, numbers(0, 3), numbers(3, 6), staging_dataset=staging, finalize=False)
        assert tables(bigquery, dataset) == set(), "the table is made at finalize"
        assert len([t for t in tables(bigquery, staging) if t.startswith("_etl_stage_")]) == 2
        last = sink(table, staging_dataset=staging)
        last.finalize()
        last.close()
        assert ids(bigquery, table) == list(range(6))
        assert tables(bigquery, staging) == {"_etl_finalized"}
    finally:
        bigquery.delete_dataset(staging, delete_contents=True, not_found_ok=True)


# -- types ---------------------------------------------------------------------------------------------

PARIS = ZoneInfo("Europe/Paris")
POINT = pa.struct([("x", pa.int64()), ("label", pa.string())])
EVERY_TYPE = pa.record_batch(
    {
        "i8": pa.array([-8, None], pa.int8()),
        "i16": pa.array([16, None], pa.int16()),
        "i32": pa.array([32, None], pa.int32()),
        "i64": pa.array([2**62, None], pa.int64()),
        "u64": pa.array([2**63 - 1, None], pa.uint64()),
        "f32": pa.array([1.5, None], pa.float32()),
        "f64": pa.array([2.25, None]),
        "dec": pa.array([decimal.Decimal("12345.678"), None], pa.decimal128(12, 3)),
        "flag": pa.array([True, None]),
        "txt": pa.array(['é,"q"\n', None]),
        "big_txt": pa.array(["large", None], pa.large_string()),
        "cat": pa.array(["red", None]).dictionary_encode(),
        "raw": pa.array([b"\x00\xff", None]),
        "day": pa.array([dt.date(2026, 2, 28), None]),
        "clock": pa.array([dt.time(13, 14, 15, 123456), None], pa.time64("us")),
        "naive": pa.array([dt.datetime(2026, 1, 1, 12, 30, 0, 1), None], pa.timestamp("us")),
        "aware": pa.array([dt.datetime(2026, 1, 1, 12, 30, tzinfo=PARIS), None], pa.timestamp("us", tz="Europe/Paris")),
        "exact_ns": pa.array([1_767_225_600_123_456_000, None], pa.timestamp("ns", tz="UTC")),
        "doc": pa.array(['{"a": [1, 2]}', None], pa.json_(pa.string())),
        "ints": pa.array([[1, 2, 3], None], pa.list_(pa.int64())),
        "words": pa.array([["a", "b"], []], pa.large_list(pa.string())),
        "point": pa.array([{"x": 1, "label": "z"}, None], POINT),
        "points": pa.array([[{"x": 2, "label": "y"}], None], pa.list_(POINT)),
        "nothing": pa.nulls(2),
    }
)
EXPECTED_TYPES = {
    "i8": "INT64",
    "i16": "INT64",
    "i32": "INT64",
    "i64": "INT64",
    "u64": "INT64",
    "f32": "FLOAT64",
    "f64": "FLOAT64",
    "dec": "NUMERIC",
    "flag": "BOOL",
    "txt": "STRING",
    "big_txt": "STRING",
    "cat": "STRING",
    "raw": "BYTES",
    "day": "DATE",
    "clock": "TIME",
    "naive": "DATETIME",
    "aware": "TIMESTAMP",
    "exact_ns": "TIMESTAMP",
    "doc": "JSON",
    "ints": "REPEATED INT64",
    "words": "REPEATED STRING",
    "point": "RECORD(x INT64, label STRING)",
    "points": "REPEATED RECORD(x INT64, label STRING)",
    "nothing": "STRING",
}


def describe(field) -> str:
    kind = LEGACY.get(field.field_type, field.field_type)
    if kind == "RECORD":
        kind += "(" + ", ".join(f"{f.name} {describe(f)}" for f in field.fields) + ")"
    return f"REPEATED {kind}" if field.mode == "REPEATED" else kind


def test_every_type_round_trips_with_nulls(bigquery, dataset):
    table = f"{dataset}.every"
    assert sink_run(table, EVERY_TYPE) == [2]
    schema = bigquery.get_table(f"{PROJECT}.{table}").schema
    assert {f.name: describe(f) for f in schema} == EXPECTED_TYPES
    rows = [dict(row) for row in bigquery.query(f"SELECT * FROM `{PROJECT}.{table}` ORDER BY i8 NULLS LAST").result()]
    first, second = rows
    assert first["i8"] == -8 and first["i64"] == 2**62 and first["u64"] == 2**63 - 1
    assert first["f32"] == 1.5 and first["f64"] == 2.25
    assert first["dec"] == decimal.Decimal("12345.678")
    assert first["flag"] is True and first["txt"] == 'é,"q"\n' and first["cat"] == "red"
    assert first["raw"] == b"\x00\xff"
    assert first["day"] == dt.date(2026, 2, 28)
    assert first["clock"] == dt.time(13, 14, 15, 123456)
    assert first["naive"] == dt.datetime(2026, 1, 1, 12, 30, 0, 1)
    assert first["aware"] == dt.datetime(2026, 1, 1, 11, 30, tzinfo=dt.UTC), "the same instant, in UTC"
    assert first["exact_ns"] == dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)
    doc = first["doc"]
    assert (json.loads(doc) if isinstance(doc, str) else doc) == {"a": [1, 2]}
    assert first["ints"] == [1, 2, 3] and first["words"] == ["a", "b"]
    assert first["point"] == {"x": 1, "label": "z"} and first["points"] == [{"x": 2, "label": "y"}]
    lists = {"ints", "words", "points"}  # BigQuery has no NULL arrays: a NULL list is empty
    assert {k: v for k, v in second.items() if k not in lists} == dict.fromkeys(EXPECTED_TYPES.keys() - lists)
    assert [second[k] for k in sorted(lists)] == [[], [], []]


def test_decimals_map_to_numeric_or_bignumeric_by_their_digits():
    # (BIGNUMERIC columns can't be made in the emulator: its DuckDB has no 76-digit decimal.)
    schema = pa.schema(
        {
            "money": pa.decimal128(38, 9),
            "small": pa.decimal128(10, 2),
            "fine": pa.decimal128(38, 10),
            "huge": pa.decimal128(38, 0),
            "widest": pa.decimal256(76, 38),
        }
    )
    fields = schema_fields(schema, "sink: table p.d.t")
    assert [f.field_type for f in fields] == ["NUMERIC", "NUMERIC", "BIGNUMERIC", "BIGNUMERIC", "BIGNUMERIC"]
    assert [arrow_type(f) for f in fields[:3]] == [pa.decimal128(38, 9), pa.decimal128(38, 9), pa.decimal256(76, 38)]
    with pytest.raises(PermanentError, match=r"column 'n' has type decimal256\(76, 0\), which BigQuery can't hold"):
        schema_fields(pa.schema({"n": pa.decimal256(76, 0)}), "sink: table p.d.t")


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pa.array([[[1]]], pa.list_(pa.list_(pa.int64()))), r"column 'c' is a list of lists .*\(no ARRAY of ARRAY\)"),
        (pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())), r"column 'c' has type map<string, int64>.*map"),
        (pa.array([5], pa.duration("s")), r"column 'c' has type duration\[s\], .*cast it to a number"),
        (
            pa.array([{"inner": [[1]]}], pa.struct([("inner", pa.list_(pa.list_(pa.int64())))])),
            r"column 'c.inner' is a list of lists",
        ),
    ],
)
def test_types_bigquery_cant_hold_are_refused_naming_the_column(bigquery, dataset, column, message):
    with pytest.raises(PermanentError, match=rf"^sink: table {PROJECT}\.{dataset}\.t: {message}"):
        sink_run(f"{dataset}.t", pa.record_batch({"id": pa.array([1]), "c": column}))
    assert tables(bigquery, dataset) == {"_etl_finalized"}, "no table made, nothing staged"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["id", "my col"], r"'my col' is not a column name BigQuery accepts .* `rename` transform"),
        (["id", "ID"], r"columns 'id' and 'ID' differ only in case"),
        (["_PARTITIONTIME"], r"'_PARTITIONTIME' is not a column name BigQuery accepts"),
    ],
)
def test_column_names_bigquery_refuses_are_errors(bigquery, dataset, names, message):
    batch = pa.record_batch([pa.array([1])] * len(names), names=names)
    with pytest.raises(PermanentError, match=message):
        sink_run(f"{dataset}.t", batch)


@pytest.mark.parametrize(
    ("column", "row", "reason"),
    [
        (pa.array([1, 2**63 + 5], pa.uint64()), 1, "cannot cast to int64"),
        (pa.array([0, 1_767_225_600_123_456_789], pa.timestamp("ns")), 1, "would lose data"),
        (pa.array([[1], [2, None]], pa.list_(pa.int64())), 1, "NULL element, which a BigQuery ARRAY can't"),
        (pa.array([0, -800_000], pa.date32()), 1, "outside BigQuery's dates and times"),
        (pa.array([253_402_300_799, 253_402_300_800], pa.timestamp("s")), 1, "outside"),  # 10000-01-01
    ],
)
def test_values_bigquery_cant_hold_are_rejected_naming_row_and_column(bigquery, dataset, tmp_path, column, row, reason):
    batch = pa.record_batch({"id": pa.array([1, 2]), "c": column})
    with pytest.raises(RejectedRows, match=reason) as info:
        sink_run(f"{dataset}.t", batch)
    assert (info.value.row, info.value.column) == (row, "c")
    collector = ChunkRejects(tmp_path, 0)
    token = current_rejects.set(collector)
    try:
        sink_run(f"{dataset}.t", batch, run_id="run-2", on_error="skip")
    finally:
        current_rejects.reset(token)
    collector.commit()
    rejected = [json.loads(line) for line in (tmp_path / "chunk-00000.jsonl").read_text().splitlines()]
    assert [(r["row"], r["column"]) for r in rejected] == [(1, "c")]
    assert reason in rejected[0]["reason"]
    assert ids(bigquery, f"{dataset}.t") == [1], "the other row is loaded"


# -- the table as it is ------------------------------------------------------------------------------


@pytest.fixture
def existing(bigquery, dataset):
    from google.cloud import bigquery as bq

    schema = [
        bq.SchemaField("id", "NUMERIC"),
        bq.SchemaField("doc", "JSON"),
        bq.SchemaField("note", "STRING"),
        bq.SchemaField("k", "INT64", mode="REQUIRED"),
    ]
    bigquery.create_table(bq.Table(f"{PROJECT}.{dataset}.t", schema=schema))
    return f"{dataset}.t"


def test_an_existing_table_keeps_its_definition_and_takes_wider_types(bigquery, dataset, existing):
    batch = pa.record_batch({"K": pa.array([7, 8]), "id": pa.array([1, 2]), "doc": pa.array(['{"a": 1}', "[]"])})
    assert sink_run(existing, batch) == [2]
    schema = bigquery.get_table(f"{PROJECT}.{existing}").schema
    assert [(f.name, LEGACY.get(f.field_type, f.field_type), f.mode) for f in schema] == [
        ("id", "NUMERIC", "NULLABLE"),
        ("doc", "JSON", "NULLABLE"),
        ("note", "STRING", "NULLABLE"),
        ("k", "INT64", "REQUIRED"),
    ]
    rows = query(bigquery, f"SELECT id, note, k FROM `{PROJECT}.{existing}` ORDER BY k")
    assert rows == [(decimal.Decimal(1), None, 7), (decimal.Decimal(2), None, 8)]


@pytest.mark.parametrize(
    ("batch", "error", "message"),
    [
        (
            pa.record_batch({"k": pa.array([1]), "note": pa.array([5])}),
            PermanentError,
            r"column 'note' is INT64 in the rows \(int64\) but STRING in the table; convert it with a `cast`",
        ),
        (
            pa.record_batch({"k": pa.array([1]), "id": pa.array([0.5])}),
            PermanentError,
            r"column 'id' is FLOAT64 in the rows \(double\) but NUMERIC in the table",
        ),
        (
            pa.record_batch({"k": pa.array([1]), "extra": pa.array([1])}),
            PermanentError,
            r"the table has no column 'extra'; it has id, doc, note, k\. Add the column .* `drop` or `select`",
        ),
        (
            pa.record_batch({"id": pa.array([1])}),
            PermanentError,
            r"the rows have no column 'k', which the table requires \(REQUIRED\)",
        ),
        (pa.record_batch({"k": pa.array([1, None])}), RejectedRows, r"NULL in a column REQUIRED in"),
    ],
)
def test_rows_that_do_not_fit_an_existing_table_are_refused(bigquery, dataset, existing, batch, error, message):
    with pytest.raises(error, match=message):
        sink_run(existing, batch)
    assert tables(bigquery, dataset) == {"t", "_etl_finalized"}, "nothing staged"
    assert query(bigquery, f"SELECT COUNT(*) FROM `{PROJECT}.{existing}`") == [(0,)]


def test_without_create_a_missing_table_is_an_error(bigquery, dataset):
    message = rf"^sink: table {PROJECT}\.{dataset}\.missing does not exist; create it, or set `create: true`$"
    with pytest.raises(PermanentError, match=message):
        sink(f"{dataset}.missing", create=False).prepare()
    with pytest.raises(PermanentError, match=message):  # nor does a write (in a worker) make it
        sink(f"{dataset}.missing", create=False).write(Chunk(0), iter([numbers(0, 1)]))
    assert "missing" not in tables(bigquery, dataset)


def test_a_missing_dataset_is_an_error_naming_it(bigquery):
    missing = f"nowhere_{uuid.uuid4().hex[:8]}"
    with pytest.raises(PermanentError, match=rf"^sink: dataset {PROJECT}\.{missing} does not exist .*bq mk"):
        sink(f"{missing}.t").prepare()
    job = etl.load_job(text=JOB.format(rows=10, project=PROJECT, table=f"{missing}.t", mode="append"))
    with pytest.raises(etl.JobFailed, match=f"dataset {PROJECT}.{missing} does not exist"):
        etl.run(job)


def test_a_view_is_not_a_target(bigquery, dataset):
    bigquery.query(f"CREATE VIEW `{PROJECT}.{dataset}.v` AS SELECT 1 AS id").result()
    if bigquery.get_table(f"{PROJECT}.{dataset}.v").table_type != "VIEW":
        pytest.skip("the emulator does not report views as views")
    with pytest.raises(PermanentError, match=r"is a view; the bigquery sink loads tables"):
        sink(f"{dataset}.v").prepare()


# -- options and errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "table"),
        ({"table": "orders"}, "expected project.dataset.table"),
        ({"table": "sales.orders$20260101"}, r"names a partition \(\$…\)"),
        ({"table": "sales.orders", "mode": "merge"}, "'append' or 'replace'"),
        ({"table": "sales.orders", "staging_dataset": "no-dashes"}, "is not a dataset"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(ValidationError, match=message):
        BigQuerySinkOptions.model_validate(options)


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        ("TooManyRequests", TransientError, "rate"),
        ("ServiceUnavailable", TransientError, "backend"),
        ("Forbidden", PermanentError, r"the credentials lack a permission"),
        ("NotFound", PermanentError, r"check the project, dataset and table names"),
        ("BadRequest", TransientError, "concurrent update"),
    ],
)
def test_google_errors_become_transient_or_permanent(bigquery, dataset, error, expected, message):
    from google.api_core import exceptions

    stage = sink(f"{dataset}.t")
    text = "Transaction is aborted due to concurrent update" if error == "BadRequest" else f"{error} rate backend"
    with pytest.raises(expected, match=message) as info, stage._google("loading"):
        raise getattr(exceptions, error)(text)
    assert str(info.value).startswith("sink: loading: ")


def test_a_chunk_staged_again_after_a_newer_one_is_refused_before_writing(bigquery, dataset):
    table = f"{dataset}.t"
    stage = sink(table)
    stage.prepare()
    stage.write(replace(Chunk(0), attempt=3), iter([numbers(0, 2)]))
    with pytest.raises(Interrupted):
        stage.write(replace(Chunk(0), attempt=2), iter([numbers(0, 9)]))
    stage.finalize()
    stage.close()
    assert ids(bigquery, table) == [0, 1]
