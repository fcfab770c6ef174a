"""Source ``postgres``: the rows of a PostgreSQL query or table, streamed as Arrow batches.

Options:

* ``query``: any ``SELECT`` (a ``WITH`` query, a join, a view, ...). Or ``table``: a table
  (``schema.table``, or in ``public``), with ``columns`` (all of them by default) and a
  ``where`` condition. Give one of ``query`` and ``table``.
* ``chunk_by``: how the rows are split into chunks that workers read in parallel (below).
* ``dsn``: the server, as a libpq URI; without it the ``PG*`` environment variables are used.

Job parameters are bound as values, never spliced into the SQL: ``$since`` in ``query`` or
``where`` is the job's ``since`` parameter, sent to the server as a typed query parameter (a
``date`` parameter is a PostgreSQL ``date``, an ``integer`` a ``bigint``, a ``string``
``text``; cast where the server can't tell, e.g. ``$since::timestamptz``). The same name used
twice is one parameter. ``$name`` inside a string literal, a quoted identifier, a comment or a
dollar-quoted string is left alone; positional parameters (``$1``) are refused.

Chunks:

* ``chunk_by: id`` (a numeric column): one query finds its min, max and count; the key range is
  split into equal-width integer ranges, as many as rows / ``chunk_size``. The first range is
  open below and the last open above, so every row is in exactly one chunk; rows whose key is
  NULL form one more chunk. Skewed keys give uneven chunks (the ranges are equal in width, not
  in rows). An index on the column, or a condition the server can push into the query, keeps
  each chunk's query cheap.
* ``chunk_by: {column: ds, every: 1 day}`` (a date or timestamp column): slices of ``every``
  (whole days or hours: ``1 day``, ``7 days``, ``6 hours``, ``12h``), from the start of the
  first value's day (in UTC for timestamptz) or hour to past the last value, plus a NULL chunk.
  The first slice is open below and the last open above.
* ``table`` without ``chunk_by``: chunks are ranges of the table's physical blocks, read by
  TID range scans (``ctid >= '(b0,0)' AND ctid < '(b1,0)'``, fast on PostgreSQL 14+), sized from
  the table's rows per block (from its statistics; a table never analyzed has its first blocks
  counted). The last range is open-ended, so rows written into new blocks after planning are
  still read. A partitioned (or inherited) table is chunked partition by partition, each chunk
  read ``FROM ONLY`` its partition (so the role needs SELECT on the partitions). A view, a
  foreign table, or a server older than 14 is read as one chunk.
* ``query`` without ``chunk_by``: one chunk. Add ``chunk_by`` to read it in parallel.

Incremental: with ``incremental: {cursor: updated_at}`` in the job, every statement (the count,
the plan's queries, each chunk's read) is limited to the run's window, ``updated_at > mark AND
updated_at <= high``, where ``high`` is ``max(updated_at)`` when the run was planned. The cursor
is a column of the table or the query's result: a number, date or timestamp.

Types: each column keeps the Arrow type the ADBC driver reads it as (smallint int16, integer
int32, bigint int64, real float32, double float64, boolean, text/varchar string, bytea binary,
date date32, time time64[us], timestamp timestamp[us], timestamptz timestamp[us, UTC], arrays
lists, interval month_day_nano), decided once at plan time so that every chunk has the same
schema, except: ``numeric(p, s)`` becomes ``decimal128(p, s)`` (``decimal256`` above 38
digits); an unconstrained ``numeric`` (and ``money``) is read as its exact text, never rounded
to a float; ``json`` and ``jsonb`` as text; ``oid`` as int64; uuid, enums, inet, xml, ranges,
geometric and other types the driver has no Arrow type for, and arrays of them, as text. A
``numeric(p, s)`` holding NaN is an error naming the column (cast it to text in the query).
The driver reads ``infinity`` dates and timestamps as out-of-range values: filter them out or
cast them to text in the query.

Memory: rows are streamed from the server (binary COPY; with job parameters, a server-side
cursor fetched ``batch_size`` rows at a time) and yielded in batches of at most the job's
``batch_size`` rows, so a chunk of any size is read in bounded memory.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from decimal import Decimal
from typing import Any

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator, model_validator

from etl import Chunk, PermanentError, Plan, RowCount, Source, Window, did_you_mean

from .._chunking import DAY, SliceBy, column_label, key_edges, parse_chunk_by, slice_edges
from .._files import batches_of, schema_from_shared, schema_to_shared
from ._common import ConnectionOptions, Server, classify, column_plan, connect, qualified, quote, split_table
from ._params import check_sql, positional

#: Marks an option that holds SQL: `{{ params.X }}` templates are refused there.
SQL = {"sql": True}


class PostgresSourceOptions(ConnectionOptions):
    query: str | None = Field(
        None,
        description="a SELECT whose rows are read; `$name` is the job's param `name`, bound as a value",
        examples=["SELECT * FROM sales.orders WHERE created_at >= $since"],
        json_schema_extra=SQL,
    )
    table: str | None = Field(
        None,
        description="a table to read (schema.table, or in public), instead of `query`",
        examples=["sales.orders"],
    )
    columns: list[str] | None = Field(
        None, min_length=1, description="with `table`: the columns to read (all by default)", examples=[["id", "ds"]]
    )
    where: str | None = Field(
        None,
        description="with `table`: a SQL condition the rows must meet; `$name` is the job's param `name`",
        examples=["ds >= $since"],
        json_schema_extra=SQL,
    )
    chunk_by: str | SliceBy | None = Field(
        None,
        description="a numeric column to split into key ranges, or {column, every} for slices of a date or "
        "timestamp column; without it a table is chunked by block ranges and a query is one chunk",
        examples=["id", {"column": "ds", "every": "1 day"}],
    )

    @field_validator("query", "where")
    @classmethod
    def _sql(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_sql(value, info)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None:
            split_table(value)
        return value

    @field_validator("chunk_by", mode="before")
    @classmethod
    def _chunk_by(cls, value: Any) -> Any:
        return parse_chunk_by(value)

    @model_validator(mode="after")
    def _one_of(self) -> PostgresSourceOptions:
        if (self.query is None) == (self.table is None):
            raise ValueError("give `query` or `table`, one of them")
        if self.query is not None and (self.columns is not None or self.where is not None):
            raise ValueError("`columns` and `where` go with `table`; with `query`, write them in the query")
        return self


_CASTS = {None, "text", "text[]", "numeric::text", "bigint"}
_INTEGERS = {"int2", "int4", "int8"}
_NUMBERS = _INTEGERS | {"numeric", "float4", "float8"}
_TIMES = {"date", "timestamp", "timestamptz"}
#: How many blocks of a table never analyzed are counted to learn its rows per block.
_SAMPLE_BLOCKS = 64


# -- the source -----------------------------------------------------------------------------------


class PostgresSource(Source):
    """A PostgreSQL query or table, streamed by ADBC; parallel by key ranges, date slices or blocks."""

    name = "postgres"
    Options = PostgresSourceOptions
    options: PostgresSourceOptions
    incremental = True

    def __init__(self, options: PostgresSourceOptions, context) -> None:
        super().__init__(options, context)
        self.label = context.label or "source"
        positions: dict[str, int] = {}
        if options.query is not None:
            self.query = positional(re.sub(r"[\s;]*$", "", options.query.strip()), positions)
            self.where = None
            self.what = "the query"
            self.schema_name = self.table_name = ""
        else:
            self.query = None
            self.where = positional(options.where, positions) if options.where is not None else None
            self.schema_name, self.table_name = split_table(options.table or "")
            self.what = f"table {options.table}"
        self.params = self._bind(list(positions), context.params)
        # The connection kept between statements; closed by close(), or when the source is
        # collected without it (a driver connection left open warns).
        self._idle = _Idle()
        self._planned: pa.Schema | None = None
        weakref.finalize(self, self._idle.close)

    def _bind(self, names: list[str], params: Mapping[str, Any]) -> list[Any]:
        for name in names:
            if name not in params:
                hint = did_you_mean(name, params) or (f"; the job's params: {', '.join(params)}" if params else "")
                raise PermanentError(f"{self.label}: ${name} is not a parameter of the job{hint}")
        return [params[name] for name in names]

    # -- connection and statements --------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection for one statement or one read; kept for the next when used up cleanly."""
        con = self._idle.take()
        if con is None:
            con = connect(self.server, self.label)
        clean = False
        try:
            yield con
            clean = True
        finally:
            if clean:
                try:
                    con.rollback()  # ends the read's transaction: nothing is held between reads
                except Exception:
                    clean = False
            if not (clean and self._idle.keep(con)):
                _close(con)

    @functools.cached_property
    def server(self) -> Server:
        """The server, and the deadlines of each connection to it (read when first connecting:
        a worker's own environment)."""
        return Server.of(self.options)

    def close(self) -> None:
        self._idle.close()

    def _fetch(self, sql: str, params: Sequence[Any] | None = None, *, schema: bool = False) -> Any:
        """The rows of a small query (the job's params bound unless ``params`` are given), or
        with ``schema``, the Arrow schema of its result."""
        import adbc_driver_manager

        with self._connection() as con, con.cursor() as cur:
            try:
                cur.execute(sql, list(self.params if params is None else params) or None)
                return cur.fetch_arrow_table().schema if schema else cur.fetchall()
            except adbc_driver_manager.Error as exc:
                raise classify(exc, f"{self.label}: reading {self.what}", self.server) from None

    def _probe(self) -> pa.Schema:
        """The result's columns (with the driver's type metadata), from a query of no rows."""
        columns = ", ".join(quote(c) for c in self.options.columns) if self.options.columns else "*"
        return self._fetch(self._select(columns, ["false"]), schema=True)

    def _select(self, columns: str, conditions: Sequence[str] = (), relation: str | None = None) -> str:
        """``SELECT columns`` from the query or table, where the conditions (and ``where``, and
        an incremental run's window) hold."""
        window = self.context.window
        if window is not None and not window.empty:
            conditions = [*conditions, *_window_conditions(window)]
        if self.query is not None:
            sql = f"SELECT {columns} FROM (\n{self.query}\n) AS q"
            found = list(conditions)
        else:
            target = relation or qualified(self.schema_name, self.table_name)
            sql = f"SELECT {columns} FROM {target} AS {quote(self.table_name)}"
            found = ([f"(\n{self.where}\n)"] if self.where is not None else []) + list(conditions)
        return sql + (" WHERE " + " AND ".join(found) if found else "")

    # -- count and plan ---------------------------------------------------------------------------

    def cursor_high(self, cursor: str, above: Any = None) -> Any:
        conditions = [f"{quote(cursor)} > {_typed(above)}"] if above is not None else []
        return self._fetch(self._select(f"max({quote(cursor)})", conditions))[0][0]

    def count(self) -> RowCount:
        rows = self._fetch(self._select("count(*)"))
        return RowCount(int(rows[0][0]), exact=True)

    def _columns_read(self) -> tuple[list[dict[str, Any]], pa.Schema]:
        """Each column read (its name, Arrow type and the cast it is read with) and the
        schema of the batches, from a query of no rows."""
        schema = self._probe()
        names = schema.names
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise PermanentError(
                f"{self.label}: {self.what} returns column {', '.join(map(repr, twice))} more than once; "
                "give each column its own name (AS ...)"
            )
        columns = [{"name": f.name, **column_plan(f)} for f in schema]
        self._planned = pa.schema([pa.field(c["name"], c["arrow"]) for c in columns])
        return columns, self._planned

    def output_schema(self) -> pa.Schema:
        """The columns of the query or table, from a query of no rows (once: after :meth:`plan`,
        the schema it planned)."""
        return self._planned if self._planned is not None else self._columns_read()[1]

    def plan(self, chunk_size: int) -> Plan:
        columns, target = self._columns_read()
        names = target.names
        shared = {
            **schema_to_shared(target),
            "columns": [{**c, "arrow": str(c["arrow"])} for c in columns],
        }
        chunk_by = self.options.chunk_by
        if chunk_by is None:
            chunks = self._blocks(chunk_size) if self.table_name else [{"kind": "all"}]
        else:
            column = chunk_by.column if isinstance(chunk_by, SliceBy) else chunk_by
            found = next((c for c in columns if c["name"] == column), None)
            if found is None:
                hint = did_you_mean(column, names) or f" (the columns: {', '.join(names)})"
                raise PermanentError(f"{self.label}: chunk_by column {column!r} is not among the columns read{hint}")
            if isinstance(chunk_by, SliceBy):
                chunks = self._slices(column, found["pg_type"], chunk_by.seconds)
            else:
                chunks = self._ranges(column, found["pg_type"], chunk_size)
        return Plan(
            [
                Chunk(index=i, rows=None, args=args, label=_label(args, (self.schema_name, self.table_name)))
                for i, args in enumerate(chunks)
            ],
            shared=shared,
        )

    def _ranges(self, column: str, pg_type: str, chunk_size: int) -> list[dict[str, Any]]:
        kind = pg_type.split("(")[0]
        if kind not in _NUMBERS:
            hint = " (for a date or timestamp, chunk_by: {column: ..., every: 1 day})" if kind in _TIMES else ""
            raise PermanentError(
                f"{self.label}: chunk_by column {column!r} is {pg_type or 'not a number'}; key ranges need an "
                f"integer or numeric column{hint}"
            )
        c = quote(column)
        low, high, rows, nulls = self._fetch(
            self._select(f"min({c})::text, max({c})::text, count({c}), count(*) - count({c})")
        )[0]
        chunks: list[dict[str, Any]] = []
        if rows:
            try:
                edges = key_edges(low, high, int(rows), chunk_size)
            except ValueError:
                raise PermanentError(
                    f"{self.label}: chunk_by column {column!r} holds {low} .. {high}; key ranges need finite "
                    "numbers (filter out NaN and Infinity, or chunk by another column)"
                ) from None
            chunks = [
                {"kind": "range", "column": column, "lo": edges[i], "hi": edges[i + 1]} for i in range(len(edges) - 1)
            ]
        if nulls:
            chunks.append({"kind": "null", "column": column})
        return chunks

    def _slices(self, column: str, pg_type: str, seconds: int) -> list[dict[str, Any]]:
        if pg_type not in _TIMES:
            raise PermanentError(
                f"{self.label}: chunk_by column {column!r} is {pg_type or 'not a date'}; slices need a date, "
                "timestamp or timestamptz column (for numbers, chunk_by: column)"
            )
        if pg_type == "date" and seconds % DAY:
            raise PermanentError(f"{self.label}: chunk_by column {column!r} is a date; `every` must be whole days")
        c = quote(column)
        low, high, nulls = self._fetch(
            self._select(
                f"min({c}) FILTER (WHERE isfinite({c})), max({c}) FILTER (WHERE isfinite({c})), "
                f"count(*) FILTER (WHERE {c} IS NULL)"
            )
        )[0]
        chunks: list[dict[str, Any]] = []
        if low is not None:
            edges = slice_edges(low, high, seconds)
            chunks = [
                {"kind": "slice", "column": column, "type": pg_type, "lo": edges[i], "hi": edges[i + 1]}
                for i in range(len(edges) - 1)
            ]
        else:
            # Only NULLs and infinities (or no rows): one chunk for the non-NULL ones, if any.
            chunks = [{"kind": "slice", "column": column, "type": pg_type, "lo": None, "hi": None}]
        if nulls:
            chunks.append({"kind": "null", "column": column})
        return chunks

    def _blocks(self, chunk_size: int) -> list[dict[str, Any]]:
        """Block ranges of the table (of each of its partitions), or one chunk when ctid can't be used."""
        rows = self._fetch(
            "WITH RECURSIVE tree(oid) AS (SELECT $1::regclass::oid UNION ALL "
            "SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid) "
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpages::bigint, c.reltuples::float8, "
            "pg_relation_size(c.oid) / current_setting('block_size')::bigint, "
            "current_setting('server_version_num')::int "
            "FROM tree JOIN pg_class c ON c.oid = tree.oid JOIN pg_namespace n ON n.oid = c.relnamespace",
            [qualified(self.schema_name, self.table_name)],
        )
        kinds = {r[2] for r in rows}
        if not rows or rows[0][6] < 140_000 or kinds - {"r", "p", "m"}:
            return [{"kind": "all"}]  # a view or foreign table, or no TID range scans before 14
        chunks = []
        for schema, table, kind, pages, tuples, blocks, _ in rows:
            if kind == "p":
                continue  # a partitioned table holds no rows of its own
            per_block = tuples / pages if pages > 0 and tuples >= 0 else None
            if per_block is None and blocks > 0:  # never analyzed: count the rows of its first blocks
                sample = min(blocks, _SAMPLE_BLOCKS)
                found = self._fetch(
                    f"SELECT count(*) FROM ONLY {qualified(schema, table)} WHERE ctid < '({sample},0)'::tid", []
                )
                per_block = int(found[0][0]) / sample
            step = max(1, int(chunk_size / per_block)) if per_block else max(1, blocks)
            starts = list(range(0, blocks, step)) or [0]
            for i, first in enumerate(starts):
                stop = starts[i + 1] if i + 1 < len(starts) else None  # the last is open-ended
                chunks.append({"kind": "blocks", "relation": [schema, table], "first": first, "stop": stop})
        return chunks or [{"kind": "all"}]

    # -- read ------------------------------------------------------------------------------------

    def read(self, chunk: Chunk, shared: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
        target = schema_from_shared(shared)
        columns = ", ".join(_expression(c) for c in shared["columns"])
        condition, relation = _condition(chunk.args)
        sql = self._select(columns, [condition] if condition else [], relation)
        size = max(1, int(self.context.batch_size))
        stream = self._cursor_stream(sql, size) if self.params else self._copy_stream(sql)
        for batch in stream:
            for piece in batches_of(batch, size):
                if piece.num_rows:
                    yield self._conform(piece, target)

    def _copy_stream(self, sql: str) -> Iterator[pa.RecordBatch]:
        """The rows by binary COPY, streamed in batches of the driver's size (about 16 MB)."""
        import adbc_driver_manager

        with self._connection() as con, con.cursor() as cur:
            reader = None
            try:
                cur.execute(sql)
                reader = cur.fetch_record_batch()
                yield from reader
            except (adbc_driver_manager.Error, pa.ArrowException, OSError) as exc:
                raise classify(exc, f"{self.label}: reading {self.what}", self.server) from None
            finally:
                if reader is not None:
                    reader.close()

    def _cursor_stream(self, sql: str, size: int) -> Iterator[pa.RecordBatch]:
        """The rows through a server-side cursor, ``size`` at a time.

        The driver reads a query with bound parameters in one piece (not by COPY, which takes no
        parameters), so the query is declared as a cursor with its parameters instead, and each
        FETCH (with no parameters) is read on its own."""
        import adbc_driver_manager

        with self._connection() as con, con.cursor() as cur:
            try:
                cur.execute(f"DECLARE etl_source NO SCROLL CURSOR FOR {sql}", self.params)
                cur.adbc_statement.set_options(**{"adbc.postgresql.use_copy": "false"})
                while True:
                    cur.execute(f"FETCH FORWARD {size} FROM etl_source")
                    table = cur.fetch_arrow_table()
                    if not table.num_rows:
                        return
                    yield from table.to_batches()
            except (adbc_driver_manager.Error, pa.ArrowException, OSError) as exc:
                raise classify(exc, f"{self.label}: reading {self.what}", self.server) from None

    def _conform(self, batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
        """The batch in the planned types (the same in every chunk): numerics as decimals."""
        arrays = []
        for i, field in enumerate(target):
            column = batch.column(i)
            if column.type != field.type:
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise PermanentError(
                        f"{self.label}: column {field.name!r} holds a value that {field.type} can't hold "
                        f"({exc}); cast it in the query, e.g. {field.name}::text"
                    ) from None
            arrays.append(column)
        return pa.RecordBatch.from_arrays(arrays, schema=target)


def _expression(column: Mapping[str, Any]) -> str:
    name, cast = quote(str(column["name"])), column.get("cast")
    if cast not in _CASTS:
        raise PermanentError(f"unknown cast {cast!r} in the plan")
    return f"{name}::{cast} AS {name}" if cast else name


def _literal(value: Any, pg_type: str) -> str:
    """A chunk bound as SQL text: an integer, or a date/time re-read from ISO 8601 (never user text)."""
    if pg_type == "date":
        return f"'{dt.date.fromisoformat(value).isoformat()}'::date"
    if pg_type in ("timestamp", "timestamptz"):
        return f"'{dt.datetime.fromisoformat(value).isoformat()}'::{pg_type}"
    return str(int(value))


def _window_conditions(window: Window) -> list[str]:
    """An incremental run's bounds in SQL, its values written from their types (never text
    taken from a job)."""
    column = quote(window.cursor)
    found = [f"{column} <= {_typed(window.high)}"]
    if window.low is not None:
        found.append(f"{column} {'>=' if window.low_inclusive else '>'} {_typed(window.low)}")
    return found


def _typed(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return f"'{value.isoformat()}'::{'timestamptz' if value.tzinfo is not None else 'timestamp'}"
    if isinstance(value, dt.date):
        return f"'{value.isoformat()}'::date"
    if isinstance(value, bool):
        raise PermanentError("a boolean column can't be an incremental cursor")
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal | float):
        return f"'{Decimal(str(value))}'::numeric"
    return "'" + str(value).replace("'", "''") + "'"


def _condition(args: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The chunk's condition in SQL, and the relation it reads (for a partition's blocks)."""
    kind = args.get("kind", "all")
    if kind == "all":
        return None, None
    if kind == "blocks":
        schema, table = args["relation"]
        first, stop = int(args["first"]), args.get("stop")
        condition = f"ctid >= '({first},0)'::tid"
        if stop is not None:
            condition += f" AND ctid < '({int(stop)},0)'::tid"
        return condition, f"ONLY {qualified(schema, table)}"
    column = quote(str(args["column"]))
    if kind == "null":
        return f"{column} IS NULL", None
    pg_type = str(args.get("type", ""))
    parts = []
    if args.get("lo") is not None:
        parts.append(f"{column} >= {_literal(args['lo'], pg_type)}")
    if args.get("hi") is not None:
        parts.append(f"{column} < {_literal(args['hi'], pg_type)}")
    return (" AND ".join(parts) if parts else f"{column} IS NOT NULL"), None


def _label(args: Mapping[str, Any], table: tuple[str, str]) -> str:
    kind = args.get("kind")
    if kind == "all":
        return "all rows"
    if kind == "blocks":
        stop = args.get("stop")
        blocks = f"blocks {args['first']}-{stop - 1}" if stop is not None else f"blocks {args['first']}-"
        return blocks if args["relation"] == list(table) else f"{'.'.join(args['relation'])} {blocks}"
    return column_label(args)


class _Idle:
    """At most one idle connection, for the next statement."""

    def __init__(self) -> None:
        self.con: Any = None

    def take(self) -> Any:
        con, self.con = self.con, None
        return con

    def keep(self, con: Any) -> bool:
        if self.con is not None:
            return False
        self.con = con
        return True

    def close(self) -> None:
        con = self.take()
        if con is not None:
            _close(con)


def _close(con: Any) -> None:
    with suppress(Exception):
        con.close()
