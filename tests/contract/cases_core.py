"""Contract cases for the core built-ins: source ``generate`` and sink ``duckdb``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.contract.framework import SinkCase, SourceCase


def _generate(directory: Path, table: pa.Table) -> dict[str, Any]:
    # generate makes its own rows; only the row count and the id sequence match the reference.
    return {
        "type": "generate",
        "rows": table.num_rows,
        "seed": 7,
        "columns": {
            "id": {"kind": "sequence", "start": 1},
            "name": {"kind": "string", "prefix": "n-", "null_fraction": 0.01},
            "amount": {"kind": "float", "min": 0, "max": 100},
            "day": {"kind": "date"},
            "at": {"kind": "timestamp"},
        },
    }


def _duckdb_options(directory: Path) -> dict[str, Any]:
    return {"type": "duckdb", "path": str(directory / "target.duckdb"), "table": "main.contract"}


def _duckdb_read(directory: Path, options: dict[str, Any]) -> pa.Table:
    import duckdb

    path = directory / "target.duckdb"
    if not path.exists():
        return pa.table({})
    with duckdb.connect(str(path), read_only=True) as con:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = 'contract'"
        ).fetchone()[0]
        if not exists:
            return pa.table({})
        con.execute("SET TimeZone = 'UTC'")
        return con.execute("SELECT * FROM main.contract").to_arrow_table()


SOURCE_CASES = [SourceCase("generate", _generate, exact_columns=("id",))]
SINK_CASES = [SinkCase("duckdb", _duckdb_options, _duckdb_read, modes=("append", "replace", "merge"))]
