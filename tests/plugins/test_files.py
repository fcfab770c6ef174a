"""The file formats' own behaviour, beyond the shared contract: byte ranges, types, part files."""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from etl_plugins._files import SAMPLE_BYTES, byte_ranges, count_lines, line_start
from etl_plugins.csv_format import CsvOptions
from etl_plugins.parquet_format import row_group_chunks

import etl
from etl import Chunk, PermanentError
from tests.contract.framework import make_stage, reference_table


def read(source, chunk_size: int) -> tuple[etl.Plan, pa.Table]:
    plan = source.plan(chunk_size)
    batches = [b for chunk in plan.chunks for b in source.read(chunk, plan.shared)]
    return plan, pa.Table.from_batches(batches) if batches else pa.table({})


def all_files(directory: Path) -> list[str]:
    """Every file and directory under ``directory``, hidden ones included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- byte ranges ---------------------------------------------------------------------------------

TEXTS = {
    "lf": b"id,v\n1,a\n22,bb\n333,ccc\n4444,dddd\n5,e\n",
    "crlf": b"id,v\r\n1,a\r\n22,bb\r\n333,ccc\r\n4444,dddd\r\n5,e\r\n",
    "no trailing newline": b"id,v\n1,a\n22,bb\n333,ccc\n4444,dddd\n5,e",
    "blank lines": b"id,v\n1,a\n\n22,bb\r\n\r\n333,ccc\n4444,dddd\n\n5,e\n\n",
}


@pytest.mark.parametrize("name", TEXTS)
def test_byte_ranges_hold_whole_lines_and_every_line_once_for_every_step(tmp_path, name):
    data = TEXTS[name]
    path = tmp_path / "data.csv"
    path.write_bytes(data)
    first = data.index(b"\n") + 1
    for step in range(1, len(data) + 2):
        ranges = byte_ranges(path, first, len(data), step)
        assert b"".join(data[s:e] for s, e in ranges) == data[first:], step
        for start, end in ranges:
            assert start < end
            assert data[start - 1 : start] == b"\n", (step, start)


def test_a_boundary_on_a_newline_or_inside_a_line_moves_to_the_next_line_start(tmp_path):
    data = b"ab\ncd\r\nef"
    path = tmp_path / "data.txt"
    path.write_bytes(data)
    with open(path, "rb") as f:
        assert line_start(f, 0, 0, len(data)) == 0
        assert line_start(f, 2, 0, len(data)) == 3  # on the newline that ends "ab"
        assert line_start(f, 3, 0, len(data)) == 3  # right after it: "cd" starts here
        assert line_start(f, 4, 0, len(data)) == 7  # inside "cd\r\n"
        assert line_start(f, 6, 0, len(data)) == 7  # on the "\n" of a "\r\n"
        assert line_start(f, 8, 0, len(data)) == 9  # inside the last line, which has no newline
        assert line_start(f, 2, 5, len(data)) == 5  # never before the first data line


def test_counting_lines_skips_blank_ones_across_block_boundaries(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"a\n\n \nb\r\n\r\n\t\nc")
    assert count_lines(path, 0, path.stat().st_size, b"\r") == 5  # " " and "\t" are rows in CSV
    assert count_lines(path, 0, path.stat().st_size, b" \t\r") == 3  # but not in JSON Lines
    big = b"x\n" * 3_000_000 + b"\n" * 5 + b"last"
    path.write_bytes(big)
    assert count_lines(path, 0, len(big), b"\r") == 3_000_001


# -- csv -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 1_000])
def test_csv_reads_every_row_once_at_any_chunk_size(tmp_path, name, chunk_size):
    (tmp_path / "data.csv").write_bytes(TEXTS[name])
    source = make_stage("source", {"type": "csv", "path": str(tmp_path / "data.csv")})
    plan, table = read(source, chunk_size)
    assert table.column("id").to_pylist() == [1, 22, 333, 4444, 5]
    assert table.column("v").to_pylist() == ["a", "bb", "ccc", "dddd", "e"]
    assert source.count() == etl.RowCount(5, exact=True)
    if chunk_size == 1:
        assert len(plan.chunks) >= 4


def test_a_header_only_csv_has_no_rows_but_its_columns(tmp_path):
    (tmp_path / "empty.csv").write_text("id,name,amount\n")
    source = make_stage("source", {"type": "csv", "path": str(tmp_path / "empty.csv")})
    plan, table = read(source, 10)
    assert plan.chunks == [] and table.num_rows == 0
    assert source.count() == etl.RowCount(0, exact=True)
    assert list(plan.shared["columns"]) == ["id", "name", "amount"]


def test_csv_files_of_a_glob_must_have_the_same_columns(tmp_path):
    (tmp_path / "a.csv").write_text("id,name\n1,x\n")
    (tmp_path / "b.csv").write_text("id,label\n2,y\n")
    source = make_stage("source", {"type": "csv", "path": str(tmp_path / "*.csv")})
    with pytest.raises(PermanentError, match=r"a\.csv and .*b\.csv have different columns.*'name'.*'label'"):
        source.plan(10)


def test_csv_files_that_type_a_column_differently_read_it_as_text(tmp_path):
    (tmp_path / "a.csv").write_text("id,code\n1,10\n")
    (tmp_path / "b.csv").write_text("id,code\n2,X7\n")
    (tmp_path / "c.csv").write_text("id,code\n3,2.5\n")
    source = make_stage("source", {"type": "csv", "path": str(tmp_path / "*.csv")})
    _, table = read(source, 10)
    assert table.schema.field("code").type == pa.string()
    assert table.column("code").to_pylist() == ["10", "X7", "2.5"]


def test_no_matching_file_names_the_pattern(tmp_path):
    source = make_stage("source", {"type": "csv", "path": str(tmp_path / "nothing-*.csv")})
    with pytest.raises(PermanentError, match=r"no file matches '.*nothing-\*\.csv'"):
        source.plan(10)
    with pytest.raises(PermanentError, match="nothing-"):
        source.count()


def _late_bad_value(tmp_path: Path) -> tuple[Path, int]:
    """A CSV whose first megabyte has only integers in `amount`, then one value that is not."""
    rows = SAMPLE_BYTES // 10 + 1_000
    lines = [f"{i},{i * 3},name {i}" for i in range(rows)]
    lines[-5] = f"{rows - 5},oops,name"
    path = tmp_path / "late.csv"
    path.write_text("id,amount,name\n" + "\n".join(lines) + "\n")
    return path, rows - 5 + 2  # the header is line 1


def test_a_value_that_does_not_fit_the_inferred_type_is_a_clear_error(tmp_path):
    path, line = _late_bad_value(tmp_path)
    source = make_stage("source", {"type": "csv", "path": str(path)})
    plan = source.plan(20_000)
    assert plan.shared["columns"]["amount"] == "int64"
    with pytest.raises(PermanentError) as caught:
        for chunk in plan.chunks:
            list(source.read(chunk, plan.shared))
    message = str(caught.value)
    assert f"late.csv: line {line:,}, column 'amount': 'oops' is not a valid int64" in message
    assert "inferred" in message and "schema: {amount: string}" in message
    assert "`cast` transform" in message and "on_error: skip" in message


def test_a_declared_schema_overrides_the_inferred_types(tmp_path):
    path, _ = _late_bad_value(tmp_path)
    source = make_stage("source", {"type": "csv", "path": str(path), "schema": {"amount": "string", "id": "int32"}})
    _, table = read(source, 50_000)
    assert table.schema.field("amount").type == pa.string()
    assert table.schema.field("id").type == pa.int32()
    assert "oops" in table.column("amount").to_pylist()


def test_a_declared_type_that_a_value_does_not_fit_says_it_was_declared(tmp_path):
    (tmp_path / "d.csv").write_text("id,day\n1,2026-01-01\n2,01/02/2026\n")
    source = make_stage("source", {"type": "csv", "path": str(tmp_path / "d.csv"), "schema": {"day": "date"}})
    with pytest.raises(PermanentError, match=r"d\.csv: line 3, column 'day': '01/02/2026'.*declared in `schema:`"):
        read(source, 10)


def test_csv_options_for_headerless_files_and_nulls(tmp_path):
    (tmp_path / "h.csv").write_text('1|""|NA\n2||x\n')
    base = {"type": "csv", "path": str(tmp_path / "h.csv"), "header": False, "delimiter": "|"}
    _, table = read(make_stage("source", base), 10)
    assert table.column_names == ["f0", "f1", "f2"]
    assert table.column("f1").to_pylist() == ["", None] and table.column("f2").to_pylist() == ["NA", "x"]
    named = make_stage("source", {**base, "columns": ["id", "a", "b"], "null_values": ["", "NA"]})
    _, table = read(named, 10)
    assert table.column_names == ["id", "a", "b"] and table.column("b").to_pylist() == [None, "x"]


def test_csv_option_mistakes_are_caught_by_validation():
    with pytest.raises(ValueError, match="header: false"):
        CsvOptions.model_validate({"path": "x.csv", "columns": ["a"]})
    with pytest.raises(ValueError, match="only utf-8"):
        CsvOptions.model_validate({"path": "x.csv", "encoding": "latin-1"})
    with pytest.raises(ValueError, match="not a known type"):
        CsvOptions.model_validate({"path": "x.csv", "schema": {"a": "integr"}})


def test_integers_with_leading_zeros_stay_text(tmp_path):
    (tmp_path / "z.csv").write_text("id,zip\n1,02139\n2,10001\n")
    _, table = read(make_stage("source", {"type": "csv", "path": str(tmp_path / "z.csv")}), 10)
    assert table.column("id").type == pa.int64() and table.column("zip").to_pylist() == ["02139", "10001"]
    declared = make_stage("source", {"type": "csv", "path": str(tmp_path / "z.csv"), "schema": {"zip": "int32"}})
    assert read(declared, 10)[1].column("zip").to_pylist() == [2139, 10001]


def test_a_file_that_is_not_utf8_says_so(tmp_path):
    (tmp_path / "l.csv").write_bytes("id,name\n1,café\n".encode("latin-1"))
    with pytest.raises(PermanentError, match=r"l\.csv: .*the file is not UTF-8: convert it first"):
        make_stage("source", {"type": "csv", "path": str(tmp_path / "l.csv")}).plan(10)


QUOTED_NEWLINES = 'id,note\n1,"one\nline two"\n2,plain\n3,"a\r\nb"\n'


def test_newlines_in_values_reads_each_file_whole(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.csv").write_bytes(QUOTED_NEWLINES.encode())
    options = {"type": "csv", "path": str(tmp_path), "newlines_in_values": True}
    source = make_stage("source", options)
    plan, table = read(source, 1)
    assert len(plan.chunks) == 2  # one per file, however small the chunk size
    assert table.column("note").to_pylist() == ["one\nline two", "plain", "a\r\nb"] * 2
    assert source.count() == etl.RowCount(6, exact=True)


def test_quoted_newlines_without_the_option_are_an_error_that_names_it(tmp_path):
    (tmp_path / "q.csv").write_text(QUOTED_NEWLINES)
    source = make_stage("source", {"type": "csv", "path": str(tmp_path / "q.csv")})
    with pytest.raises(PermanentError, match="newlines_in_values: true"):
        read(source, 1_000)


# -- jsonl ---------------------------------------------------------------------------------------


def test_jsonl_blank_lines_hold_no_row_and_count_agrees(tmp_path):
    text = '{"id": 1}\n\n   \n{"id": 2}\r\n\t\n{"id": 3}\n\n{"id": 4}'
    (tmp_path / "d.jsonl").write_text(text)
    source = make_stage("source", {"type": "jsonl", "path": str(tmp_path / "d.jsonl")})
    for chunk_size in (1, 2, 100):
        _, table = read(source, chunk_size)
        assert table.column("id").to_pylist() == [1, 2, 3, 4]
    assert source.count() == etl.RowCount(4, exact=True)


def test_jsonl_infers_dates_and_timestamps_and_keeps_field_order(tmp_path):
    rows = [
        {"z": 1, "day": "2026-03-01", "at": "2026-03-01T10:00:00.5Z", "local": "2026-03-01 10:00:00", "s": "x"},
        {"z": 2, "day": "2026-03-02", "at": "2026-03-01T12:00:00+02:00", "local": None, "s": "2026-03-01"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    _, table = read(make_stage("source", {"type": "jsonl", "path": str(tmp_path / "d.jsonl")}), 10)
    assert table.column_names == ["z", "day", "at", "local", "s"]
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("at").type == pa.timestamp("us", "UTC")
    assert table.schema.field("local").type == pa.timestamp("us")
    assert table.schema.field("s").type == pa.string()
    utc = dt.UTC
    assert table.column("at").to_pylist() == [
        dt.datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=utc),
        dt.datetime(2026, 3, 1, 10, 0, tzinfo=utc),
    ]


def test_jsonl_declared_types_include_dates_times_and_decimals(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"d": "2026-03-01", "t": "08:30:00.5", "n": "1.25", "x": 1}\n')
    schema = {"d": "date", "t": "time", "n": "decimal(10, 2)", "x": "float64"}
    _, table = read(make_stage("source", {"type": "jsonl", "path": str(tmp_path / "d.jsonl"), "schema": schema}), 10)
    assert table.to_pylist() == [
        {"d": dt.date(2026, 3, 1), "t": dt.time(8, 30, 0, 500000), "n": Decimal("1.25"), "x": 1.0}
    ]
    (tmp_path / "d.jsonl").write_text('{"d": "01/03/2026"}\n')
    source = make_stage("source", {"type": "jsonl", "path": str(tmp_path / "d.jsonl"), "schema": {"d": "date"}})
    with pytest.raises(PermanentError, match=r"d\.jsonl: in the lines from line 1: .*'01/03/2026'.*declare"):
        read(source, 10)


def test_jsonl_files_with_different_fields_are_read_together(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": 1, "a": "x"}\n')
    (tmp_path / "b.jsonl").write_text('{"id": 2.5, "b": true}\n')
    _, table = read(make_stage("source", {"type": "jsonl", "path": str(tmp_path / "*.jsonl")}), 10)
    assert table.to_pylist() == [{"id": 1.0, "a": "x", "b": None}, {"id": 2.5, "a": None, "b": True}]
    (tmp_path / "c.jsonl").write_text('{"id": 3, "a": 5}\n')
    with pytest.raises(PermanentError, match=r"column 'a' is string in .*a\.jsonl but int64 in .*c\.jsonl"):
        make_stage("source", {"type": "jsonl", "path": str(tmp_path / "*.jsonl")}).plan(10)


def test_a_jsonl_field_first_seen_after_the_sample_is_named_in_the_error(tmp_path):
    lines = [json.dumps({"id": i, "name": f"row {i}"}) for i in range(SAMPLE_BYTES // 25)]
    lines.append(json.dumps({"id": -1, "name": "late", "extra": "surprise"}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    source = make_stage("source", {"type": "jsonl", "path": str(tmp_path / "d.jsonl")})
    with pytest.raises(PermanentError, match=r"d\.jsonl: in the lines from line [\d,]+: field 'extra' appears"):
        read(source, 100_000)
    declared = make_stage("source", {"type": "jsonl", "path": str(tmp_path / "d.jsonl"), "schema": {"extra": "string"}})
    _, table = read(declared, 100_000)
    assert table.column("extra").to_pylist()[-1] == "surprise"


# -- parquet -------------------------------------------------------------------------------------


def test_row_groups_are_combined_up_to_the_chunk_size():
    sizes = [10, 10, 10, 50, 10, 0, 10, 30]
    assert row_group_chunks(sizes, 25) == [([0, 1], 20), ([2], 10), ([3], 50), ([4, 5, 6], 20), ([7], 30)]
    assert row_group_chunks(sizes, 1_000) == [(list(range(8)), 130)]
    assert row_group_chunks([], 10) == []


def test_parquet_chunks_are_whole_row_groups(tmp_path):
    table = reference_table(130)
    with pq.ParquetWriter(tmp_path / "d.parquet", table.schema) as writer:
        for start, size in [(0, 10), (10, 10), (20, 10), (30, 50), (80, 10), (90, 10), (100, 30)]:
            writer.write_table(table.slice(start, size))
    source = make_stage("source", {"type": "parquet", "path": str(tmp_path / "d.parquet")}, batch_size=8)
    plan = source.plan(25)
    assert [c.args["row_groups"] for c in plan.chunks] == [[0, 1], [2], [3], [4, 5], [6]]
    assert [c.rows for c in plan.chunks] == [20, 10, 50, 20, 30]
    for chunk in plan.chunks:
        sizes = [b.num_rows for b in source.read(chunk, plan.shared)]
        assert sum(sizes) == chunk.rows and max(sizes) <= 8
    assert source.count() == etl.RowCount(130, exact=True)


def test_parquet_reads_only_the_chosen_columns(tmp_path):
    pq.write_table(reference_table(10), tmp_path / "d.parquet")
    options = {"type": "parquet", "path": str(tmp_path / "d.parquet"), "columns": ["day", "id"]}
    _, table = read(make_stage("source", options), 100)
    assert table.column_names == ["day", "id"] and table.num_rows == 10
    missing = make_stage("source", {**options, "columns": ["id", "nope"]})
    with pytest.raises(PermanentError, match=r"d\.parquet has no column 'nope'; it has: id, name"):
        missing.plan(100)


def test_parquet_files_of_a_glob_must_have_the_same_schema(tmp_path):
    pq.write_table(pa.table({"id": [1], "x": [1.5]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [2], "x": ["text"]}), tmp_path / "b.parquet")
    source = make_stage("source", {"type": "parquet", "path": str(tmp_path / "*.parquet")})
    with pytest.raises(PermanentError, match=r"a\.parquet and .*b\.parquet have different schemas: 'x' is double"):
        source.plan(10)
    shared_columns = make_stage("source", {"type": "parquet", "path": str(tmp_path / "*.parquet"), "columns": ["id"]})
    assert read(shared_columns, 10)[1].column("id").to_pylist() == [1, 2]


def test_a_file_that_is_not_parquet_is_a_permanent_error(tmp_path):
    (tmp_path / "d.parquet").write_text("not parquet")
    with pytest.raises(PermanentError, match=r"d\.parquet: cannot read it as Parquet"):
        make_stage("source", {"type": "parquet", "path": str(tmp_path / "d.parquet")}).count()


# -- sinks ---------------------------------------------------------------------------------------

FORMATS = ["csv", "jsonl", "parquet"]


def sink(kind: str, directory: Path, run_id: str = "run-1", **options):
    return make_stage("sink", {"type": kind, "path": str(directory / "out"), **options}, run_id=run_id)


@pytest.mark.parametrize("kind", FORMATS)
def test_a_failed_write_leaves_no_part_and_no_temporary_file(tmp_path, kind):
    batches = reference_table(200).to_batches(max_chunksize=50)

    def broken():
        yield from batches[:2]
        raise ConnectionError("the source went away")

    for mode in ("append", "replace"):
        target = sink(kind, tmp_path, mode=mode)
        target.prepare()
        with pytest.raises(ConnectionError):
            target.write(Chunk(index=0), broken())
        # The chunk's fence (the latest attempt at it) stays until the run ends, for its retry.
        assert [p for p in all_files(tmp_path) if "part-" in p and not p.endswith(".fence")] == []
        target.finalize()
        target.close()
        assert [p for p in all_files(tmp_path) if "part-" in p] == []


@pytest.mark.parametrize("kind", FORMATS)
def test_a_replace_staging_directory_is_removed_by_abort(tmp_path, kind):
    old = sink(kind, tmp_path, mode="replace")
    old.prepare()
    old.write(Chunk(index=0), iter(reference_table(10).to_batches()))
    old.finalize()
    assert all_files(tmp_path) == ["out", f"out/part-run-1-00000.{kind}"]
    new = sink(kind, tmp_path, "run-2", mode="replace")
    new.prepare()
    new.write(Chunk(index=3), iter(reference_table(20).to_batches()))
    staging = f".out.etl-staging-run-2/part-run-2-00003.{kind}"
    assert staging in all_files(tmp_path)
    new.abort()
    assert all_files(tmp_path) == ["out", f"out/part-run-1-00000.{kind}"]


@pytest.mark.parametrize("kind", FORMATS)
def test_replace_refuses_a_directory_that_holds_other_files(tmp_path, kind):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(PermanentError, match=r"holds files that are not part files \(notes\.txt\)"):
        sink(kind, tmp_path, mode="replace").prepare()
    sink(kind, tmp_path, mode="append").prepare()  # append deletes nothing: fine


@pytest.mark.parametrize("kind", FORMATS)
def test_many_writers_at_once_each_leave_their_part(tmp_path, kind):
    table = reference_table(800)
    sink(kind, tmp_path, mode="replace").prepare()

    def write(index: int) -> int:
        writer = sink(kind, tmp_path, mode="replace")  # one instance per worker, as in separate processes
        try:
            return writer.write(Chunk(index=index), iter(table.slice(index * 100, 100).to_batches()))
        finally:
            writer.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(write, range(8))) == [100] * 8
    sink(kind, tmp_path, mode="replace").finalize()
    assert all_files(tmp_path) == ["out", *(f"out/part-run-1-{i:05d}.{kind}" for i in range(8))]


def test_finalizing_a_replace_twice_keeps_the_new_rows(tmp_path):
    target = sink("parquet", tmp_path, mode="replace")
    target.prepare()
    target.write(Chunk(index=0), iter(reference_table(10).to_batches()))
    target.finalize()
    target.finalize()
    assert pq.read_table(tmp_path / "out" / "part-run-1-00000.parquet").num_rows == 10


def test_merge_is_not_a_mode_of_the_file_sinks(tmp_path):
    job = f"""
