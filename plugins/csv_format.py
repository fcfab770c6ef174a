"""Source and sink ``csv``: delimited text files, read in parallel byte ranges.

**Source.** ``path`` is a file, a glob (``data/*.csv``, ``logs/**/*.csv``) or a directory
(its ``*.csv`` files); several files are read in sorted order and must have the same
columns. Each file is cut into byte ranges of about ``chunk_size`` rows, planned from a
sample of its first megabyte; a chunk reads the lines that start inside its range, so
chunks can be read anywhere, in any order. Lines end in ``\\n`` or ``\\r\\n``; text is UTF-8.

Column types are inferred once, from that first megabyte (integers, floats, booleans,
dates, times, timestamps with or without a zone, else text), and every chunk is parsed with
them. A column empty in the sample is text, and so are integers written with leading zeros
(``007``, zip codes) or in hexadecimal (``0x1F``): they are identifiers. Numbers are read by
the casting rules of the ``cast`` transform, exactly: ``1e400`` in a float column is an
error, not infinity. When the files of a glob disagree on a column's
type, it is read as text. Declare types that the sample can't show with
``schema:`` (``{zip: string, amount: "decimal(12, 2)"}``). A value that doesn't parse as its
column's type is an error naming the file, the line and the column; nothing is changed
silently. To let such rows through, read the column as ``string`` and convert it with a
``cast`` transform under ``on_error: skip``.

Empty values are NULL (``null_values`` changes that); a quoted empty value ``""`` is an
empty string. Blank lines hold no row. ``count`` is exact: it counts the lines of the
files (in large binary blocks, without parsing).

With ``newlines_in_values: false`` (the default) a file is split at line ends, so a quoted
value holding a newline would be cut in two. Set ``newlines_in_values: true`` for such files:
each file is then read whole, as one chunk, and counting parses it.

Incremental: with ``incremental: {cursor: mtime}`` in the job, each run reads only the files
modified since the last completed run (their modification time, in UTC to the microsecond),
up to the newest one when the run was planned; see :class:`._files.FileSource`.

**Sink.** ``path`` is a directory; each chunk becomes a part file
``part-<run_id>-<chunk>.csv`` in it, with a header line unless ``header: false``. Values are
quoted where needed; NULL is an empty field. ``mode: append`` adds a run's parts to the
directory; ``mode: replace`` writes them into a hidden staging directory beside it and swaps
it in when the run completes (readers see the old directory until then; for an instant between
two renames, no directory). The parts of an append run that fails stay (each holds a whole
chunk); a replace run that fails leaves the directory as it was.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pydantic import Field, field_validator, model_validator

from etl import Chunk, PermanentError, RowCount, Sink, Source, hookimpl, parse_type

from ._casting import Unfit, converter, failing_rows, reason
from ._files import (
    SAMPLE_BYTES,
    LineSource,
    TextFile,
    TextOptions,
    chain,
    count_lines,
    display,
    line_number,
    read_sample,
    schema_difference,
    unify,
)
from ._parts import PartDirectorySink, PartsOptions, conform

_CONVERSION = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (.+?): invalid value '(.*)'$", re.S
)


class CsvOptions(TextOptions):
    delimiter: str = Field(",", min_length=1, max_length=1, description="the field separator", examples=[";", "\t"])
    header: bool = Field(True, description="whether the first line of each file names the columns")
    columns: list[str] | None = Field(
        None, min_length=1, description="the column names of files without a header (default f0, f1, ...)"
    )
    null_values: list[str] = Field([""], description="the texts that stand for NULL", examples=[["", "NULL", "NA"]])
    encoding: str = Field("utf-8", description="the text encoding; only UTF-8 is supported (convert others first)")
    newlines_in_values: bool = Field(
        False, description="quoted values may hold newlines: read each file whole, as one chunk"
    )

    @field_validator("encoding")
    @classmethod
    def _utf8(cls, value: str) -> str:
        if value.lower().replace("_", "-") not in {"utf-8", "utf8"}:
            raise ValueError(
                f"encoding {value!r} is not supported; only utf-8 is (convert the files first, e.g. iconv)"
            )
        return value

    @model_validator(mode="after")
    def _names(self) -> CsvOptions:
        if self.header and self.columns:
            raise ValueError("`columns` names the columns of files without a header; set header: false, or drop it")
        if self.columns and len(set(self.columns)) != len(self.columns):
            raise ValueError("`columns` holds a name twice")
        return self


class CsvSource(LineSource):
    """CSV files (a file, glob or directory), split into byte ranges; types inferred once."""

    name = "csv"
    Options = CsvOptions
    options: CsvOptions
    suffixes = (".csv",)

    def __init__(self, options: CsvOptions, context) -> None:
        super().__init__(options, context)
        self.declared = {name: parse_type(text) for name, text in (options.schema or {}).items()}

    # -- pyarrow's options -----------------------------------------------------------------

    def _parse_options(self) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self.options.delimiter, newlines_in_values=self.options.newlines_in_values)

    def _convert_options(self, types: dict[str, pa.DataType], include: list[str] | None = None) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(
            column_types=types,
            null_values=self.options.null_values,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            include_columns=include,
        )

    def _reader(self, stream, names: list[str], types: dict[str, pa.DataType], include=None):
        return pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=self._parse_options(),
            convert_options=self._convert_options(types, include),
        )

    # -- planning --------------------------------------------------------------------------

    def first_line(self, path: Path) -> int:
        if not self.options.header:
            return 0
        with open(path, "rb") as f:
            offset = 0
            while block := f.read(1 << 16):
                if (found := block.find(b"\n")) >= 0:
                    return offset + found + 1
                offset += len(block)
            return offset

    def inspect(self, path: Path) -> TextFile:
        size = path.stat().st_size
        first = self.first_line(path)
        names = self.options.columns
        read_options = pacsv.ReadOptions(
            use_threads=False,
            block_size=SAMPLE_BYTES,
            column_names=names,
            autogenerate_column_names=not self.options.header and not names,
        )
        try:
            reader = pacsv.open_csv(
                str(path),
                read_options=read_options,
                parse_options=self._parse_options(),
                convert_options=self._convert_options(self.declared),
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return TextFile(path, size, size, None)
            if _CONVERSION.search(str(exc)):  # a declared type that a value of the sample doesn't fit
                names = pacsv.open_csv(str(path), read_options=read_options, parse_options=self._parse_options())
                whole = Chunk(index=0, args={"path": str(path), "start": first, "end": size})
                raise self.explain(exc, whole, names.schema) from exc
            raise PermanentError(f"{display(path)}: cannot read the first rows: {exc}{self._hint(exc)}") from exc
        schema = reader.schema
        reader.close()
        sample = read_sample(path, first, size)
        lines = count_lines(path, first, first + len(sample), self.blank)
        if sample:
            schema = self._check_sample(path, sample, schema, lines)
        return TextFile(path, size, first, schema, len(sample) / max(lines, 1))

    def _check_sample(self, path: Path, sample: bytes, schema: pa.Schema, lines: int) -> pa.Schema:
        """The sample read as text: fail early if quoted values hold newlines; keep leading zeros.

        Splitting a file at line ends would cut a value holding a newline in two. And integers
        written with leading zeros (``007``, zip codes) are identifiers: they stay text.
        """
        try:
            text = self._reader(pa.BufferReader(sample), schema.names, dict.fromkeys(schema.names, pa.string()))
            text = text.read_all()
        except pa.ArrowInvalid as exc:
            raise PermanentError(f"{display(path)}: cannot read the first rows: {exc}{self._hint(exc)}") from exc
        if text.num_rows < lines and not self.options.newlines_in_values:
            raise PermanentError(
                f"{display(path)}: quoted values hold newlines ({lines:,} lines of the first {len(sample):,} bytes "
                f"hold {text.num_rows:,} rows), so the file can't be split at line ends; set "
                "`newlines_in_values: true` to read each file whole, as one chunk"
            )
        for i, field in enumerate(schema):
            if not pa.types.is_integer(field.type) or field.name in self.declared:
                continue
            if pc.any(pc.match_substring_regex(text.column(i), r"^[+-]?0[\dxX]")).as_py():
                schema = schema.set(i, pa.field(field.name, pa.string()))
        return schema

    def combine(self, files: list[TextFile]) -> pa.Schema:
        files = [f for f in files if f.schema is not None]
        if not files:
            return pa.schema([])
        base = files[0]
        names = base.schema.names
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise PermanentError(f"{display(base.path)} names column {', '.join(map(repr, twice))} twice")
        for other in files[1:]:
            if other.schema.names != names:
                labels = (display(base.path), display(other.path))
                raise PermanentError(
                    f"{labels[0]} and {labels[1]} have different columns: "
                    f"{_names_difference(names, other.schema.names, labels)}; "
                    "the files of one source must have the same columns"
                )
        if unknown := [n for n in self.declared if n not in names]:
            raise PermanentError(
                f"`schema` names column {', '.join(map(repr, unknown))}, which {display(base.path)} has not; "
                f"it has: {', '.join(names)}"
            )
        fields = []
        for i, name in enumerate(names):
            typed = [(f.path, f.schema.field(i).type) for f in files]
            fields.append(pa.field(name, self.declared.get(name) or unify(name, typed, text_fallback=True)))
        return pa.schema(fields)

    def split(self, info: TextFile, chunk_size: int) -> list[tuple[int, int]]:
        if self.options.newlines_in_values:  # a newline may sit inside a value: no safe cut
            return [(info.first, info.size)] if info.first < info.size else []
        return super().split(info, chunk_size)

    def count(self) -> RowCount:
        if not self.options.newlines_in_values:
            return super().count()
        rows = 0
        for path in self.files():
            info = self.inspect(path)
            if info.schema is None or info.first >= info.size:
                continue
            first = info.schema.names[0]
            with pa.OSFile(str(path)) as f:
                reader = self._reader(
                    f.get_stream(info.first, info.size - info.first),
                    info.schema.names,
                    {first: pa.string()},
                    include=[first],
                )
                rows += sum(batch.num_rows for batch in reader)
        return RowCount(rows, exact=True)

    # -- reading ---------------------------------------------------------------------------

    def parse(self, stream: pa.NativeFile, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        # Numbers are read as text and converted by the casting rules: pyarrow's reader alone
        # reads 0x10 as 16 (and 0xFFFFFFFFFFFFFFFF as -1), 1e400 as inf, 1e-400 as 0, and
        # 11229318108390970000000 as 705708.637954751649021952 in a decimal(38, 18).
        numbers = [i for i, t in enumerate(schema.types) if _is_number(t)]
        types = {f.name: pa.string() if i in numbers else f.type for i, f in enumerate(schema)}
        for batch in self._reader(stream, schema.names, types):
            for i in numbers:
                batch = batch.set_column(i, schema.field(i), _number(batch.column(i), i, schema.field(i).type))
            yield batch

    def explain(self, error: Exception, chunk: Chunk, schema: pa.Schema) -> PermanentError:
        path, start, end = chunk.args["path"], int(chunk.args["start"]), int(chunk.args["end"])
        match = _CONVERSION.search(str(error))
        if match is None:
            where = f"in the lines from line {line_number(path, start):,}"
            return PermanentError(f"{display(path)}: {where}: {error}{self._hint(error)}")
        column, kind, value = schema.names[int(match[1])], match[2], match[3]
        why = f": {error.reason}" if isinstance(error, _Unconverted) else ""
        row = self._find(path, start, end, schema.names, column, value)
        exact = row >= 0 and not self.options.newlines_in_values
        line = _line_of_row(path, start, end, row, self.blank) if exact else line_number(path, start)
        origin = "declared in `schema:`" if column in self.declared else "inferred from the first rows"
        return PermanentError(
            f"{display(path)}: line {'' if exact else '~'}{line:,}, column {column!r}: {value!r} is not a valid "
            f"{kind}{why} (the type {origin}). Read the column as text with `schema: {{{column}: string}}` and "
            f"convert it with a `cast` transform; with `on_error: skip` rows that don't convert are set aside"
        )

    def _hint(self, error: Exception) -> str:
        if "columns, got" in str(error) and not self.options.newlines_in_values:
            return "; if quoted values hold newlines, set `newlines_in_values: true`"
        if "UTF8" in str(error):
            return "; the file is not UTF-8: convert it first (e.g. iconv -f latin1 -t utf-8)"
        return ""

    def _find(self, path: str, start: int, end: int, names: list[str], column: str, value: str) -> int:
        """The position in the range of the first row whose ``column`` reads ``value`` (-1: not found)."""
        seen = 0
        with pa.OSFile(path) as f:
            for batch in self._reader(f.get_stream(start, end - start), names, {column: pa.string()}, [column]):
                found = pc.index(batch.column(0), value).as_py()
                if found >= 0:
                    return seen + found
                seen += batch.num_rows
        return -1


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


class _Unconverted(pa.ArrowInvalid):
    """A number in a CSV file that its column's type doesn't hold exactly; said as pyarrow's
    reader says a conversion error, with the casting layer's reason."""

    def __init__(self, column: int, kind: pa.DataType, value: str, reason: str) -> None:
        super().__init__(f"In CSV column #{column}: CSV conversion error to {kind}: invalid value '{value}'")
        self.reason = reason.removeprefix(f"cannot cast to {kind}: ")


