"""The built-in transforms, each on real batches."""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa
import pytest

from etl import PermanentError, RejectedRows
from etl.rejects import ChunkRejects
from etl.stages import current_rejects
from tests.contract.framework import make_stage


def batch(**columns) -> pa.RecordBatch:
    return pa.record_batch(columns)


def apply(options, data, **context):
    out = make_stage("transform", options, **context).apply(data)
    return out if isinstance(out, pa.RecordBatch) else pa.Table.from_batches(out.to_batches()).combine_chunks()


def test_rename_select_drop():
    data = batch(a=[1, 2], b=["x", "y"], c=[0.5, 1.5])
    assert apply({"type": "rename", "columns": {"a": "id"}}, data).schema.names == ["id", "b", "c"]
    assert apply({"type": "select", "columns": ["c", "a"]}, data).schema.names == ["c", "a"]
    assert apply({"type": "drop", "columns": ["b"]}, data).schema.names == ["a", "c"]
    assert apply({"type": "drop", "columns": ["zz"], "missing_ok": True}, data).schema.names == ["a", "b", "c"]


@pytest.mark.parametrize(
    "options",
    [
        {"type": "rename", "columns": {"nope": "x"}},
        {"type": "select", "columns": ["nope"]},
        {"type": "drop", "columns": ["nope"]},
        {"type": "cast", "columns": {"nope": "int64"}},
    ],
)
def test_a_missing_column_is_a_clear_permanent_error(options):
    with pytest.raises(PermanentError, match=r"no column 'nope'; the rows have: a, b"):
        apply(options, batch(a=[1], b=[2]))


def test_cast_converts_types():
    data = batch(n=["1", "2", None], d=["2026-01-02", None, "2026-03-04"], m=["1.50", "2.25", "3"])
    out = apply({"type": "cast", "columns": {"n": "int32", "d": "date", "m": "decimal(10, 2)"}}, data)
    assert out.schema.field("n").type == pa.int32()
    assert out.column("n").to_pylist() == [1, 2, None]
    assert out.column("d").to_pylist() == [dt.date(2026, 1, 2), None, dt.date(2026, 3, 4)]
    assert out.column("m").to_pylist() == [decimal.Decimal("1.50"), decimal.Decimal("2.25"), decimal.Decimal("3.00")]


def test_cast_with_a_format_parses_dates():
    data = batch(d=["31/01/2026", "01/02/2026"])
    out = apply({"type": "cast", "columns": {"d": {"type": "date", "format": "%d/%m/%Y"}}}, data)
    assert out.column("d").to_pylist() == [dt.date(2026, 1, 31), dt.date(2026, 2, 1)]


def test_cast_never_truncates_silently():
    with pytest.raises(RejectedRows) as info:
        apply({"type": "cast", "columns": {"v": "int8"}}, batch(v=[1, 300, 2]))
    assert info.value.row == 1 and info.value.column == "v" and info.value.value == "300"
    with pytest.raises(RejectedRows):
        apply({"type": "cast", "columns": {"v": "int64"}}, batch(v=[1.0, 2.5]))


def test_cast_rejects_exactly_the_bad_rows_when_skipping(tmp_path):
    values = [str(i) if i % 7 else f"bad{i}" for i in range(1, 1001)]
    data = batch(id=list(range(1000)), v=values)
    collector = ChunkRejects(tmp_path, 0)
    token = current_rejects.set(collector)
    try:
        out = apply({"type": "cast", "columns": {"v": "int64"}}, data, on_error="skip")
    finally:
        current_rejects.reset(token)
    collector.commit()
    bad = [i for i in range(1000) if (i + 1) % 7 == 0]
    assert out.num_rows == 1000 - len(bad)
    assert collector.count == len(bad)
    assert sorted(set(range(1000)) - set(out.column("id").to_pylist())) == bad
    lines = (tmp_path / "chunk-00000.jsonl").read_text().splitlines()
    assert len(lines) == len(bad)


def test_cast_rejects_rows_for_several_columns_at_their_original_positions(tmp_path):
    data = batch(a=["1", "x", "3", "4"], b=["1", "2", "3", "y"])
    collector = ChunkRejects(tmp_path, 0)
    token = current_rejects.set(collector)
    try:
        out = apply({"type": "cast", "columns": {"a": "int64", "b": "int64"}}, data, on_error="skip")
    finally:
        current_rejects.reset(token)
    collector.commit()
    import json

    rows = [json.loads(line)["row"] for line in (tmp_path / "chunk-00000.jsonl").read_text().splitlines()]
    assert rows == [1, 3]
    assert out.column("a").to_pylist() == [1, 3]


def test_filter_keeps_matching_rows_and_drops_nulls():
    data = batch(v=[1, 5, None, 10], s=["a", "b", "c", "d"])
    out = apply({"type": "filter", "expr": "v > 2"}, data)
    assert out.column("s").to_pylist() == ["b", "d"]
    assert out.schema == data.schema


