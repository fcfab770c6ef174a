"""Source ``bigquery``: a BigQuery table or query, read through the Storage Read API in Arrow.

Options:

* ``table: project.dataset.table`` (or ``dataset.table`` in the job's project), with
  ``columns`` (all by default) and ``row_filter`` (a condition, as in a WHERE clause). Or
  ``query:`` in GoogleSQL. Give one of ``table`` and ``query``.
* ``chunk_by``: a date/timestamp column sliced by ``every`` (``{column: ds, every: 1 day}``) or
  an integer column split into key ranges (``chunk_by: id``).
* ``project``, ``location``, ``credentials`` (a service-account key file; Application Default
  Credentials otherwise), ``api_endpoint`` and ``storage_endpoint`` (for an emulator).
* ``staging_dataset`` and ``staging_expiration``: where query results are written to be read.
* ``read_api``: ``storage`` (default; falls back to REST when the Storage API can't be had,
  such as with ``BIGQUERY_EMULATOR_HOST`` set and no Storage endpoint) or ``rest``.
* ``connect_timeout``, ``timeout``, ``statement_timeout``: how long calls wait (``_deadlines``).

The job's params are BigQuery named query parameters: ``@start_date`` in ``query`` (or in
``row_filter``) is the job's ``start_date`` param, typed from its value (a ``date`` param is a
DATE, an ``integer`` an INT64, ...), never text spliced into the SQL.

How rows are read:

* A ``table`` is read through one Storage Read API session, planned once: each of its read
  streams is a chunk (BigQuery is asked for rows / ``chunk_size`` streams and may give fewer),
  read by whichever worker takes it, and all of them see the table as it was when the session
  was made. ``columns`` and ``row_filter`` go to the session (only those columns, only those
  rows are read and billed). A stream read that breaks resumes from the row it reached (on
  Google's endpoint; an emulator's stream is read again whole, with its chunk).
* A ``query`` runs once, into a table of the staging dataset (``CREATE TABLE ... AS SELECT``,
  which expires after ``staging_expiration``); that table is then read as above. The query's
  bytes processed and billed are logged. The same run planning twice (the command line
  counting before the run) reuses the result instead of running the query again.
* ``chunk_by`` makes each chunk a slice of the column instead: for a ``table`` a read session
  restricted to the slice (all at the snapshot of the plan); for a ``query`` a query of its own
  (``SELECT * FROM (query) WHERE ds >= ... AND ds < ...``), written to the staging dataset and
  read from there. One query finds the column's range and the row count first. Slices start at
  the first value's day (or hour) and the first and last are open-ended; rows whose column is
  NULL are one more chunk.
* Without the Storage Read API (``read_api: rest``, the package missing, or the credentials
  lacking ``bigquery.readsessions.create``) rows are paged through REST (``tabledata.list``):
  chunks are row-offset ranges, ``chunk_by`` slices are queries; far slower, and said so in the
  log.

Counting (for the thresholds and the progress total) is as cheap as BigQuery allows: a table's
row count from its metadata; a ``row_filter`` costs a ``COUNT(*)`` query; a ``query``'s count
is its result table's; with ``chunk_by``, the query that finds the column's range counts too.

Incremental: with ``incremental: {cursor: updated_at}`` in the job, a run reads only the rows
of its window, ``updated_at > mark AND updated_at <= high`` (``>= initial`` for the first run),
where ``high`` is ``MAX(updated_at)`` when the run was planned: one query, over the table (with
``row_filter``) or the query. The cursor is a column of the table (read or not) or of the
query's result, of type INT64, NUMERIC, BIGNUMERIC, FLOAT64, DATE, DATETIME or TIMESTAMP. For a
``table``, the bounds join ``row_filter`` in the read session's row restriction, written as
literals of the cursor's type (a restriction takes no parameters; the values come from
BigQuery and the run store, never from the job's text), and the count is a ``COUNT(*)`` query
with them, the table's metadata counting every row. A ``query`` (or a ``row_filter`` with
params) is wrapped before it is written to the staging dataset, ``SELECT * FROM (query) WHERE
updated_at > @_etl_low AND updated_at <= @_etl_high``, the bounds bound as typed query
parameters; its staging table is named after the window too, so that a run planned again with
another window never reads what was staged for the first. ``chunk_by`` slices, and the query
that finds their range, cover the window's rows only.

Types (BigQuery → Arrow): INT64 int64, FLOAT64 float64, NUMERIC decimal128(38, 9) (or the
declared precision and scale), BIGNUMERIC decimal256(76, 38), BOOL bool, STRING string, BYTES
binary, DATE date32, TIME time64[us], DATETIME timestamp[us], TIMESTAMP timestamp[us, UTC],
JSON Arrow's JSON (text), GEOGRAPHY string (WKT), ARRAY list, STRUCT struct, RANGE struct of
start and end, INTERVAL month_day_nano_interval. Every chunk has the same schema.

Permissions: ``bigquery.jobs.create`` (queries, counts) in the job's project,
``bigquery.tables.getData`` on what is read, ``bigquery.readsessions.create`` for the Storage
Read API, and for queries ``bigquery.datasets.create`` (once) and ``bigquery.tables.create``
in the staging dataset.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
from loguru import logger

from etl import Chunk, PermanentError, Plan, RowCount, Source, StageOptions, Window, did_you_mean

from .._chunking import DAY, SliceBy, column_label, key_edges, slice_edges
from .._files import batches_of, schema_from_shared, schema_to_shared
from ._client import Clients, param_names, parameters, split_table
from ._source_conditions import _HIGH, _LOW, _condition, _typed, _window_conditions
from ._source_options import _IDENTIFIER, BigQuerySourceOptions
from ._source_queries import Queries
from ._source_rest import RestReads
from ._source_storage import StorageReads, _Denied
from ._source_types import arrow_schema, conform

_INTEGERS = {"INTEGER", "INT64"}
_TIMES = {"DATE", "DATETIME", "TIMESTAMP"}
#: The types an incremental cursor may have.
_CURSORS = _INTEGERS | _TIMES | {"NUMERIC", "BIGNUMERIC", "FLOAT", "FLOAT64"}


class BigQuerySource(Queries, StorageReads, RestReads, Source):
    """A BigQuery table or query: Storage Read API streams (or date slices) as chunks, in Arrow."""

    name = "bigquery"
    Options = BigQuerySourceOptions
    options: BigQuerySourceOptions
    incremental = True

    def __init__(self, options: BigQuerySourceOptions, context) -> None:
        super().__init__(options, context)
        self.label = context.label or "source"
        self.log = logger.bind(job=context.job, run=context.run_id)
        self.clients = Clients(options, self.log)
        # Keyed by the SQL they come from and the window: a window set later (an incremental
        # run's, fixed after cursor_high) is never answered from another's.
        self._stats: dict[tuple[str, str], tuple[Any, Any, int, int]] = {}
        self._staged: dict[tuple[str, str], Any] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._checked: Any = None
        self._location: str | None = options.location
        self._staging_ready = False
        self._api: str | None = None
        self._planned: pa.Schema | None = None

    @classmethod
    def check_cursor(cls, options: StageOptions, cursor: str) -> None:
        if not _IDENTIFIER.match(cursor):
            raise ValueError(
                f"{cursor!r} is not a column name; the cursor is a column of the table or of the query's result "
                "(letters, digits and underscores)"
            )

    def close(self) -> None:
        self.clients.close()

    # -- what is read ------------------------------------------------------------------------

    @property
    def table(self) -> str:
        """The table as project.dataset.table (the job's project when it names none); "" for a query."""
        if self.options.table is None:
            return ""
        project, dataset, table = split_table(self.options.table or "", self.clients.project)
        return f"{project}.{dataset}.{table}"

    @property
    def window(self) -> Window | None:
        """The incremental run's window, when there is one with rows to read."""
        window = self.context.window
        return window if window is not None and not window.empty else None

    @property
    def base_sql(self) -> str | None:
        """The query the rows come from, whatever the window; ``None`` when a table is read
        directly.

        A ``row_filter`` with parameters makes the table a query: the Storage Read API's row
        restriction takes no parameters, and parameters are never spliced into SQL text."""
        if self.options.query is not None:
            return re.sub(r"[\s;]*$", "", self.options.query.strip())
        if self.options.row_filter is not None and param_names(self.options.row_filter):
            return f"SELECT {self._columns()} FROM `{self.table}` WHERE {self.options.row_filter}"
        return None

    @property
    def sql(self) -> str | None:
        """The query the rows come from, limited to the incremental run's window (its bounds
        are the query parameters ``@_etl_low`` and ``@_etl_high``); ``None`` for a table read
        directly."""
        base, window = self.base_sql, self.window
        if base is None or window is None:
            return base
        conditions = " AND ".join(_window_conditions(window, literal=False))
        if self.options.query is not None:
            return f"SELECT * FROM (\n{base}\n) AS q\nWHERE {conditions}"
        return f"SELECT {self._columns()} FROM `{self.table}` WHERE ({self.options.row_filter}) AND {conditions}"

    def _columns(self) -> str:
        return ", ".join(f"`{c}`" for c in self.options.columns) if self.options.columns else "*"

    @property
    def restriction(self) -> str | None:
        """The row filter the Storage Read API applies to the table, if any: ``row_filter``, and
        the window's bounds written as literals (the row restriction takes no parameters)."""
        if self.base_sql is not None:
            return None
        parts = [self.options.row_filter] if self.options.row_filter is not None else []
        if (window := self.window) is not None:
            parts += _window_conditions(window, literal=True)
        if len(parts) <= 1:
            return parts[0] if parts else None
        return " AND ".join(f"({p})" for p in parts)

    def _key(self, sql: str) -> tuple[str, str]:
        """What a result of ``sql`` is cached by: the SQL, and the window its parameters hold."""
        window = self.window
        return sql, json.dumps(window.to_json(), sort_keys=True) if window is not None else ""

    def _params(self, sql: str) -> list[Any]:
        values = dict(self.context.params)
        if (window := self.window) is not None:
            values[_HIGH] = window.high
            if window.low is not None:
                values[_LOW] = window.low
        try:
            return parameters(sql, values)
        except PermanentError as exc:
            raise PermanentError(f"{self.label}: {exc}") from None

    # -- count -----------------------------------------------------------------------------------

    def cursor_high(self, cursor: str, above: Any = None) -> Any:
        """``MAX(cursor)`` over the table (with ``row_filter``) or the query, above the mark
        when there is one (so that a table partitioned on the cursor is read only where it
        could have grown), whatever the window."""
        field = self._cursor_field(cursor)
        c = f"`{field.name}`"
        conditions = [f"{c} > {_typed(above)}"] if above is not None else []
        if self.options.query is not None:
            where = f" WHERE {conditions[0]}" if conditions else ""
            sql = f"SELECT MAX({c}) FROM (\n{self.base_sql}\n) AS q{where}"
        else:
            if self.options.row_filter is not None:
                conditions.insert(0, f"({self.options.row_filter})")
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            sql = f"SELECT MAX({c}) FROM `{self.table}`{where}"
        high = self._rows(sql, f"finding the highest {field.name}")[0][0]
        if isinstance(high, float) and not math.isfinite(high):
            raise PermanentError(
                f"{self.label}: the incremental cursor {field.name!r} holds {high}; filter out NaN and infinities "
                "(in row_filter or the query)"
            )
        return high

    def _cursor_field(self, cursor: str) -> Any:
        """The cursor's column: one of the table's or the query's, of a type that can be a cursor."""
        if self.options.query is not None:
            fields, where = list(self._check().schema or []), "the query's result"
        else:
            fields, where = list(self._get_table(self.table).schema), f"table {self.table}"
        field = next((f for f in fields if f.name.lower() == cursor.lower()), None)
        if field is None:
            names = [f.name for f in fields]
            hint = did_you_mean(cursor, names) or f" (its columns: {', '.join(names)})"
            raise PermanentError(f"{self.label}: the incremental cursor {cursor!r} is not a column of {where}{hint}")
        kind = "ARRAY" if field.mode == "REPEATED" else field.field_type.upper()
        if kind not in _CURSORS:
            raise PermanentError(
                f"{self.label}: the incremental cursor {field.name!r} is {kind}; a cursor is a number, date or "
                "timestamp column (INT64, NUMERIC, BIGNUMERIC, FLOAT64, DATE, DATETIME or TIMESTAMP)"
            )
        return field

    def count(self) -> RowCount:
        if self.options.chunk_by is not None:
            return RowCount(self._column_stats()[2])
        if self.sql is not None:
            return RowCount(int(self._result().num_rows or 0))
        if self.restriction is not None:
            sql = f"SELECT COUNT(*) FROM `{self.table}` WHERE {self.restriction}"
            key = self._key(sql)
            if key not in self._counts:  # planning counts again: the query runs once
                self._counts[key] = int(self._rows(sql, "counting rows")[0][0])
            return RowCount(self._counts[key])
        table = self._get_table(self.table)
        rows, exact = int(table.num_rows or 0), True
        buffer = table.streaming_buffer
        if buffer is not None and buffer.estimated_rows:
            rows, exact = rows + int(buffer.estimated_rows), False
        return RowCount(rows, exact=exact)

    def _column_stats(self) -> tuple[Any, Any, int, int]:
        """The chunk_by column's minimum and maximum, the row count and the NULL count."""
        column = _column_of(self.options.chunk_by)
        c = f"`{column}`"
        source = f"(\n{self.sql}\n)" if self.sql is not None else f"`{self.table}`"
        where = f" WHERE {self.restriction}" if self.restriction is not None else ""
        sql = f"SELECT MIN({c}), MAX({c}), COUNT(*), COUNTIF({c} IS NULL) FROM {source} AS q{where}"
        key = self._key(sql)
        if key not in self._stats:
            low, high, rows, nulls = self._rows(sql, f"finding the range of {column}")[0]
            self._stats[key] = (low, high, int(rows), int(nulls))
        return self._stats[key]

    # -- plan ------------------------------------------------------------------------------------

    def output_schema(self) -> pa.Schema:
        """The table's columns (those read), from its metadata; a query's, from the table it
        is materialized into (or its dry run, with ``chunk_by``). Once: after :meth:`plan`, the
        schema it planned."""
        if self._planned is None:
            self._planned = arrow_schema(self._fields(), self.label)
        return self._planned

    def plan(self, chunk_size: int) -> Plan:
        fields = self._fields()
        target = self._planned = arrow_schema(fields, self.label)
        api = self._choose_api()
        shared: dict[str, Any] = {
            **schema_to_shared(target),
            "fields": [f.to_api_repr() for f in fields],
            "api": api,
        }
        chunk_by = self.options.chunk_by
        if chunk_by is not None:
            chunks = self._by_column(fields, chunk_by, chunk_size)
            if self.sql is None and api == "storage":
                shared["snapshot"] = dt.datetime.now(dt.UTC).isoformat()
        else:
            table, restricted = self.table, True
            if self.sql is not None:
                table, restricted = _name(self._result()), False
            chunks = None
            if api == "storage":
                try:
                    chunks, session = self._streams(table, chunk_size, restricted=restricted)
                    shared.update(session)
                except _Denied as exc:
                    self.log.warning("BigQuery: {}; reading through REST pages, far slower", exc)
                    api = shared["api"] = "rest"
            if chunks is None:
                if restricted and self.restriction is not None:  # REST pages can't filter: a query can
                    sql = f"SELECT {self._columns()} FROM `{self.table}` WHERE {self.restriction}"
                    table, restricted = _name(self._materialize(sql, "row_filter", "filtering rows")), False
                chunks = self._row_ranges(table, chunk_size)
            shared["table"] = table
        return Plan(
            [Chunk(index=i, rows=c.pop("rows", None), args=c, label=_label(c)) for i, c in enumerate(chunks)], shared
        )

    def _fields(self) -> list[Any]:
        """The BigQuery schema of the rows read."""
        if self.sql is not None:
            if self.options.chunk_by is None:
                return list(self._result().schema)
            return list(self._check().schema)
        fields = list(self._get_table(self.table).schema)
        if self.options.columns is None:
            return fields
        by_name = {f.name.lower(): f for f in fields}
        chosen = []
        for name in self.options.columns:
            found = by_name.get(name.lower())
            if found is None:
                hint = did_you_mean(name, [f.name for f in fields]) or f" (its columns: {', '.join(by_name)})"
                raise PermanentError(f"{self.label}: table {self.table} has no column {name!r}{hint}")
            chosen.append(found)
        return chosen

    def _choose_api(self) -> str:
        """``storage`` when the Storage Read API can be had, else ``rest`` (said in the log)."""
        if self._api is None:
            self._api = "rest"
            if self.options.read_api == "storage":
                missing = self.clients.storage_missing()
                if missing is not None:
                    self.log.warning("BigQuery: {}; reading through REST pages, far slower", missing)
                else:
                    self._api = "storage"
        return self._api

    def _by_column(self, fields: Sequence[Any], chunk_by: str | SliceBy, chunk_size: int) -> list[dict[str, Any]]:
        column = _column_of(chunk_by)
        field = next((f for f in fields if f.name.lower() == column.lower()), None)
        if field is None:
            hint = (
                did_you_mean(column, [f.name for f in fields]) or f" (the columns: {', '.join(f.name for f in fields)})"
            )
            raise PermanentError(f"{self.label}: chunk_by column {column!r} is not among the columns read{hint}")
        kind = field.field_type.upper()
        if field.mode == "REPEATED":
            kind = "ARRAY"
        low, high, rows, nulls = self._column_stats()
        chunks: list[dict[str, Any]] = []
        if isinstance(chunk_by, SliceBy):
            if kind not in _TIMES:
                raise PermanentError(
                    f"{self.label}: chunk_by column {column!r} is {kind}; slices need a DATE, DATETIME or TIMESTAMP "
                    "column (for integers, chunk_by: column)"
                )
            if kind == "DATE" and chunk_by.seconds % DAY:
                raise PermanentError(f"{self.label}: chunk_by column {column!r} is a DATE; `every` must be whole days")
            edges = slice_edges(low, high, chunk_by.seconds) if low is not None else [None, None]
            chunks = [
                {"kind": "slice", "column": field.name, "type": kind, "lo": edges[i], "hi": edges[i + 1]}
                for i in range(len(edges) - 1)
            ]
        else:
            if kind not in _INTEGERS:
                hint = " (for dates, chunk_by: {column: ..., every: 1 day})" if kind in _TIMES else ""
                raise PermanentError(
                    f"{self.label}: chunk_by column {column!r} is {kind}; key ranges need an INT64 column{hint}"
                )
            if rows - nulls:
                edges = key_edges(low, high, rows - nulls, chunk_size)
                chunks = [
                    {"kind": "range", "column": field.name, "type": kind, "lo": edges[i], "hi": edges[i + 1]}
                    for i in range(len(edges) - 1)
                ]
        if nulls:
            chunks.append({"kind": "null", "column": field.name, "rows": nulls})
        if len(chunks) == 1 and chunks[0]["kind"] != "null":
            chunks[0]["rows"] = rows
        return chunks

    # -- read ------------------------------------------------------------------------------------

    def read(self, chunk: Chunk, shared: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
        target = schema_from_shared(shared)
        kinds = [str(f.get("type", "")).upper() for f in shared.get("fields", [])]
        size = max(1, int(self.context.batch_size))
        kind = chunk.args.get("kind")
        if kind == "stream":
            schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(shared["arrow_schema"])))
            batches = self._read_stream(str(chunk.args["stream"]), schema)
        elif kind == "rows":
            batches = self._read_rows(str(shared["table"]), chunk.args, size)
        else:
            batches = self._read_slice(chunk, shared, size)
        for batch in batches:
            for piece in batches_of(batch, size):
                if piece.num_rows:
                    yield conform(piece, target, kinds, self.label)

    def _read_slice(self, chunk: Chunk, shared: Mapping[str, Any], size: int) -> Iterator[pa.RecordBatch]:
        condition = _condition(chunk.args)
        if shared.get("api") == "rest":
            source = f"(\n{self.sql}\n)" if self.sql is not None else f"`{self.table}`"
            extra = f" AND ({self.restriction})" if self.restriction is not None else ""
            columns = "*" if self.sql is not None else self._columns()
            job = self._query(f"SELECT {columns} FROM {source} AS q WHERE {condition}{extra}", what=chunk.label)
            with self.clients.call(f"{self.label}: paging {chunk.label} through REST") as retry:
                yield from job.result(page_size=size, retry=retry).to_arrow_iterable(bqstorage_client=None)
            return
        if self.sql is None:
            restriction = f"({condition}) AND ({self.restriction})" if self.restriction is not None else condition
            session = self._session(self.table, restriction=restriction, streams=1, snapshot=shared.get("snapshot"))
        else:
            sql = f"SELECT * FROM (\n{self.sql}\n) AS q WHERE {condition}"
            staged = self._materialize(sql, f"chunk {chunk.index}", chunk.label)
            session = self._session(_name(staged), restriction=None, streams=1)
        if not session.streams:
            return
        schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))
        for stream in session.streams:
            yield from self._read_stream(stream.name, schema)


def _name(table: Any) -> str:
    ref = table.reference
    return f"{ref.project}.{ref.dataset_id}.{ref.table_id}"


# -- chunks ----------------------------------------------------------------------------------------


def _column_of(chunk_by: Any) -> str:
    return chunk_by.column if isinstance(chunk_by, SliceBy) else str(chunk_by)


def _label(args: Mapping[str, Any]) -> str:
    kind = args.get("kind")
    if kind == "stream":
        return f"stream {str(args['stream']).rsplit('/', 1)[-1]}"
    if kind == "rows":
        stop = args.get("stop")
        return f"rows {args['start']}-{stop - 1}" if stop is not None else f"rows {args['start']}-"
    return column_label(args)
