"""What each built-in stage says of the columns before any row is read: a source's schema, a
transform's output schema, a sink's check, and their errors naming the option at fault."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import Chunk, ConfigError, ConfigErrors
from tests.contract.framework import make_stage, read_all

ROWS = pa.schema([("order_id", pa.int64()), ("amount", pa.float64()), ("ds", pa.date32())])


def problems(call) -> list[tuple[str | None, str]]:
    """The (key, message) of each problem ``call`` raises."""
    with pytest.raises(ConfigError) as caught:
        call()
    error = caught.value
    return [(e.key, e.message) for e in (error.errors if isinstance(error, ConfigErrors) else [error])]


def transform(options: dict):
    return make_stage("transform", options)


# -- sources -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"type": "generate", "rows": 10},
        {
            "type": "generate",
            "rows": 10,
            "columns": {"a": {"kind": "sequence"}, "b": {"kind": "choice", "values": [1]}},
        },
    ],
)
def test_generate_gives_the_schema_of_its_batches(options):
    batch = next(make_stage("source", options).read(Chunk(0, args={"start": 0, "stop": 5}), {}))
    assert make_stage("source", options).output_schema() == batch.schema


def test_parquet_gives_its_footers_schema(tmp_path):
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), tmp_path / "t.parquet")
    assert make_stage("source", {"type": "parquet", "path": "t.parquet"}).output_schema() == pa.schema(
        [("a", pa.int64()), ("b", pa.string())]
    )
    picked = make_stage("source", {"type": "parquet", "path": "t.parquet", "columns": ["b"]})
    assert picked.output_schema().names == ["b"]


def test_csv_and_jsonl_give_the_schema_planning_inferred(tmp_path):
    (tmp_path / "t.csv").write_text("order_id,amount,zip\n1,2.5,007\n")
    (tmp_path / "t.jsonl").write_text(json.dumps({"order_id": 1, "day": "2026-01-01"}) + "\n")
    csv = {"type": "csv", "path": "t.csv", "schema": {"amount": "decimal(6, 2)"}}
    assert make_stage("source", csv).output_schema() == pa.schema(
        [("order_id", pa.int64()), ("amount", pa.decimal128(6, 2)), ("zip", pa.string())]
    )
    assert read_all(csv)[1].schema == make_stage("source", csv).output_schema()
    jsonl = {"type": "jsonl", "path": "t.jsonl"}
    assert make_stage("source", jsonl).output_schema() == read_all(jsonl)[1].schema


def test_a_text_source_without_rows_cant_tell(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    assert make_stage("source", {"type": "csv", "path": "empty.csv"}).output_schema() is None


# -- transforms ----------------------------------------------------------------------------------


def test_column_transforms_give_their_output_schema():
    assert transform({"type": "rename", "columns": {"amount": "total"}}).output_schema(ROWS).names == [
        "order_id",
        "total",
        "ds",
    ]
    assert transform({"type": "select", "columns": ["ds", "order_id"]}).output_schema(ROWS).names == ["ds", "order_id"]
    assert transform({"type": "drop", "columns": ["amount"]}).output_schema(ROWS).names == ["order_id", "ds"]
    assert transform({"type": "drop", "columns": ["nope"], "missing_ok": True}).output_schema(ROWS) == ROWS
    cast = transform({"type": "cast", "columns": {"amount": "decimal(12, 2)"}}).output_schema(ROWS)
    assert cast.field("amount").type == pa.decimal128(12, 2)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"type": "rename", "columns": {"orderid": "id", "amont": "total", "ds": "day"}},
            [
                (
                    "columns.orderid",
                    "column 'orderid' is not in the rows; did you mean \"order_id\"? The rows have: "
                    "order_id, amount, ds",
                ),
                (
                    "columns.amont",
                    "column 'amont' is not in the rows; did you mean \"amount\"? The rows have: order_id, amount, ds",
                ),
            ],
        ),
        (
            {"type": "select", "columns": ["order_id", "zz"]},
            [("columns", "column 'zz' is not in the rows; the rows have: order_id, amount, ds")],
        ),
        (
            {"type": "drop", "columns": ["amout"]},
            [
                (
                    "columns",
                    "column 'amout' is not in the rows; did you mean \"amount\"? The rows have: order_id, amount, ds",
                )
            ],
        ),
        (
            {"type": "cast", "columns": {"dss": "string"}},
            [
                (
                    "columns.dss",
                    "column 'dss' is not in the rows; did you mean \"ds\"? The rows have: order_id, amount, ds",
                )
            ],
        ),
    ],
)
def test_column_transforms_name_every_missing_column_at_its_key(options, expected):
    assert problems(lambda: transform(options).output_schema(ROWS)) == expected


def test_sql_transforms_give_what_duckdb_binds_over_no_rows():
    derive = transform({"type": "derive", "columns": {"double": "amount * 2", "label": "order_id::VARCHAR"}})
    assert derive.output_schema(ROWS) == ROWS.append(pa.field("double", pa.float64())).append(
        pa.field("label", pa.string())
    )
    assert transform({"type": "filter", "expr": "amount > 1"}).output_schema(ROWS) == ROWS
    sql = transform({"type": "sql", "query": "SELECT ds, count(*) AS n FROM batch GROUP BY ds"})
    assert sql.output_schema(ROWS) == pa.schema([("ds", pa.date32()), ("n", pa.int64())])


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        (
            {"type": "filter", "expr": "amont > 1"},
            "expr",
            "column 'amont' is not in the rows; did you mean \"amount\"?",
        ),
        ({"type": "derive", "columns": {"x": "1", "y": "zz + 1"}}, "columns.y", "column 'zz' is not in the rows; the"),
        ({"type": "sql", "query": "SELECT nope(amount) FROM batch"}, "query", "Scalar Function with name nope"),
    ],
)
def test_sql_that_names_what_the_rows_lack_is_a_config_error_at_its_key(options, key, message):
    [(found_key, found)] = problems(lambda: transform(options).output_schema(ROWS))
    assert found_key == key
    assert message in found
    assert found.endswith("order_id, amount, ds")


def test_a_python_transform_cant_tell_without_rows(tmp_path):
    (tmp_path / "fn.py").write_text("def f(batch):\n    return batch\n")
    stage = make_stage("transform", {"type": "python", "function": "fn.py:f"}, job_dir=tmp_path)
    assert stage.output_schema(ROWS) is None


# -- sinks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sink", [{"type": "duckdb", "path": "x.duckdb"}, {"type": "postgres"}])
def test_a_merge_key_must_be_among_the_rows_columns(sink, tmp_path):
    merge = make_stage("sink", {**sink, "table": "orders", "mode": "merge", "key": ["order_id", "dss"]})
    assert problems(lambda: merge.check_schema(ROWS)) == [
        ("key", "column 'dss' is not in the rows; did you mean \"ds\"? The rows have: order_id, amount, ds")
    ]
    make_stage("sink", {**sink, "table": "orders", "mode": "merge", "key": ["order_id"]}).check_schema(ROWS)
    make_stage("sink", {**sink, "table": "orders"}).check_schema(pa.schema([]))
    assert not (tmp_path / "x.duckdb").exists()  # the check opened nothing


def test_file_and_bigquery_sinks_name_no_columns():
    for options in [
        {"type": "parquet", "path": "out"},
        {"type": "csv", "path": "out"},
        {"type": "jsonl", "path": "out"},
        {"type": "bigquery", "table": "d.t", "project": "p"},
    ]:
        make_stage("sink", options).check_schema(ROWS)
