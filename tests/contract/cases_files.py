"""Contract cases for the file formats: sources and sinks ``csv``, ``jsonl`` and ``parquet``.

Sources read the reference table as another tool wrote it (pyarrow's CSV and Parquet
writers, DuckDB's JSON writer); sinks are read back with pyarrow, part file by part file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from tests.contract.framework import SinkCase, SourceCase, reference_table

# -- sources -------------------------------------------------------------------------------------


def _pieces(table: pa.Table, n: int) -> list[pa.Table]:
    size = -(-table.num_rows // n) if table.num_rows else 0
    return [table.slice(i * size, size) for i in range(n)]


def _csv(directory: Path, table: pa.Table) -> dict[str, Any]:
    # Every type is inferred: the header, quoting, NULLs and the UTC timestamps all round-trip.
    pacsv.write_csv(table, directory / "data.csv")
    return {"type": "csv", "path": str(directory / "data.csv")}


def _csv_glob(directory: Path, table: pa.Table) -> dict[str, Any]:
    # Three headerless files with ';' and CRLF line ends, names and two types declared.
    options = pacsv.WriteOptions(include_header=False, delimiter=";")
    for i, piece in enumerate(_pieces(table, 3)):
        path = directory / f"part-{i}.csv"
        pacsv.write_csv(piece, path, write_options=options)
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    return {
        "type": "csv",
        "path": str(directory / "part-*.csv"),
        "header": False,
        "delimiter": ";",
        "columns": table.column_names,
        "schema": {"day": "date", "at": "timestamp(us, UTC)"},
    }


def _jsonl(directory: Path, table: pa.Table) -> dict[str, Any]:
    import duckdb

    path = directory / "data.jsonl"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("reference", table)
        con.execute(f"COPY (SELECT * FROM reference) TO '{path}' (FORMAT json)")
    if not table.num_rows:
        path.write_bytes(b"")
    return {"type": "jsonl", "path": str(path)}


def _parquet(directory: Path, table: pa.Table) -> dict[str, Any]:
    pq.write_table(table, directory / "data.parquet", row_group_size=100)
    return {"type": "parquet", "path": str(directory / "data.parquet")}


def _parquet_directory(directory: Path, table: pa.Table) -> dict[str, Any]:
    (directory / "lake").mkdir()
    for i, piece in enumerate(_pieces(table, 3)):
        pq.write_table(piece, directory / "lake" / f"{i}.parquet", row_group_size=50)
    return {"type": "parquet", "path": str(directory / "lake")}


SOURCE_CASES = [
    SourceCase("csv", _csv),
    SourceCase("csv-glob", _csv_glob),
    SourceCase("jsonl", _jsonl),
    SourceCase("parquet", _parquet),
    SourceCase("parquet-directory", _parquet_directory),
]

# -- sinks ---------------------------------------------------------------------------------------

_SCHEMA = reference_table(0).schema


def _parts(directory: Path, suffix: str) -> list[Path]:
    target = directory / "out"
    return sorted(p for p in target.glob(f"*{suffix}") if not p.name.startswith(".")) if target.is_dir() else []


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if tables else pa.table({})


def _csv_options(directory: Path) -> dict[str, Any]:
    return {"type": "csv", "path": str(directory / "out")}


def _csv_read(directory: Path, options: dict[str, Any]) -> pa.Table:
    types = dict(zip(_SCHEMA.names, _SCHEMA.types, strict=True))
    convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False)
    return _concat([pacsv.read_csv(p, convert_options=convert) for p in _parts(directory, ".csv")])


def _jsonl_options(directory: Path) -> dict[str, Any]:
    return {"type": "jsonl", "path": str(directory / "out")}


def _jsonl_read(directory: Path, options: dict[str, Any]) -> pa.Table:
    schema = _SCHEMA.set(_SCHEMA.get_field_index("day"), pa.field("day", pa.string()))
    parse = pajson.ParseOptions(explicit_schema=schema)
    tables = [pajson.read_json(p, parse_options=parse) for p in _parts(directory, ".jsonl")]
    tables = [t.set_column(t.schema.get_field_index("day"), "day", t.column("day").cast(pa.date32())) for t in tables]
    return _concat(tables)


def _parquet_options(directory: Path) -> dict[str, Any]:
    return {"type": "parquet", "path": str(directory / "out")}


def _parquet_read(directory: Path, options: dict[str, Any]) -> pa.Table:
    return _concat([pq.read_table(p) for p in _parts(directory, ".parquet")])


SINK_CASES = [
    SinkCase("csv", _csv_options, _csv_read),
    SinkCase("jsonl", _jsonl_options, _jsonl_read),
    SinkCase("parquet", _parquet_options, _parquet_read),
]