name: files
source: {{type: generate, rows: 10}}
sink: {{type: parquet, path: {tmp_path / "out"}, mode: merge}}
"""
    with pytest.raises(etl.ConfigErrors, match="'merge' is not one of: append, replace"):
        etl.load_job(text=job)


def test_the_jsonl_sink_writes_iso_dates_and_timestamps(tmp_path):
    table = reference_table(2).append_column("local", pa.array([0, 1_500_000], pa.timestamp("us")))
    target = sink("jsonl", tmp_path)
    target.write(Chunk(index=0), iter(table.to_batches()))
    target.close()
    first = json.loads((tmp_path / "out" / "part-run-1-00000.jsonl").read_text().splitlines()[0])
    assert first["day"] == "2026-01-02"
    assert first["at"] == "2026-01-01T00:00:01.000000Z"
    assert first["local"] == "1970-01-01T00:00:00.000000"


def test_parquet_parts_have_row_groups_of_the_given_size(tmp_path):
    target = sink("parquet", tmp_path, row_group_size=300, compression="gzip", compression_level=5)
    target.write(Chunk(index=0), iter(reference_table(1_000).to_batches(max_chunksize=128)))
    metadata = pq.ParquetFile(tmp_path / "out" / "part-run-1-00000.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [300, 300, 300, 100]
    assert metadata.row_group(0).column(0).compression == "GZIP"


def test_csv_sink_options(tmp_path):
    target = sink("csv", tmp_path, delimiter=";", header=False)
    target.write(Chunk(index=7), iter(pa.table({"a": [1, 2], "b": ["x;y", None]}).to_batches()))
    assert (tmp_path / "out" / "part-run-1-00007.csv").read_text() == '1;"x;y"\n2;\n'
    with pytest.raises(PermanentError, match="CSV has no place for nested values: column l"):
        target.write(Chunk(index=8), iter(pa.table({"l": [[1]]}).to_batches()))


@pytest.mark.parametrize("kind", FORMATS)
def test_what_a_sink_writes_its_source_reads_back(tmp_path, kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pacsv.write_csv(reference_table(), tmp_path / "in.csv")
    job = f"""
name: roundtrip
source: {{type: csv, path: in.csv}}
sink: {{type: {kind}, path: out, mode: replace}}
chunk_size: 300
"""
    result = etl.run(etl.load_job(text=job))
    assert result.state == "completed" and result.rows_written == 1_000
    assert len([p for p in (tmp_path / "out").iterdir() if p.name.startswith("part-")]) == 4
    source = make_stage("source", {"type": kind, "path": "out"})
    _, table = read(source, 250)
    expected = reference_table()
    table = table.sort_by("id")
    for name in expected.column_names:
        assert table.column(name).cast(expected.schema.field(name).type).equals(expected.column(name)), name
