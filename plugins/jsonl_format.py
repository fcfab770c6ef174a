"""Source and sink ``jsonl``: JSON Lines files, one JSON object per line.

**Source.** ``path`` is a file, a glob (``events/*.jsonl``, ``logs/**/*.ndjson``) or a
directory (its ``*.jsonl``, ``*.ndjson`` and ``*.json`` files), read in sorted order. Each file
is cut into byte ranges of about ``chunk_size`` rows, planned from a sample of its first
megabyte (a JSON line never holds a raw newline, so every cut at a line end is safe); a chunk
reads the lines that start inside its range. Blank lines hold no row. ``count`` is exact: it
counts the non-blank lines, in large binary blocks, without parsing.

The columns and their types are inferred once, from the first megabyte of each file, and
every chunk is parsed with them: numbers, booleans, text, lists and objects as JSON has them;
text that is always an ISO date (``2026-05-01``) becomes a date, and text that is always an
ISO timestamp becomes a timestamp, in UTC when it carries a zone (``Z``, ``+02:00``). A
field NULL in every sampled row is text. Files whose fields differ are read together (a row
lacking a field has NULL there); a field that two files type differently is an error.

A field that first appears after the sample, or a value that doesn't fit its column's type,
is an error naming the file and where; nothing is dropped or changed silently. Dates, times
and timestamps are read as text and converted by the casting rules of the ``cast``
transform (a timestamp with an offset in a column without a zone is an error); JSON numbers
are the nearest float64, as JSON parsers read them, or exact in a declared decimal. Declare such
columns with ``schema:`` (``{amount: float64, code: string, day: date}``).

Incremental: with ``incremental: {cursor: mtime}`` in the job, each run reads only the files
modified since the last completed run (their modification time, in UTC to the microsecond),
up to the newest one when the run was planned; see :class:`._files.FileSource`.

**Sink.** ``path`` is a directory; each chunk becomes a part file
``part-<run_id>-<chunk>.jsonl`` in it, written by DuckDB straight from the Arrow batches.
Dates are ``2026-05-01``; timestamps are ISO 8601 (``2026-05-01T08:30:00.000000Z`` for a
timestamp with a zone, in UTC). ``mode: append`` adds a run's parts to the directory; ``mode:
replace`` writes them into a hidden staging directory beside it and swaps it in when the run
completes (readers see the old directory until then; for an instant between two renames, no
directory). The parts of an append run that fails stay (each holds a whole chunk); a replace
run that fails leaves the directory as it was.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from etl import Chunk, PermanentError, Sink, Source, hookimpl, parse_type

from ._casting import Unfit, lossless_cast
from ._files import (
    LineSource,
    TextFile,
    TextOptions,
    chain,
    display,
    line_number,
    read_sample,
    unify,
)
from ._parts import PartDirectorySink, PartsOptions, conform

_BLOCK = 4 << 20
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TIME = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"
_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)"
_TIMESTAMP = rf"^\d{{4}}-\d{{2}}-\d{{2}}{_TIME}{_ZONE}?$"


class JsonlOptions(TextOptions):
    pass


def _as_read(kind: pa.DataType) -> pa.DataType:
    """The type the JSON reader parses a column as: dates, times and timestamps come as text,
    and narrower floats as float64, converted after by the casting rules (the reader alone
    turns 10:00+02:00 into 08:00 in a column without a zone, and 1e39 into a float32 inf)."""
    if pa.types.is_date(kind) or pa.types.is_time(kind) or pa.types.is_timestamp(kind):
        return pa.string()
    return pa.float64() if pa.types.is_floating(kind) else kind


def _converted(column: pa.Array, kind: pa.DataType) -> pa.Array:
    try:
        return lossless_cast(column, kind)
    except Unfit as exc:  # said as Arrow says a value it can't convert, for the chunk's error
        raise pa.ArrowInvalid(exc.reasons[0]) from None


def _exact_decimals(data: bytes, names: list[str]) -> dict[str, list[Decimal | None]]:
    """The values of the fields ``names`` in each non-blank line of ``data``, read exactly (a
    number or a text as :class:`~decimal.Decimal`): what each declared decimal must be.

    Raises:
        pa.ArrowInvalid: a line that isn't a JSON object.
    """
    found: dict[str, list[Decimal | None]] = {name: [] for name in names}
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_float=Decimal, parse_int=Decimal)
        except ValueError as exc:
            raise pa.ArrowInvalid(f"JSON parse error: {exc}") from None
        if not isinstance(row, dict):
            raise pa.ArrowInvalid("JSON parse error: a line is not an object")
        for name in names:
            value = row.get(name)
            try:
                found[name].append(None if value is None else Decimal(value))
            except (InvalidOperation, TypeError, ValueError):
                found[name].append(None)  # not a number: the reader itself refuses it
    return found


def _check_decimals(decimals: pa.Array, exact: list[Decimal | None]) -> None:
    """Refuse decimals that pyarrow's JSON reader got wrong: it reads some numbers too big for
    the type as others (11229318108390970000000 in a decimal(38, 18) as 705708.6379…) and some
    too small as 0, where it refuses the rest. Each decimal must be the number the line wrote."""
    for read, written in zip(decimals.to_pylist(), exact, strict=True):
        if read is not None and written is not None and read != written:
            raise pa.ArrowInvalid(f"{written} doesn't fit {decimals.type}")


def _temporal(values: pa.ChunkedArray) -> pa.DataType | None:
    """date32 or a timestamp type, when every sampled text value is one in ISO form."""
    values = values.drop_null()
    if not len(values) or not pa.types.is_string(values.type):
        return None
    if pc.all(pc.match_substring_regex(values, _DATE)).as_py():
        return pa.date32()
    if not pc.all(pc.match_substring_regex(values, _TIMESTAMP)).as_py():
        return None
    zoned = pc.match_substring_regex(values, _TIME + _ZONE + "$")
    if pc.any(zoned).as_py() and not pc.all(zoned).as_py():
        return None  # some with a zone, some without: keep the text as written
    unit = "ns" if pc.any(pc.match_substring_regex(values, r"\.\d{7,}")).as_py() else "us"
    return pa.timestamp(unit, "UTC" if pc.all(zoned).as_py() else None)


class JsonlSource(LineSource):
    """JSON Lines files (a file, glob or directory), split into byte ranges; types inferred once."""

    name = "jsonl"
    Options = JsonlOptions
    options: JsonlOptions
    suffixes = (".jsonl", ".ndjson", ".json")
    blank = b" \t\r"

    def __init__(self, options: JsonlOptions, context) -> None:
        super().__init__(options, context)
        self.declared = {name: parse_type(text) for name, text in (options.schema or {}).items()}

    def _read_sample(self, sample: bytes, extra: dict[str, pa.DataType] | None = None) -> pa.Table:
        fields = {name: _as_read(kind) for name, kind in self.declared.items()} | (extra or {})
        options = pajson.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="infer")
        return pajson.read_json(io.BytesIO(sample), parse_options=options)

    def inspect(self, path: Path) -> TextFile:
        size = path.stat().st_size
        sample = read_sample(path, 0, size)
        if not sample.strip():
            return TextFile(path, size, 0, None)
        try:
            table = self._read_sample(sample)
            # Text that pyarrow took for timestamps, read again as written, to decide its type.
            stamps = {f.name: pa.string() for f in table.schema if pa.types.is_timestamp(f.type)}
            stamps = {name: kind for name, kind in stamps.items() if name not in self.declared}
            raw = self._read_sample(sample, stamps) if stamps else table
            first = json.loads(next(line for line in sample.splitlines() if line.strip()))
        except (pa.ArrowInvalid, ValueError) as exc:
            hint = (
                "; declare the column's type in `schema:` (e.g. float64, string)" if "changed from" in str(exc) else ""
            )
            raise PermanentError(f"{display(path)}: cannot read the first rows as JSON Lines: {exc}{hint}") from exc
        order = list(first) if isinstance(first, dict) else []
        fields = []
        for field in table.schema:
            kind = self.declared.get(field.name)
            if kind is None:
                kind = _temporal(raw.column(field.name)) or field.type
            fields.append(pa.field(field.name, kind))
        fields.sort(key=lambda f: order.index(f.name) if f.name in order else len(order))
        rows = max(1, len([line for line in sample.split(b"\n") if line.strip()]))
        return TextFile(path, size, 0, pa.schema(fields), len(sample) / rows)

    def combine(self, files: list[TextFile]) -> pa.Schema:
        typed: dict[str, list[tuple[Path, pa.DataType]]] = {}
        for info in files:
            for field in info.schema or []:
                typed.setdefault(field.name, []).append((info.path, field.type))
        return pa.schema(
            [
                pa.field(name, self.declared.get(name) or unify(name, kinds, text_fallback=False))
                for name, kinds in typed.items()
            ]
        )

    def _options(self, schema: pa.Schema, unexpected: str = "error") -> dict:
        reading = pa.schema([pa.field(f.name, _as_read(f.type)) for f in schema])
        return {
            "read_options": pajson.ReadOptions(block_size=_BLOCK),
            "parse_options": pajson.ParseOptions(explicit_schema=reading, unexpected_field_behavior=unexpected),
        }

    def parse(self, stream: pa.NativeFile, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        open_json = getattr(pajson, "open_json", None)  # streaming, from pyarrow 19
        options = self._options(schema)
        decimals = [f.name for f in schema if pa.types.is_decimal(f.type)]
        if decimals:  # read exactly too, to check each decimal (see _check_decimals)
            data = stream.read()
            exact = _exact_decimals(data, decimals)
            stream = pa.BufferReader(data)
        reader = open_json(stream, **options) if open_json else pajson.read_json(stream, **options).to_reader()
        cast = any(_as_read(f.type) != f.type for f in schema)
        seen = 0
        for batch in reader:
            if cast:
                columns = [
                    _converted(c, f.type) if c.type != f.type else c for c, f in zip(batch.columns, schema, strict=True)
                ]
                batch = pa.RecordBatch.from_arrays(columns, schema=schema)
            for name in decimals:
                _check_decimals(batch.column(name), exact[name][seen : seen + batch.num_rows])
            seen += batch.num_rows
            yield batch

    def explain(self, error: Exception, chunk: Chunk, schema: pa.Schema) -> PermanentError:
        path, start, end = chunk.args["path"], int(chunk.args["start"]), int(chunk.args["end"])
        where = f"{display(path)}: in the lines from line {line_number(path, start):,}"
        if "unexpected field" in str(error):
            try:
                with pa.OSFile(path) as f:
                    seen = pajson.read_json(f.get_stream(start, end - start), **self._options(schema, "infer")).schema
            except pa.ArrowInvalid:
                seen = schema
            extra = [name for name in seen.names if name not in schema.names]
            example = ", ".join(f"{name}: string" for name in extra[:2]) or "name: string"
            return PermanentError(
                f"{where}: field {', '.join(map(repr, extra)) or '(unknown)'} appears, which the first rows of the "
                f"files lack, so its type is unknown; declare it, e.g. `schema: {{{example}}}`"
            )
        return PermanentError(
            f"{where}: {error}. The column types were inferred from the first rows; declare the column's type "
            "in `schema:` (e.g. float64 for numbers, string for text)"
        )


class JsonlSink(PartDirectorySink):
    """A directory of JSON Lines part files, one per chunk; append or replace (atomic swap)."""

    name = "jsonl"
    Options = PartsOptions
    suffix = ".jsonl"

    def __init__(self, options: PartsOptions, context) -> None:
        super().__init__(options, context)
        self._con = None

    @property
    def con(self):
        if self._con is None:
            import duckdb

            self._con = duckdb.connect()
            self._con.execute("SET TimeZone = 'UTC'")
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def write_part(self, path: Path, batches: Iterator[pa.RecordBatch]) -> int | None:
        first = next(batches, None)
        if first is None:
            return None
        schema = first.schema
        state: dict = {"rows": 0, "error": None}

        def stream() -> Iterator[pa.RecordBatch]:
            try:
                for batch in chain(first, batches):
                    batch = conform(batch, schema)
                    state["rows"] += batch.num_rows
                    yield _iso(batch)
            except BaseException as exc:  # DuckDB wraps it; keep the original to raise
                state["error"] = exc
                raise

        reader = pa.RecordBatchReader.from_batches(_iso_schema(schema), stream())
        self.con.register("_etl_batches", reader)
        target = str(path).replace("'", "''")
        try:
            self.con.execute(f"COPY (SELECT * FROM _etl_batches) TO '{target}' (FORMAT json, COMPRESSION none)")
        except Exception:
            if state["error"] is not None:
                raise state["error"] from None
            raise
        finally:
            self.con.unregister("_etl_batches")
        return state["rows"]


def _iso_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema])


def _iso(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamps as ISO 8601 text, in UTC with a ``Z`` when they have a zone (vectorized)."""
    columns = []
    for column, field in zip(batch.columns, batch.schema, strict=True):
        kind = field.type
        if pa.types.is_timestamp(kind):
            if kind.tz is not None:
                column = pc.strftime(column.cast(pa.timestamp(kind.unit, "UTC")), format="%Y-%m-%dT%H:%M:%SZ")
            else:
                column = pc.strftime(column, format="%Y-%m-%dT%H:%M:%S")
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=_iso_schema(batch.schema))


@hookimpl
def etl_register_sources() -> list[type[Source]]:
    return [JsonlSource]


@hookimpl
def etl_register_sinks() -> list[type[Sink]]:
    return [JsonlSink]