def _number(text: pa.Array, column: int, kind: pa.DataType) -> pa.Array:
    """A column of numbers read as text, as ``kind`` (spaces around a number allowed, as
    pyarrow's reader allows them), or :class:`_Unconverted` for the first that isn't one."""
    trimmed = pc.utf8_trim_whitespace(text)
    convert = converter(kind, None)
    try:
        return convert(trimmed)
    except (pa.ArrowInvalid, ValueError) as exc:
        bad = int(np.flatnonzero(exc.mask)[0]) if isinstance(exc, Unfit) else failing_rows(trimmed, convert)[0]
        raise _Unconverted(column, kind, text[bad].as_py(), reason(trimmed, bad, convert, kind)) from None


def _line_of_row(path: str | Path, start: int, end: int, row: int, blank: bytes) -> int:
    """The 1-based line of the ``row``-th row (0-based, blank lines hold none) of ``[start, end)``."""
    line = line_number(path, start)
    with open(path, "rb") as f:
        f.seek(start)
        position = start
        for text in f:
            if position >= end:
                break
            position += len(text)
            if text.strip(blank + b"\n"):
                if row == 0:
                    return line
                row -= 1
            line += 1
    return line


def _names_difference(names: list[str], others: list[str], labels: tuple[str, str]) -> str:
    if len(names) != len(others) and set(names) == set(others):
        return f"{len(names)} columns in {labels[0]}, {len(others)} in {labels[1]}"
    untyped = [pa.schema([(n, pa.null()) for n in dict.fromkeys(columns)]) for columns in (names, others)]
    return schema_difference(*untyped, labels)


