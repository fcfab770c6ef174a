"""Sink ``postgres``: a PostgreSQL table, loaded with binary COPY straight from Arrow batches.

Each chunk is one transaction: its COPY, the check of its fence (the newest attempt at the
chunk) and its row in the ledger commit together, so a retried or re-delivered chunk never
duplicates rows, an attempt that lost its lease never commits, and a chunk half-written when its
worker died leaves nothing. The ledger lives in ``state_schema`` (``_etl`` by default).

* ``append`` copies each chunk into the table as it comes (chunk by chunk: a failed run keeps
  the chunks written, and ``etl retry`` completes it without duplicates).
* ``replace`` copies into a staging table (``LIKE`` the target when there is one, with its
  columns, defaults, constraints and indexes) and swaps it in at finalize, in one transaction:
  readers see the old table until then.
* ``merge`` copies into a staging table and upserts on ``key`` at finalize (``INSERT … ON
  CONFLICT`` when a unique index covers the key, else ``MERGE``). Where the run holds a key more
  than once, the last one wins: the row from the highest chunk, and within it the later row.

Rows are converted to the table's column types first, by the casting rules of the ``cast``
transform; a value that doesn't fit (a number too big for its column, text with a NUL
character, more digits after the second than ``timestamp(3)`` keeps, text longer than
``varchar(10)``) is rejected with its row and column, never altered.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from etl import Chunk, Interrupted, PermanentError, Sink

from .._casting import cast_batch, characters, digits_after_the_second
from ._common import (
    ConnectionOptions,
    Server,
    arrow_type,
    classify,
    pg_connect,
    pg_type,
    qualified,
    quote,
    split_table,
)

HELPERS = ("_etl_chunk", "_etl_row")


class PostgresSinkOptions(ConnectionOptions):
    table: str = Field(description="the table, schema-qualified or in public", examples=["public.forecasts"])
    mode: Literal["append", "replace", "merge"] = Field("append", description="how a run's rows reach the table")
    key: list[str] | None = Field(None, min_length=1, description="the key columns that `merge` upserts on")
    create: bool = Field(True, description="create the table from the rows' schema when it is missing")
    on_schema_change: Literal["fail", "add_columns"] = Field(
        "fail", description="rows with columns the table lacks: fail, or add the columns"
    )
    state_schema: str = Field("_etl", description="the schema holding the sink's ledger and fence tables")

    @model_validator(mode="after")
    def _valid(self) -> PostgresSinkOptions:
        if self.mode == "merge" and not self.key:
            raise ValueError("mode merge needs `key:`, the columns to upsert on, e.g. key: [id]")
        if self.mode != "merge" and self.key:
            raise ValueError(f"`key` only applies to mode merge, not {self.mode}")
        split_table(self.table)
        return self


class PostgresSink(Sink):
    """A PostgreSQL table: append, replace (atomic swap) or merge (upsert), by binary COPY."""

    name = "postgres"
    Options = PostgresSinkOptions
    options: PostgresSinkOptions

    def __init__(self, options: PostgresSinkOptions, context) -> None:
        super().__init__(options, context)
        self.schema, self.table = split_table(options.table)
        self.target = qualified(self.schema, self.table)
        digest = hashlib.sha1(f"{context.run_id}|{options.table}".encode()).hexdigest()[:10]
        self.staging_name = f"_etl_stage_{digest}_{self.table}"[:63]
        self.staging = qualified(self.schema, self.staging_name)
        state = quote(options.state_schema)
        self.ledger, self.fence, self.finalized = f"{state}.ledger", f"{state}.fence", f"{state}.finalized"
        self._con: Any = None
        self._columns: dict[str, dict[str, str]] = {}

    def staged(self) -> list[str]:
        return [] if self.options.mode == "append" else [f"the table {self.staging}"]

    def check_schema(self, schema: pa.Schema) -> None:
        """A merge key must be among the rows' columns (checked again at finalize)."""
        if self.options.key:
            self.require_columns(schema, self.options.key, key="key")

    # -- connection and statements ----------------------------------------------------------

    @property
    def con(self) -> Any:
        if self._con is not None and self._con.closed:  # the server ended it (a restart): a new one
            self.close()
        if self._con is None:
            self._con = pg_connect(self.server, self.context.label)
            self._setup()
        return self._con

    @functools.cached_property
    def server(self) -> Server:
        """The server, and the deadlines of each connection to it (read when first connecting:
        a worker's own environment)."""
        return Server.of(self.options)

    def close(self) -> None:
        if self._con is not None:
            try:
                self._con.close()
            finally:
                self._con = None

    def _run(self, sql: str, params: tuple | list | None = None) -> list[tuple]:
        import psycopg

        try:
            with self._con.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            what = f"{self.context.label}: {sql.split()[0]} on {self.options.table}"
            raise classify(exc, what, self.server) from None

    def _commit(self) -> None:
        self._con.commit()

    def _rollback(self) -> None:
        if self._con is not None:
            try:
                self._con.rollback()
            except Exception:
                self.close()  # a broken connection: the next use opens a new one

    def _lock(self) -> None:
        """Serialize DDL on this target between the processes loading it (held to commit)."""
        self._run("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"etl:{self.options.table}"])

    def _create_schema(self, name: str) -> None:
        """``CREATE SCHEMA IF NOT EXISTS``, one process at a time: two at once collide (a
        unique violation), as sinks of two targets in one new schema do."""
        self._run("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"etl-schema:{name}"])
        self._run(f"CREATE SCHEMA IF NOT EXISTS {quote(name)}")

    def _setup(self) -> None:
        """The state schema and its tables, made only when missing: once they exist (made by
        the sink once, or by an administrator), a user without CREATE privileges can load."""
        state = self.options.state_schema
        tables = {
            "ledger": "run_id text, chunk integer, target text, rows bigint, written_at timestamptz DEFAULT now(), "
            "PRIMARY KEY (run_id, chunk, target)",
            "fence": "run_id text, chunk integer, target text, attempt integer, PRIMARY KEY (run_id, chunk, target)",
            "finalized": "run_id text, target text, finalized_at timestamptz DEFAULT now(), "
            "PRIMARY KEY (run_id, target)",
        }
        try:
            present = {
                name
                for (name,) in self._run(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = ANY(%s)",
                    [state, list(tables)],
                )
            }
            if present != set(tables):
                self._lock()
                self._create_schema(state)
                for name, columns in tables.items():
                    if name not in present:
                        self._run(f"CREATE TABLE IF NOT EXISTS {quote(state)}.{quote(name)} ({columns})")
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def _columns_of(self, table: str, refresh: bool = False) -> dict[str, str]:
        """Column name → type (as ``format_type`` spells it); empty when the table is missing."""
        if refresh or table not in self._columns:
            rows = self._run(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                [self.schema, table],
            )
            self._columns[table] = dict(rows)
        return self._columns[table]

    # -- the tables ---------------------------------------------------------------------------

    def _ensure(self, into: str, sample: pa.RecordBatch) -> dict[str, str]:
        """Make sure the table the chunk goes into exists, with every column of the rows."""
        name = self.staging_name if into == self.staging else self.table
        columns = self._columns_of(name)
        missing = [f for f in sample.schema if f.name not in columns]
        if columns and not missing:
            return columns
        try:
            self._lock()
            columns = self._columns_of(name, refresh=True)
            if not columns:
                self._create(into, sample)
            else:
                missing = [f for f in sample.schema if f.name not in columns]
                if missing and self.options.on_schema_change == "fail":
                    raise PermanentError(
                        f"{self.context.label}: table {self.options.table} has no column "
                        f"{', '.join(repr(f.name) for f in missing)}; add it, drop it with a `drop` transform, "
                        "or set `on_schema_change: add_columns`"
                    )
                for f in missing:
                    self._run(f"ALTER TABLE {into} ADD COLUMN IF NOT EXISTS {quote(f.name)} {pg_type(f)}")
                if missing and self.options.mode == "merge" and self._columns_of(self.table):
                    for f in missing:  # the table merged into needs them too
                        self._run(f"ALTER TABLE {self.target} ADD COLUMN IF NOT EXISTS {quote(f.name)} {pg_type(f)}")
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return self._columns_of(name, refresh=True)

    def _create(self, into: str, sample: pa.RecordBatch) -> None:
        if not self.options.create and not self._columns_of(self.table):
            raise PermanentError(
                f"{self.context.label}: table {self.options.table} does not exist; create it, or set `create: true`"
            )
        if into == self.staging and self._columns_of(self.table):
            if self.options.mode == "replace":  # the table swapped in keeps the target's definition
                self._run(f"CREATE TABLE IF NOT EXISTS {self.staging} (LIKE {self.target} INCLUDING ALL)")
            else:  # merge: every version of a key, so no constraint or index of the target
                self._run(
                    f"CREATE TABLE IF NOT EXISTS {self.staging} (LIKE {self.target} INCLUDING DEFAULTS, "
                    "_etl_chunk integer, _etl_row bigint)"
                )
            return
        self._create_schema(self.schema)
        columns = [f"{quote(f.name)} {pg_type(f)}" for f in sample.schema]
        if self.options.mode == "merge" and into == self.target:
            columns.append(f"PRIMARY KEY ({', '.join(quote(k) for k in self.options.key or [])})")
        self._run(f"CREATE TABLE IF NOT EXISTS {into} ({', '.join(columns)})")
        if self.options.mode == "merge" and into == self.staging:
            self._create(self.target, sample.drop_columns([c for c in HELPERS if c in sample.schema.names]))

    # -- one chunk -----------------------------------------------------------------------------

    def write(self, chunk: Chunk, batches: Iterable[pa.RecordBatch]) -> int:
        self.con  # noqa: B018 - opens and sets up the connection
        into = self.target if self.options.mode == "append" else self.staging
        key = [self.context.run_id, chunk.index, self.options.table]
        self._raise_fence(chunk, key)
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return self._record(key, 0)
        if self.options.mode == "merge":
            first = _with_positions(first, chunk.index, 0)
        columns = self._ensure(into, first)
        try:
            done = self._ledger_rows(key)
            if done is not None:  # this chunk of this run is in already: write nothing twice
                self._rollback()
                return done
            written = self._copy(into, self._conformed(itertools.chain([first], batches), chunk, columns))
            # Commit only while this attempt is the newest: the row lock makes a newer attempt's
            # fence wait for this commit, and a newer fence already there refuses it.
            fence = self._run(
                f"SELECT attempt FROM {self.fence} WHERE run_id = %s AND chunk = %s AND target = %s FOR UPDATE", key
            )
            if not fence or fence[0][0] != chunk.attempt:
                raise Interrupted("lost")
            recorded = self._run(
                f"INSERT INTO {self.ledger} (run_id, chunk, target, rows) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING rows",
                [*key, written],
            )
            if not recorded:
                # Another attempt with this very token committed the chunk first (a Redis
                # failover undid the claim that raised the token, and the chunk was claimed
                # again): the ledger keeps it once.
                done = self._ledger_rows(key)
                self._rollback()
                return done or 0
            self._commit()
            return written
        except BaseException:
            self._rollback()
            raise

    def _ledger_rows(self, key: list[Any]) -> int | None:
        """The rows the ledger says this chunk wrote; ``None`` when it is not in."""
        done = self._run(f"SELECT rows FROM {self.ledger} WHERE run_id = %s AND chunk = %s AND target = %s", key)
        return int(done[0][0]) if done else None

    def _copy(self, into: str, batches: Iterator[pa.RecordBatch]) -> int:
        """Stream the batches into one binary COPY; the number of rows copied."""
        import psycopg
        from pgpq import ArrowToPostgresBinaryEncoder

        head = next(batches, None)
        if head is None:
            return 0
        names = ", ".join(quote(name) for name in head.schema.names)
        encoder = ArrowToPostgresBinaryEncoder.new_with_encoders(head.schema, _encoders(head.schema))
        rows = 0
        try:
            with self._con.cursor() as cur, cur.copy(f"COPY {into} ({names}) FROM STDIN (FORMAT binary)") as copy:
                copy.write(encoder.write_header())
                for batch in itertools.chain([head], batches):
                    copy.write(encoder.write_batch(batch))
                    rows += batch.num_rows
                copy.write(encoder.finish())
        except psycopg.Error as exc:
            raise classify(exc, f"{self.context.label}: COPY into {self.options.table}", self.server) from None
        return rows

    def _raise_fence(self, chunk: Chunk, key: list[Any]) -> None:
        """Record that ``chunk.attempt`` is writing the chunk, or refuse if a newer one is."""
        try:
            # Losing this commit in a crash only makes a newer attempt retry: no need to wait
            # for it to reach the disk (one fsync less per chunk).
            self._run("SET LOCAL synchronous_commit = off")
            rows = self._run(
                f"INSERT INTO {self.fence} (run_id, chunk, target, attempt) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (run_id, chunk, target) DO UPDATE SET attempt = GREATEST("
                f"{self.fence}.attempt, EXCLUDED.attempt) RETURNING attempt",
                [*key, chunk.attempt],
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise
        if rows and rows[0][0] > chunk.attempt:
            raise Interrupted("lost")

    def _record(self, key: list[Any], rows: int) -> int:
        """An empty chunk: only its ledger row."""
        try:
            self._run(
                f"INSERT INTO {self.ledger} (run_id, chunk, target, rows) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [*key, rows],
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return rows

    def _conformed(
        self, batches: Iterable[pa.RecordBatch], chunk: Chunk, columns: dict[str, str]
    ) -> Iterator[pa.RecordBatch]:
        """The batches converted to the table's column types; rejected rows left out."""
        written = 0
        for batch in batches:
            if self.options.mode == "merge" and written:
                batch = _with_positions(batch, chunk.index, written)
            written += batch.num_rows
            batch = self._convert(batch, columns)
            if batch.num_rows:
                yield batch

    def _convert(self, batch: pa.RecordBatch, columns: dict[str, str]) -> pa.RecordBatch:
        targets: dict[str, tuple[pa.DataType, str | None]] = {}
        checks: dict[str, Any] = {}
        for field in batch.schema:
            if field.name in HELPERS:
                continue
            declared = columns.get(field.name, "")
            target = arrow_type(declared)
            if target is None:
                raise PermanentError(
                    f"{self.context.label}: column {field.name!r} of {self.options.table} has type {declared}, "
                    "which the postgres sink can't load yet"
                )
            if isinstance(target, pa.JsonType):
                batch = _as_json(batch, field, binary_jsonb=declared.strip().lower() == "jsonb")
                continue
            unconstrained = declared.strip().lower() == "numeric"
            if unconstrained and pa.types.is_decimal(field.type):
                continue  # an unconstrained numeric column takes any decimal as it is
            if field.type != target:
                targets[field.name] = (target, None)
            if (check := _exactness(declared)) is not None:
                checks[field.name] = check
        received = batch
        batch, positions = self._refuse(batch)
        return cast_batch(batch, targets, self.context, received=received, positions=positions, checks=checks)

    def _refuse(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
        """Reject the rows PostgreSQL could not take as they are: a NULL merge key (it matches
        nothing, and would collapse with other NULL keys), text with a NUL character (it can't be
        stored, and would not be cut short). Returns what is left, and where each of its rows
        was in ``batch``."""
        received, positions = batch, np.arange(batch.num_rows)
        for key in self.options.key or []:
            if key not in received.schema.names:
                continue
            missing = pc.is_null(batch.column(key))
            if pc.any(missing).as_py():
                mask = missing.to_numpy(zero_copy_only=False)
                rows = positions[mask]
                self.context.reject(received.take(rows), rows.tolist(), "the merge key is NULL", column=key)
                batch, positions = batch.filter(pc.invert(missing)), positions[~mask]
        for field in received.schema:
            storage = field.type.storage_type if isinstance(field.type, pa.ExtensionType) else field.type
            if not (pa.types.is_string(storage) or pa.types.is_large_string(storage)):
                continue
            column = batch.column(field.name)
            values = column.storage if isinstance(column, pa.ExtensionArray) else column
            bad = pc.fill_null(pc.match_substring(values, "\x00"), False)
            if pc.any(bad).as_py():
                mask = bad.to_numpy(zero_copy_only=False)
                rows = positions[mask]
                self.context.reject(
                    received.take(rows),
                    rows.tolist(),
                    "text holds a NUL character (\\x00), which PostgreSQL text can't store",
                    column=field.name,
                )
                batch, positions = batch.filter(pc.invert(bad)), positions[~mask]
        return batch, positions

    # -- finalize and abort ---------------------------------------------------------------------

    def finalize(self) -> None:
        """Swap in or merge the staged rows, once (a second call finds the run marked done)."""
        self.con  # noqa: B018 - opens and sets up the connection
        key = [self.context.run_id, self.options.table]
        try:
            self._lock()
            if self._run(f"SELECT 1 FROM {self.finalized} WHERE run_id = %s AND target = %s", key):
                self._rollback()
                return
            staged = bool(self._columns_of(self.staging_name, refresh=True))
            if self.options.mode == "replace":
                self._swap(staged)
            elif self.options.mode == "merge" and staged:
                self._merge()
            for table in (self.ledger, self.fence):
                if self.options.mode != "append" or table == self.fence:
                    self._run(f"DELETE FROM {table} WHERE run_id = %s AND target = %s", key)
            self._run(f"INSERT INTO {self.finalized} (run_id, target) VALUES (%s, %s)", key)
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def _swap(self, staged: bool) -> None:
        exists = bool(self._columns_of(self.table, refresh=True))
        if not staged:  # the run had no rows: the table is emptied
            if exists:
                self._run(f"TRUNCATE {self.target}")
            return
        if exists:
            old = f"_etl_old_{self.staging_name[11:21]}_{self.table}"[:63]
            self._run(f"ALTER TABLE {self.target} RENAME TO {quote(old)}")
            self._run(f"ALTER TABLE {self.staging} RENAME TO {quote(self.table)}")
            self._run(f"DROP TABLE {qualified(self.schema, old)}")
        else:
            self._run(f"ALTER TABLE {self.staging} RENAME TO {quote(self.table)}")

    def _merge(self) -> None:
        key = self.options.key or []
        staged = [c for c in self._columns_of(self.staging_name) if c not in HELPERS]
        missing = [k for k in key if k not in staged]
        if missing:
            raise PermanentError(f"{self.context.label}: merge key {', '.join(missing)} is not in the rows")
        target_columns = self._columns_of(self.table, refresh=True)
        columns = [c for c in staged if c in target_columns]
        # One big sort-and-upsert: give it memory, so that it doesn't sort on disk in 4 MB pieces.
        self._run("SET LOCAL work_mem = '256MB'")
        names = ", ".join(quote(c) for c in columns)
        keys = ", ".join(quote(k) for k in key)
        latest = (
            f"SELECT DISTINCT ON ({keys}) {names} FROM {self.staging} ORDER BY {keys}, _etl_chunk DESC, _etl_row DESC"
        )
        others = [c for c in columns if c not in key]
        if self._unique_on(key):
            update = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in others)
            action = f"DO UPDATE SET {update}" if others else "DO NOTHING"
            self._run(f"INSERT INTO {self.target} ({names}) {latest} ON CONFLICT ({keys}) {action}")
        else:
            on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in key)
            update = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in others)
            matched = f"WHEN MATCHED THEN UPDATE SET {update} " if others else ""
            values = ", ".join(f"s.{quote(c)}" for c in columns)
            self._run(
                f"MERGE INTO {self.target} t USING ({latest}) s ON ({on}) {matched}"
                f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
            )
        self._run(f"DROP TABLE {self.staging}")

    def _unique_on(self, key: list[str]) -> bool:
        rows = self._run(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indisvalid AND i.indpred IS NULL "
            "GROUP BY i.indexrelid",
            [self.target],
        )
        return any(sorted(r[0]) == sorted(key) for r in rows)

    def abort(self) -> None:
        """A cancelled run: drop what it staged; appended chunks stay, with their ledger rows."""
        if self.options.mode == "append":
            return
        self.con  # noqa: B018
        key = [self.context.run_id, self.options.table]
        try:
            self._lock()
            self._run(f"DROP TABLE IF EXISTS {self.staging}")
            for table in (self.ledger, self.fence):
                self._run(f"DELETE FROM {table} WHERE run_id = %s AND target = %s", key)
            self._commit()
        except BaseException:
            self._rollback()
            raise


def _with_positions(batch: pa.RecordBatch, chunk: int, first: int) -> pa.RecordBatch:
    """The batch with the chunk index and row positions that decide which duplicate key wins."""
    n = batch.num_rows
    helpers = [pa.array(np.full(n, chunk, np.int32)), pa.array(np.arange(first, first + n, dtype=np.int64))]
    return pa.RecordBatch.from_arrays([*batch.columns, *helpers], names=[*batch.schema.names, *HELPERS])


def _encoders(schema: pa.Schema) -> dict[str, Any]:
    """pgpq's encoder for each column: inferred from its type, but JSON text for a jsonb column
    goes out in jsonb's binary form."""
    from pgpq import ArrowToPostgresBinaryEncoder
    from pgpq.encoders import StringEncoderBuilder
    from pgpq.schema import Jsonb

    return {
        field.name: StringEncoderBuilder.new_with_output(field, Jsonb())
        if field.metadata and field.metadata.get(b"etl:pg") == b"jsonb"
        else ArrowToPostgresBinaryEncoder.infer_encoder(field)
        for field in schema
    }


def _exactness(declared: str) -> Any:
    """What a column of type ``declared`` would still change in values of its Arrow type: the
    digits after the second beyond ``timestamp(p)``'s or ``time(p)``'s ``p`` (rounded), text
    longer than ``character varying(n)`` or ``character(n)`` (an error, or cut when the excess
    is spaces). ``None``: nothing."""
    text = declared.strip().lower()
    if digits := re.fullmatch(r"(timestamp|time)\((\d)\)( with(out)? time zone)?", text):
        return digits_after_the_second(int(digits[2]), declared)
    if length := re.fullmatch(r"(character varying|character)\((\d+)\)", text):
        return characters(int(length[2]), declared)
    return None


def _as_json(batch: pa.RecordBatch, field: pa.Field, binary_jsonb: bool) -> pa.RecordBatch:
    """A column for a json/jsonb column: JSON text (structs, maps and lists serialized), marked
    for the jsonb encoder."""
    column = batch.column(field.name)
    text_like = isinstance(field.type, pa.JsonType) or pa.types.is_string(field.type)
    if not text_like and not pa.types.is_large_string(field.type):
        import duckdb

        con = duckdb.connect(config={"threads": 1})
        try:
            con.register("batch", pa.table({"v": column}))
            column = con.execute("SELECT to_json(v)::VARCHAR FROM batch").to_arrow_table().column(0).combine_chunks()
        finally:
            con.close()
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    text = column.cast(pa.string())
    marked = pa.field(field.name, pa.string(), metadata={"etl:pg": "jsonb"} if binary_jsonb else None)
    return batch.set_column(batch.schema.get_field_index(field.name), marked, text)
