"""Contract cases for the PostgreSQL stages, against the real PostgreSQL of the machine."""

from __future__ import annotations

import atexit
import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.contract.framework import SinkCase, SourceCase

DSN = os.environ.get("ETL_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")


def _table(directory: Path) -> str:
    """One table per test directory (so per test), in a schema of its own."""
    marker = directory / ".pg-table"
    if not marker.exists():
        marker.write_text(f"t_{uuid.uuid4().hex[:12]}")
    return marker.read_text()


def _options(directory: Path) -> dict[str, Any]:
    if not _sink_schema_registered:
        atexit.register(_drop_schema, SINK_SCHEMA)
        _sink_schema_registered.append(True)
    return {"type": "postgres", "dsn": DSN, "table": f"{SINK_SCHEMA}.{_table(directory)}"}


#: The sink cases' tables, in a schema of this process's own, dropped when it exits.
SINK_SCHEMA = f"etl_contract_{uuid.uuid4().hex[:8]}"
_sink_schema_registered: list[bool] = []


def _drop_schema(name: str) -> None:
    with contextlib.suppress(Exception):  # the server is gone: nothing to clean up
        query(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def query(sql: str, params: list | None = None) -> pa.Table:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(DSN, autocommit=True) as con, con.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


def _read(directory: Path, options: dict[str, Any]) -> pa.Table:
    table = _table(directory)
    exists = query("SELECT count(*) AS n FROM pg_tables WHERE schemaname = $1 AND tablename = $2", [SINK_SCHEMA, table])
    if not exists.column("n")[0].as_py():
        return pa.table({})
    return query(f'SELECT * FROM "{SINK_SCHEMA}"."{table}"')


# -- sources ------------------------------------------------------------------------------------

#: The source cases' tables live in a schema of this process's own, dropped when it exits.
SOURCE_SCHEMA = f"etl_contract_src_{uuid.uuid4().hex[:8]}"


_created: list[str] = []


def store_table(table: pa.Table) -> str:
    """A fresh table holding ``table`` (ANALYZEd, as a table in use would be); its name."""
    import adbc_driver_postgresql.dbapi as adbc

    name = f"t_{uuid.uuid4().hex[:12]}"
    if not _created:
        query(f'CREATE SCHEMA IF NOT EXISTS "{SOURCE_SCHEMA}"')
        atexit.register(_drop_schema, SOURCE_SCHEMA)
        _created.append(SOURCE_SCHEMA)
    with adbc.connect(DSN, autocommit=True) as con, con.cursor() as cur:
        cur.adbc_ingest(name, table, mode="create", db_schema_name=SOURCE_SCHEMA)
        cur.execute(f'ANALYZE "{SOURCE_SCHEMA}"."{name}"')
    return f"{SOURCE_SCHEMA}.{name}"


def _table_source(directory: Path, table: pa.Table) -> dict[str, Any]:
    return {"type": "postgres", "dsn": DSN, "table": store_table(table)}


def _query_by_id(directory: Path, table: pa.Table) -> dict[str, Any]:
    name = store_table(table)
    return {"type": "postgres", "dsn": DSN, "query": f"SELECT * FROM {name} WHERE id > 0", "chunk_by": "id"}


def _table_by_day(directory: Path, table: pa.Table) -> dict[str, Any]:
    name = store_table(table)
    return {"type": "postgres", "dsn": DSN, "table": name, "chunk_by": {"column": "day", "every": "1 day"}}


SOURCE_CASES = [
    SourceCase("postgres-table-blocks", _table_source),
    SourceCase("postgres-query-chunk-by-id", _query_by_id),
    SourceCase("postgres-table-chunk-by-day", _table_by_day),
]
SINK_CASES = [SinkCase("postgres", _options, _read, modes=("append", "replace", "merge"))]