def test_filter_binds_params_as_values():
    data = batch(d=pa.array([dt.date(2026, 1, 1), dt.date(2026, 6, 1)]))
    out = apply({"type": "filter", "expr": "d >= $start"}, data, params={"start": dt.date(2026, 3, 1)})
    assert out.column("d").to_pylist() == [dt.date(2026, 6, 1)]


def test_filter_with_an_unknown_param_names_it():
    with pytest.raises(PermanentError, match=r"\$strat is not a parameter of the job; did you mean \"start\""):
        make_stage("transform", {"type": "filter", "expr": "d >= $strat"}, params={"start": 1})


def test_derive_adds_and_replaces_columns_in_order():
    data = batch(lower=[1.0, 2.0], upper=[3.0, 5.0], name=["a", "b"])
    out = apply(
        {
            "type": "derive",
            "columns": {"spread": "upper - lower", "name": "upper(name)", "double_spread": "spread * 2"},
        },
        data,
    )
    assert out.schema.names == ["lower", "upper", "name", "spread", "double_spread"]
    assert out.column("name").to_pylist() == ["A", "B"]
    assert out.column("double_spread").to_pylist() == [4.0, 6.0]


def test_sql_runs_a_query_over_the_batch():
    data = batch(k=["a", "b", "a"], v=[1, 2, 3])
    out = apply({"type": "sql", "query": "SELECT k, sum(v) AS total FROM batch GROUP BY k ORDER BY k"}, data)
    assert out.to_pylist() == [{"k": "a", "total": 4}, {"k": "b", "total": 2}]


def test_sql_errors_are_permanent_and_name_the_stage():
    with pytest.raises(PermanentError, match=r"transform: Binder Error"):
        apply({"type": "sql", "query": "SELECT nope FROM batch"}, batch(v=[1]))


FUNCTIONS = """
    import pyarrow.compute as pc

    def double(batch, factor=2):
        return batch.set_column(0, "v", pc.multiply(batch.column("v"), factor))

    def tag(row, context):
        if row["v"] == 2:
            return None
        if row["v"] == 3:
            raise ValueError("three is bad")
        return {**row, "run": context.run_id}
"""


def test_python_function_by_path(write):
    write("fns.py", FUNCTIONS)
    out = apply({"type": "python", "function": "fns.py:double", "args": {"factor": 10}}, batch(v=[1, 2]))
    assert out.column("v").to_pylist() == [10, 20]
    with pytest.raises(RejectedRows, match="ValueError: three is bad"):
        apply({"type": "python", "function": "fns.py:tag", "rowwise": True}, batch(v=[1, 2, 3]))


def test_python_function_rowwise_drops_and_rejects(write, tmp_path):
    write("fns.py", FUNCTIONS)
    collector = ChunkRejects(tmp_path, 0)
    token = current_rejects.set(collector)
    try:
        out = apply(
            {"type": "python", "function": "fns.py:tag", "rowwise": True}, batch(v=[1, 2, 3, 4]), on_error="skip"
        )
    finally:
        current_rejects.reset(token)
    collector.commit()
    assert out.to_pylist() == [{"v": 1, "run": "run-1"}, {"v": 4, "run": "run-1"}]
    assert collector.count == 1


def test_python_function_that_cannot_be_found_is_a_config_error():
    import etl

    text = """
        name: p
        source: {type: generate, rows: 1}
        transforms: [{type: python, function: "no_such_module_xyz:fn"}]
        sink: {type: duckdb, path: x.duckdb, table: t}
    """
    import textwrap

    with pytest.raises(etl.ConfigErrors, match="cannot import 'no_such_module_xyz'"):
        etl.load_job(text=textwrap.dedent(text))


def test_cast_to_decimal_refuses_to_round():
    out = apply({"type": "cast", "columns": {"v": "decimal(8, 2)"}}, batch(v=[1.5, 2.25, 100.1]))
    assert out.column("v").to_pylist() == [decimal.Decimal("1.50"), decimal.Decimal("2.25"), decimal.Decimal("100.10")]
    with pytest.raises(RejectedRows, match=r"row 1: column 'v' value 2.5612: cannot cast to decimal128\(8, 2\)"):
        apply({"type": "cast", "columns": {"v": "decimal(8, 2)"}}, batch(v=[1.5, 2.5612]))


def test_rejected_rows_are_recorded_as_they_arrived(tmp_path):
    import json

    data = batch(a=["1", "2"], b=["x", "3"])
    collector = ChunkRejects(tmp_path, 0)
    token = current_rejects.set(collector)
    try:
        apply({"type": "cast", "columns": {"a": "int64", "b": "int64"}}, data, on_error="skip")
    finally:
        current_rejects.reset(token)
    collector.commit()
    record = json.loads((tmp_path / "chunk-00000.jsonl").read_text())["record"]
    assert record == {"a": "1", "b": "x"}
