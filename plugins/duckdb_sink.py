"""Sink ``duckdb``: a table in a local DuckDB database file, the embedded default.

Each chunk is written in one transaction together with a row in the ledger table
``_etl_ledger`` (run, chunk, target): a chunk whose ledger row exists is not written again,
and a chunk that fails half-way leaves nothing behind.

* ``append`` inserts each chunk into the table as it is written.
* ``replace`` writes into a staging table and swaps it in, in one transaction, when the run
  completes: readers see the old table until then.
* ``merge`` writes into a staging table; when the run completes, rows are upserted on ``key``
  (``MERGE INTO``). Where one run holds a key more than once, the last one wins: the row from
  the highest chunk, and within a chunk the later row.

Rows are converted to the column types of the table they end in before DuckDB sees them, by
the casting rules of the ``cast`` transform: a value that would change is rejected with its
row and column (DuckDB's own casts round 1.5 into an INTEGER to 2).

DuckDB lets one process at a time open a database file for writing; use it for runs in one
process, and a server database for runs spread over workers.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from etl import Chunk, Interrupted, PermanentError, Sink, StageOptions, TransientError, hookimpl

from ._casting import cast_batch

LEDGER = "_etl_ledger"
# The latest attempt at each chunk: a write of an older attempt (a worker that lost its lease)
# must not commit once a newer one began.
FENCE = "_etl_fence"
# Runs whose finalize committed, so that finalizing again changes nothing.
FINALIZED = "_etl_finalized"
# DuckDB keeps the blocks it wrote cached until the database is closed: reopening it after this
# many rows keeps memory flat however big the table grows (and costs next to nothing).
REOPEN_AFTER_ROWS = 200_000
_HELPERS = ("_etl_chunk", "_etl_row")


class DuckDBOptions(StageOptions):
    path: str = Field(
        description="the database file (created if missing), or :memory:", examples=["out/forecasts.duckdb"]
    )
    table: str = Field(description="the table, optionally schema-qualified", examples=["forecasts"])
    mode: Literal["append", "replace", "merge"] = Field("append", description="how a run's rows reach the table")
    key: list[str] | None = Field(None, min_length=1, description="the key columns that `merge` upserts on")

    @model_validator(mode="after")
    def _key_for_merge(self) -> DuckDBOptions:
        if self.mode == "merge" and not self.key:
            raise ValueError("mode merge needs `key:`, the columns to upsert on, e.g. key: [id]")
        if self.mode != "merge" and self.key:
            raise ValueError(f"`key` only applies to mode merge, not {self.mode}")
        if not re.fullmatch(r"[^.\s\"]+(\.[^.\s\"]+)?", self.table):
            raise ValueError(f"{self.table!r} is not a table name; expected name or schema.name")
        return self


def quote(name: str) -> str:
    """A DuckDB identifier, quoted, with inner double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


