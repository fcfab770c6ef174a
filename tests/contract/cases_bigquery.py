"""Contract cases for the BigQuery sink, against a BigQuery emulator of this process's own.

The emulator starts when a case first needs it (so collecting the tests costs nothing) and
stops when the process exits. Every test gets a dataset of its own.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.contract.framework import SinkCase, SourceCase

PROJECT = "test-project"


def emulator() -> Any:
    """The emulator of the test process (started at the first call)."""
    from tests import bq_emulator

    return bq_emulator.shared()


def client() -> Any:
    from tests import bq_emulator

    return bq_emulator.client(emulator())


def _dataset(directory: Path) -> str:
    """One dataset per test directory (so per test), made at the first use."""
    marker = directory / ".bq-dataset"
    if not marker.exists():
        name = f"contract_{uuid.uuid4().hex[:12]}"
        with client() as bq:
            bq.create_dataset(name)
        marker.write_text(name)
    return marker.read_text()


def _options(directory: Path) -> dict[str, Any]:
    return {
        "type": "bigquery",
        "project": PROJECT,
        "api_endpoint": emulator().rest,
        "table": f"{_dataset(directory)}.target",
    }


def _read(directory: Path, options: dict[str, Any]) -> pa.Table:
    from google.api_core.exceptions import NotFound

    with client() as bq:
        try:
            bq.get_table(f"{PROJECT}.{_dataset(directory)}.target")
        except NotFound:
            return pa.table({})
        job = bq.query(f"SELECT * FROM `{PROJECT}.{_dataset(directory)}.target`")
        return job.to_arrow(create_bqstorage_client=False)


def _store(directory: Path, table: pa.Table) -> str:
    """``table`` as a BigQuery table (a Parquet load job); its name."""
    import pyarrow.parquet as pq
    from google.cloud import bigquery

    name = f"{PROJECT}.{_dataset(directory)}.source"
    path = directory / "source.parquet"
    pq.write_table(table, path)
    types = {"int64": "INT64", "string": "STRING", "double": "FLOAT64", "date32[day]": "DATE"}
    schema = [bigquery.SchemaField(f.name, types.get(str(f.type), "TIMESTAMP")) for f in table.schema]
    with client() as bq:
        bq.create_table(bigquery.Table(name, schema=schema))
        config = bigquery.LoadJobConfig(source_format="PARQUET", schema=schema)
        with path.open("rb") as f:
            bq.load_table_from_file(f, name, job_config=config).result()
    return name


def _source(**options: Any) -> dict[str, Any]:
    return {
        "type": "bigquery",
        "project": PROJECT,
        "api_endpoint": emulator().rest,
        "storage_endpoint": emulator().grpc,
        **options,
    }


def _table_by_id(directory: Path, table: pa.Table) -> dict[str, Any]:
    return _source(table=_store(directory, table), chunk_by="id")


def _query_by_day(directory: Path, table: pa.Table) -> dict[str, Any]:
    name = _store(directory, table)
    return _source(query=f"SELECT * FROM `{name}` WHERE id > 0", chunk_by={"column": "day", "every": "7 days"})


def _table_rest(directory: Path, table: pa.Table) -> dict[str, Any]:
    return _source(table=_store(directory, table), read_api="rest")


# A table read by Storage Read API streams is not a case: BigQuery decides the streams (one for a
# small table), so its chunks are not about chunk_size; tests/plugins/test_bigquery_source.py
# reads it.
SOURCE_CASES = [
    SourceCase("bigquery-table-chunk-by-id", _table_by_id),
    SourceCase("bigquery-query-chunk-by-day", _query_by_day),
    SourceCase("bigquery-table-rest", _table_rest),
]
SINK_CASES = [SinkCase("bigquery", _options, _read, modes=("append", "replace"))]
