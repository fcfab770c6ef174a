"""The bigquery sink's writing of one chunk: its batches converted to the table's types (rows
that can't be stored rejected, never altered) into a Parquet file, then one load job
(``WRITE_TRUNCATE``) into the chunk's own staging table, made or marked for this attempt first
so that a stale attempt stops (``Interrupted``) and a retried chunk replaces its earlier rows.

``ChunkLoads`` is a part of ``BigQuerySink``, split out of it: it uses the sink's ``bq``,
``clients``, ``context``, ``options``, ``names``, ``_plans``, ``_target``, ``_get()``,
``_google()``, ``_delete()``, ``_labels()``, ``_missing()``, ``_check_kind()`` and ``_where()``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import Chunk, Interrupted, PermanentError, TransientError

from .._casting import cast_batch
from ._sink_types import Plan, conform_plan, out_of_range, same_fields, schema_fields, value_checks

#: How long a staging table outlives the run that made it, at most.
STAGING_EXPIRATION = dt.timedelta(days=7)
#: Rows are buffered into Parquet row groups of about this size (BigQuery loads row groups of
#: 16 MB or more fastest).
ROW_GROUP_BYTES = 64 << 20


class ChunkLoads:
    """The loading side of ``BigQuerySink``: each chunk staged by a load job."""

    def write(self, chunk: Chunk, batches: Iterable[pa.RecordBatch]) -> int:
        names = self.names
        staged = names.staged(f"{names.prefix}c{chunk.index:06d}")
        if _attempt(self._get(staged)) > chunk.attempt:
            raise Interrupted("lost")  # a newer attempt at the chunk has begun: this one is stale
        batches = iter(batches)
        first = next(batches, None)
        if first is None:  # no rows: nothing staged (and nothing left from an earlier attempt)
            self._delete([staged])
            return 0
        plan = self._plan(first.schema)
        with tempfile.TemporaryDirectory(prefix="etl-bigquery-") as directory:
            path = Path(directory) / f"chunk-{chunk.index}.parquet"
            rows = self._parquet(path, itertools.chain([first], batches), plan)
            if not rows:  # every row rejected (on_error: skip)
                self._delete([staged])
                return 0
            # Only with all of the chunk's rows in hand is its staging table made (or marked)
            # for this attempt: a write that fails before leaves nothing, and an attempt that
            # finds a newer one has marked the table stops here.
            self._stage_table(staged, plan, chunk)
            self._load(path, staged, plan, rows)
        return rows

    def _plan(self, schema: pa.Schema) -> Plan:
        """How rows of ``schema`` go into the table: its columns, or when it is missing (and may
        be created) the columns a table made for them would have."""
        plan = self._plans.get(schema)
        if plan is None:
            table = self._target_table()
            columns = table.schema if table is not None else schema_fields(schema, self._where())
            plan = self._plans[schema] = conform_plan(schema, columns, self._where())
        return plan

    def _target_table(self) -> Any:
        """The table, or ``None`` when it is missing and ``create`` allows making it (at finalize,
        so that a run that fails leaves no table behind)."""
        if self._target is None:
            table = self._get(self.names.target)
            if table is None:
                if not self.options.create:
                    raise self._missing()
                return None
            self._check_kind(table)
            self._target = table
        return self._target

    def _stage_table(self, ref: str, plan: Plan, chunk: Chunk) -> None:
        """Make the chunk's staging table ready for this attempt, or stop if a newer one began."""
        from google.api_core.exceptions import Conflict
        from google.cloud import bigquery

        table = self._get(ref)
        if table is not None and _attempt(table) > chunk.attempt:
            raise Interrupted("lost")
        if table is not None and not same_fields(table.schema, plan.fields):
            self._delete([ref])  # an earlier attempt staged other columns
            table = None
        if table is None:
            table = bigquery.Table(ref, schema=plan.fields)
            # Expiration keeps a dead run's tables from lingering; the load's WRITE_TRUNCATE
            # replaces rows and schema, not the table's expiration and labels.
            table.expires = dt.datetime.now(dt.UTC) + STAGING_EXPIRATION
            table.labels = {**self._labels(), "etl_chunk": str(chunk.index), "etl_attempt": str(chunk.attempt)}
            table.description = (
                f"etl staging: chunk {chunk.index} of run {self.context.run_id} into {self.names.target}; "
                "dropped when the run finishes"
            )
            with self._google(f"creating the staging table {ref}") as retry:
                try:
                    self.bq.create_table(table, retry=retry)
                    return
                except Conflict:  # another attempt made it a moment ago
                    table = self._get(ref)
            if table is None or _attempt(table) > chunk.attempt:
                raise Interrupted("lost")
        if _attempt(table) < chunk.attempt:
            table.labels = {**(table.labels or {}), "etl_attempt": str(chunk.attempt)}
            with self._google(f"marking {ref}") as retry:
                self.bq.update_table(table, ["labels"], retry=retry)

    def _parquet(self, path: Path, batches: Iterable[pa.RecordBatch], plan: Plan) -> int:
        """Write the batches, converted to the staging table's types, into a Parquet file,
        buffering about ``ROW_GROUP_BYTES`` at a time. Returns the number of rows written."""
        import pyarrow.parquet as pq

        rows = 0
        pending: list[pa.RecordBatch] = []
        size = 0
        with pq.ParquetWriter(path, plan.arrow, compression="zstd") as writer:
            for batch in batches:
                batch_plan = self._plan(batch.schema)
                if batch_plan.arrow != plan.arrow:
                    raise PermanentError(
                        f"{self._where()}: the batches of one chunk differ in their columns "
                        f"({', '.join(batch_plan.names)} after {', '.join(plan.names)})"
                    )
                batch = self._conform(batch, batch_plan)
                if batch.num_rows:
                    pending.append(batch)
                    size += batch.nbytes
                    rows += batch.num_rows
                if size >= ROW_GROUP_BYTES:
                    writer.write_table(pa.Table.from_batches(pending, plan.arrow))
                    pending, size = [], 0
            if pending:
                writer.write_table(pa.Table.from_batches(pending, plan.arrow))
        return rows

    def _conform(self, received: pa.RecordBatch, plan: Plan) -> pa.RecordBatch:
        """The batch in the staging table's types; rows that can't be stored rejected."""
        batch = received.rename_columns(plan.names)
        positions = np.arange(batch.num_rows)
        shown = _Shown(received)
        for column, reason, test in value_checks(batch.schema, plan, self.names.target):
            bad = test(batch.column(column))
            if bad is None or not pc.any(bad).as_py():
                continue
            mask = bad.to_numpy(zero_copy_only=False)
            rows = positions[mask]
            self.context.reject(shown.take(rows), rows.tolist(), reason, column=column)
            batch, positions = batch.filter(pc.invert(bad)), positions[~mask]
        casts = {f.name: (f.type, None) for f in plan.arrow if batch.schema.field(f.name).type != f.type}
        batch = cast_batch(batch, casts, self.context, received=shown, positions=positions)  # type: ignore[arg-type]
        return pa.RecordBatch.from_arrays(batch.columns, schema=plan.arrow)

    def _load(self, path: Path, ref: str, plan: Plan, rows: int) -> None:
        from google.cloud import bigquery

        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,  # replaces an earlier attempt
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,  # never re-make a dropped table
            schema=plan.fields,
            decimal_target_types=["NUMERIC", "BIGNUMERIC"],
            labels=self._labels(),
        )
        parquet = bigquery.ParquetOptions()
        parquet.enable_list_inference = True  # Parquet LISTs load as ARRAYs, not as records
        config.parquet_options = parquet
        self.clients.job_config(config)
        with self._google(f"loading {rows:,} rows into {ref}") as retry, path.open("rb") as file:

            def upload() -> Any:
                # The whole file again on a retry (the library's own upload retries are
                # silent): each attempt is logged, and all of them bounded by `timeout`.
                file.seek(0)
                return self.bq.load_table_from_file(file, ref, job_config=config, num_retries=0)

            job = retry(upload)()
            job.result(retry=retry)
        if job.output_rows is not None and job.output_rows != rows:
            raise TransientError(f"{self.context.label}: loading {ref} took {job.output_rows:,} rows of {rows:,}")


class _Shown:
    """The batch a sink received, as rejections record it: taken rows whose dates and times
    Python can't hold (nanoseconds, years beyond 1 … 9999) show them as text."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch

    def take(self, indices: Any) -> pa.RecordBatch:
        rows = self.batch.take(indices)
        for i, field in enumerate(rows.schema):
            t = field.type
            if not (pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t)):
                continue
            beyond = out_of_range(rows.column(i))
            if getattr(t, "unit", None) == "ns" or (beyond is not None and pc.any(beyond).as_py()):
                rows = rows.set_column(i, pa.field(field.name, pa.string()), rows.column(i).cast(pa.string()))
        return rows


def _attempt(table: Any) -> int:
    """The newest attempt at the chunk that marked its staging table (0: none, or no table)."""
    if table is None:
        return 0
    try:
        return int((table.labels or {}).get("etl_attempt", 0))
    except ValueError:
        return 0