class DuckDBSink(Sink):
    """A table in a local DuckDB file: append, replace (atomic swap) or merge (upsert)."""

    name = "duckdb"
    Options = DuckDBOptions
    options: DuckDBOptions

    def __init__(self, options: DuckDBOptions, context) -> None:
        super().__init__(options, context)
        schema, _, table = options.table.rpartition(".")
        self.schema = schema or "main"
        self.table = table
        self.target = f"{quote(self.schema)}.{quote(self.table)}"
        stage_name = f"_etl_stage_{table}_{re.sub(r'[^0-9A-Za-z]', '_', context.run_id)}"
        self.staging_name = stage_name
        self.staging = f"{quote(self.schema)}.{quote(stage_name)}"
        self._con = None
        self._rows_since_open = 0

    def staged(self) -> list[str]:
        return [] if self.options.mode == "append" else [f"the table {self.staging} in {self.options.path}"]

    def check_schema(self, schema: pa.Schema) -> None:
        """A merge key must be among the rows' columns (checked again at finalize)."""
        if self.options.key:
            self.require_columns(schema, self.options.key, key="key")

    # -- connection ------------------------------------------------------------------------

    @property
    def con(self):
        if self._con is None:
            import duckdb

            if self.options.path != ":memory:":
                Path(self.options.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                self._con = duckdb.connect(self.options.path)
            except duckdb.IOException as exc:
                # Another process holds the file: worth another try after a pause.
                raise TransientError(f"cannot open {self.options.path}: {exc}") from exc
            self._con.execute("SET TimeZone = 'UTC'")
            for statement in _SETUP:
                _tolerate_a_twin(self._con, statement.format(schema=quote(self.schema)))
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
            self._rows_since_open = 0

    def _exists(self, name: str) -> bool:
        rows = self.con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [self.schema, name]
        ).fetchall()
        return bool(rows)

    def _columns(self, name: str) -> list[str]:
        rows = self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position",
            [self.schema, name],
        ).fetchall()
        return [r[0] for r in rows]

    # -- the sink contract ---------------------------------------------------------------

    def _fence(self, chunk: Chunk) -> int:
        row = self.con.execute(
            f"SELECT attempt FROM {FENCE} WHERE run_id = ? AND chunk = ? AND target = ?",
            [self.context.run_id, chunk.index, self.options.table],
        ).fetchone()
        return int(row[0]) if row else 0

    def _raise_fence(self, chunk: Chunk) -> None:
        """Record that ``chunk.attempt`` is writing the chunk, or refuse if a newer one is."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            current = self._fence(chunk)
            if current > chunk.attempt:
                raise Interrupted("lost")
            if current < chunk.attempt:
                con.execute(
                    f"INSERT OR REPLACE INTO {FENCE} (run_id, chunk, target, attempt) VALUES (?, ?, ?, ?)",
                    [self.context.run_id, chunk.index, self.options.table, chunk.attempt],
                )
            con.execute("COMMIT")
        except BaseException as exc:
            con.execute("ROLLBACK")
            _conflict(exc)
            raise

    def write(self, chunk: Chunk, batches: Iterable[pa.RecordBatch]) -> int:
        con = self.con
        staged = self.options.mode != "append"
        into, into_name = (self.staging, self.staging_name) if staged else (self.target, self.table)
        self._raise_fence(chunk)
        batches = iter(batches)
        first = next(batches, None)
        # Rows are converted to the column types of the table they end in first: DuckDB's own
        # casts round (1.5 into an INTEGER is 2, 2.5612 into DECIMAL(5,2) 2.56, nanoseconds cut).
        ends_in = self.table if staged and self.options.mode == "merge" and self._exists(self.table) else into_name
        types = self._types(ends_in)
        if first is not None and types:
            first = self._conform(first, types)
        if first is not None and not self._exists(into_name):
            # Made before the chunk's transaction, so that chunks written in parallel don't
            # conflict over who creates it; an empty table is all a failed chunk leaves.
            sample = _with_positions(first, chunk.index, 0) if self.options.mode == "merge" else first
            self._create(into, sample)
            if not types:  # made from the rows: a timestamp with a zone keeps microseconds
                types = self._types(ends_in)
                first = self._conform(first, types)
        con.execute("BEGIN TRANSACTION")
        try:
            done = con.execute(
                f"SELECT rows FROM {LEDGER} WHERE run_id = ? AND chunk = ? AND target = ?",
                [self.context.run_id, chunk.index, self.options.table],
            ).fetchone()
            if done is not None:  # this chunk of this run is already in: write nothing twice
                con.execute("ROLLBACK")
                return int(done[0])
            written = 0
            for batch in itertools.chain([first] if first is not None else [], batches):
                if batch is not first:
                    batch = self._conform(batch, types)
                if self.options.mode == "merge":
                    batch = _with_positions(batch, chunk.index, written)
                self._check_columns(into_name, batch)
                con.register("_etl_batch", batch)
                try:
                    con.execute(f"INSERT INTO {into} BY NAME SELECT * FROM _etl_batch")
                finally:
                    con.unregister("_etl_batch")
                written += batch.num_rows
            # Commit only while this attempt is still the latest: touching the fence row makes a
            # newer attempt's fence (committed meanwhile) a conflict, and one committed before
            # this transaction began leaves nothing to touch.
            touched = con.execute(
                f"UPDATE {FENCE} SET attempt = attempt WHERE run_id = ? AND chunk = ? AND target = ? AND attempt = ?",
                [self.context.run_id, chunk.index, self.options.table, chunk.attempt],
            ).fetchone()
            if not touched or touched[0] != 1:
                raise Interrupted("lost")
            con.execute(
                f"INSERT INTO {LEDGER} (run_id, chunk, target, rows) VALUES (?, ?, ?, ?)",
                [self.context.run_id, chunk.index, self.options.table, written],
            )
            con.execute("COMMIT")
        except BaseException as exc:
            con.execute("ROLLBACK")
            if not isinstance(exc, Interrupted) and self._fence(chunk) > chunk.attempt:
                raise Interrupted("lost") from exc
            _conflict(exc)
            raise
        self._rows_since_open += written
        if self._rows_since_open >= REOPEN_AFTER_ROWS and self.options.path != ":memory:":
            self.close()
        return written

    def _types(self, name: str) -> dict[str, pa.DataType]:
        """The Arrow types that rows take to be stored as they are in the columns of table
        ``name`` (none when there is no such table), for the column types whose Arrow type is
        exactly theirs; columns of other types (JSON, UUID, ENUM, HUGEINT...) DuckDB converts."""
        kinds = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            [self.schema, name],
        ).fetchall()
        if not kinds:
            return {}
        arrow = self.con.execute(f"SELECT * FROM {quote(self.schema)}.{quote(name)} LIMIT 0").to_arrow_table().schema
        return {column: arrow.field(column).type for column, kind in kinds if _EXACT.match(kind)}

    def _conform(self, batch: pa.RecordBatch, types: dict[str, pa.DataType]) -> pa.RecordBatch:
        """The batch in the column types ``types``; values that would change are rejected."""
        targets = {
            f.name: (types[f.name], None)
            for f in batch.schema
            if f.name in types and f.type != types[f.name] and not (_text(f.type) and _text(types[f.name]))
        }
        return cast_batch(batch, targets, self.context) if targets else batch

    def _create(self, name: str, batch: pa.RecordBatch) -> None:
        self.con.register("_etl_batch", batch.slice(0, 0))
        try:
            _tolerate_a_twin(self.con, f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM _etl_batch")
        finally:
            self.con.unregister("_etl_batch")

    def _check_columns(self, name: str, batch: pa.RecordBatch) -> None:
        have = set(self._columns(name))
        missing = [c for c in batch.schema.names if c not in have]
        if missing:
            raise PermanentError(
                f"table {self.options.table} has no column {', '.join(map(repr, missing))}; "
                f"it has: {', '.join(sorted(have - set(_HELPERS)))}. Add the columns, drop them with a "
                "`select`/`drop` transform, or use mode: replace"
            )

    def finalize(self) -> None:
        """Swap in or merge the staged rows, once: a second call (a finalize retried after its
        worker died past the commit) finds the run marked finalized and does nothing."""
        con = self.con
        key = [self.context.run_id, self.options.table]
        con.execute("BEGIN TRANSACTION")
        try:
            if con.execute(f"SELECT 1 FROM {FINALIZED} WHERE run_id = ? AND target = ?", key).fetchone():
                con.execute("ROLLBACK")
                return
            if self.options.mode == "replace":
                self._swap()
            elif self.options.mode == "merge":
                self._merge()
            if self.options.mode != "append":
                con.execute(f"DELETE FROM {LEDGER} WHERE run_id = ? AND target = ?", key)
            con.execute(f"DELETE FROM {FENCE} WHERE run_id = ? AND target = ?", key)
            con.execute(f"INSERT INTO {FINALIZED} (run_id, target) VALUES (?, ?)", key)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _swap(self) -> None:
        if not self._exists(self.staging_name):  # the run had no rows: the table becomes empty
            if self._exists(self.table):
                self.con.execute(f"DELETE FROM {self.target}")
            return
        self.con.execute(f"DROP TABLE IF EXISTS {self.target}")
        self.con.execute(f"ALTER TABLE {self.staging} RENAME TO {quote(self.table)}")

    def _merge(self) -> None:
        if not self._exists(self.staging_name):
            return
        key = self.options.key or []
        missing = [k for k in key if k not in self._columns(self.staging_name)]
        if missing:
            raise PermanentError(
                f"merge key column {', '.join(missing)} is not in the rows; they have: "
                f"{', '.join(c for c in self._columns(self.staging_name) if c not in _HELPERS)}"
            )
        keys = ", ".join(quote(k) for k in key)
        latest = (
            f"SELECT * EXCLUDE (_etl_chunk, _etl_row) FROM {self.staging} "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _etl_chunk DESC, _etl_row DESC) = 1"
        )
        if not self._exists(self.table):
            self.con.execute(f"CREATE TABLE {self.target} AS {latest}")
        else:
            on = " AND ".join(f"t.{quote(k)} IS NOT DISTINCT FROM s.{quote(k)}" for k in key)
            self.con.execute(
                f"MERGE INTO {self.target} AS t USING ({latest}) AS s ON ({on}) "
                "WHEN MATCHED THEN UPDATE BY NAME WHEN NOT MATCHED THEN INSERT BY NAME"
            )
        self.con.execute(f"DROP TABLE {self.staging}")

    def abort(self) -> None:
        # Appended chunks stay in the table, and their ledger rows stay with them so that
        # they are never written twice; staged rows of replace and merge are dropped.
        if self.options.mode != "append":
            self.con.execute(f"DROP TABLE IF EXISTS {self.staging}")
            for table in (LEDGER, FENCE):
                self.con.execute(
                    f"DELETE FROM {table} WHERE run_id = ? AND target = ?", [self.context.run_id, self.options.table]
                )


#: DuckDB column types whose Arrow type (in ``to_arrow_table``) is exactly theirs.
_EXACT = re.compile(
    r"^((U?(TINYINT|SMALLINT|INTEGER|BIGINT))|FLOAT|DOUBLE|DECIMAL\(\d+,\d+\)|BOOLEAN|DATE|TIME(_NS)?"
    r"|TIMESTAMP(_S|_MS|_NS| WITH TIME ZONE)?|VARCHAR|BLOB)(\[\])*$"
)


def _text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


_SETUP = (
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    f"CREATE TABLE IF NOT EXISTS {LEDGER} (run_id VARCHAR, chunk INTEGER, target VARCHAR, "
    "rows BIGINT, written_at TIMESTAMPTZ DEFAULT now(), PRIMARY KEY (run_id, chunk, target))",
    f"CREATE TABLE IF NOT EXISTS {FENCE} (run_id VARCHAR, chunk INTEGER, target VARCHAR, "
    "attempt INTEGER, PRIMARY KEY (run_id, chunk, target))",
    f"CREATE TABLE IF NOT EXISTS {FINALIZED} (run_id VARCHAR, target VARCHAR, "
    "finalized_at TIMESTAMPTZ DEFAULT now(), PRIMARY KEY (run_id, target))",
)


def _tolerate_a_twin(con, statement: str, tries: int = 5) -> None:
    """``CREATE … IF NOT EXISTS`` from several threads at once: one wins, the others conflict;
    a conflict means the object is being made, so try again until it is there."""
    import time

    import duckdb

    for attempt in range(tries):
        try:
            con.execute(statement)
            return
        except duckdb.TransactionException:
            if attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _conflict(exc: BaseException) -> None:
    """Two writers in one process collided (DuckDB's optimistic concurrency, e.g. both creating
    the staging table): worth another try, after which one of them has won."""
    import duckdb

    if isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower():
        raise TransientError(f"a concurrent write to {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc


def _with_positions(batch: pa.RecordBatch, chunk: int, first: int) -> pa.RecordBatch:
    """The batch with the chunk index and row positions that decide which duplicate key wins."""
    n = batch.num_rows
    columns = [
        *batch.columns,
        pa.array(np.full(n, chunk, np.int32)),
        pa.array(np.arange(first, first + n, dtype=np.int64)),
    ]
    return pa.RecordBatch.from_arrays(columns, names=[*batch.schema.names, *_HELPERS])


@hookimpl
def etl_register_sinks() -> list[type[Sink]]:
    return [DuckDBSink]