class CsvSinkOptions(PartsOptions):
    delimiter: str = Field(",", min_length=1, max_length=1, description="the field separator")
    header: bool = Field(True, description="begin each part file with a line of column names")


class CsvSink(PartDirectorySink):
    """A directory of CSV part files, one per chunk; append or replace (atomic swap)."""

    name = "csv"
    Options = CsvSinkOptions
    options: CsvSinkOptions
    suffix = ".csv"

    def write_part(self, path: Path, batches: Iterator[pa.RecordBatch]) -> int | None:
        first = next(batches, None)
        if first is None:
            return None
        schema = first.schema
        nested = [f"{f.name} ({f.type})" for f in schema if pa.types.is_nested(f.type)]
        if nested:
            raise PermanentError(
                f"CSV has no place for nested values: column {', '.join(nested)}; flatten or drop it "
                "(e.g. with a `sql` transform), or write parquet or jsonl"
            )
        options = pacsv.WriteOptions(include_header=self.options.header, delimiter=self.options.delimiter)
        rows = 0
        with pacsv.CSVWriter(str(path), schema, write_options=options) as writer:
            for batch in chain(first, batches):
                batch = conform(batch, schema)
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows


@hookimpl
def etl_register_sources() -> list[type[Source]]:
    return [CsvSource]


@hookimpl
def etl_register_sinks() -> list[type[Sink]]:
    return [CsvSink]
