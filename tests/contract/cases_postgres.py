"""Contract cases for the PostgreSQL stages, against the real PostgreSQL of the machine."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.contract.framework import SinkCase

DSN = os.environ.get("ETL_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")


def _table(directory: Path) -> str:
    """One table per test directory (so per test), in a schema of its own."""
    marker = directory / ".pg-table"
    if not marker.exists():
        marker.write_text(f"t_{uuid.uuid4().hex[:12]}")
    return marker.read_text()


def _options(directory: Path) -> dict[str, Any]:
    return {"type": "postgres", "dsn": DSN, "table": f"etl_contract.{_table(directory)}"}


def query(sql: str, params: list | None = None) -> pa.Table:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(DSN, autocommit=True) as con, con.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


def _read(directory: Path, options: dict[str, Any]) -> pa.Table:
    table = _table(directory)
    exists = query("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'etl_contract' AND tablename = $1", [table])
    if not exists.column("n")[0].as_py():
        return pa.table({})
    return query(f'SELECT * FROM etl_contract."{table}"')


SOURCE_CASES: list = []
SINK_CASES = [SinkCase("postgres", _options, _read, modes=("append", "replace", "merge"))]
