"""What the file-format sources share: finding files, schemas, planning byte ranges.

Not a plugin itself (it registers nothing). Every file source (``csv``, ``jsonl``,
``parquet``) is a :class:`FileSource`, which finds the files and reads incrementally by their
modification time; the text sources build on :class:`LineSource`, which splits files into byte
ranges of whole lines. The sinks' part directories are in :mod:`._parts`.
"""

from __future__ import annotations

import base64
import datetime as dt
import glob
import os
import warnings
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from loguru import logger
from pydantic import Field, field_validator

from etl import Chunk, PermanentError, Plan, RowCount, Source, StageOptions, parse_type

#: How much of a text file is read at plan time to infer its types and row width.
SAMPLE_BYTES = 1 << 20
_BLOCK = 8 << 20
_GLOB_CHARS = frozenset("*?[")
#: The cursor of an incremental file source: the files' modification time.
MTIME = "mtime"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# -- files and names ---------------------------------------------------------------------------


def resolve_files(pattern: str, suffixes: tuple[str, ...], *, none_ok: bool = False) -> list[Path]:
    """The files that ``pattern`` names, sorted: a file, a glob (``**`` recurses), or a directory.

    A directory stands for its files ending in one of ``suffixes`` (not those whose name starts
    with ``.`` or ``_``, such as a sink's temporary files). Relative paths are relative to the
    working directory. With ``none_ok``, a directory that exists but holds no such file (or a
    glob whose leading directory exists) gives no files instead of an error.

    Raises:
        PermanentError: nothing matches.
    """
    path = Path(pattern)
    if _GLOB_CHARS & set(pattern):
        files = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    elif path.is_dir():
        files = [
            p for p in path.iterdir() if p.is_file() and p.name.endswith(suffixes) and not p.name.startswith((".", "_"))
        ]
    else:
        files = [path] if path.is_file() else []
    if not files:
        if none_ok and _leading_directory(pattern).is_dir():
            return []
        what = f"no {'/'.join(suffixes)} file in directory" if path.is_dir() else "no file matches"
        raise PermanentError(f"{what} {pattern!r} (relative paths are relative to {Path.cwd()})")
    return sorted(files, key=str)


def _leading_directory(pattern: str) -> Path:
    """The directory a glob starts from (the pattern itself when it is no glob)."""
    parts = Path(pattern).parts
    first_glob = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), len(parts))
    return Path(*parts[:first_glob]) if first_glob else Path(".")


def modified(path: str | Path) -> dt.datetime:
    """When a file was last modified, in UTC, to the microsecond: its ``st_mtime_ns`` cut to
    whole microseconds in integers (never through a float), so that every process, and a value
    stored as text and read back, compare equal."""
    return _EPOCH + dt.timedelta(microseconds=os.stat(path).st_mtime_ns // 1000)


def display(path: str | Path) -> str:
    """``path`` as the user would write it: relative to the working directory when inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def absolute(path: Path) -> str:
    """The path a chunk carries: absolute, so that a worker elsewhere reads the same file."""
    return os.path.abspath(path)


with warnings.catch_warnings():
    # The option is called `schema` in job files; pydantic warns that the name hides
    # BaseModel.schema, a deprecated method that nothing here uses.
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class TextOptions(StageOptions):
        """The options every text source has."""

        path: str = Field(
            description="a file, a glob of files (`**` recurses), or a directory of them",
            examples=["data/sales.csv", "data/2026-*.csv", "data/"],
        )
        schema: dict[str, str] | None = Field(
            None,
            description="column → type, overriding the types inferred from the first rows",
            examples=[{"zip": "string", "amount": "decimal(12, 2)", "day": "date"}],
        )

        @field_validator("schema")
        @classmethod
        def _types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
            for column, text in (value or {}).items():
                try:
                    parse_type(text)
                except ValueError as exc:
                    raise ValueError(f"{column}: {exc}") from None
            return value


def schema_to_shared(schema: pa.Schema) -> dict[str, Any]:
    """A schema for :attr:`Plan.shared`: exact (Arrow IPC, base64) and readable (``columns``)."""
    return {
        "schema": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
        "columns": {field.name: str(field.type) for field in schema},
    }


def schema_from_shared(shared: Mapping[str, Any]) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(shared["schema"])))


def same_columns(schema: pa.Schema, other: pa.Schema) -> bool:
    """Whether two schemas have the same column names and types, in the same order."""
    return schema.names == other.names and schema.types == other.types


def schema_difference(
    schema: pa.Schema, other: pa.Schema, labels: tuple[str, str] = ("the first", "the second")
) -> str:
    """How two schemas differ, in words: missing columns, types, order."""
    names, others = schema.names, other.names
    parts = []
    if missing := [n for n in names if n not in others]:
        parts.append(f"only {labels[0]} has {', '.join(map(repr, missing))}")
    if extra := [n for n in others if n not in names]:
        parts.append(f"only {labels[1]} has {', '.join(map(repr, extra))}")
    for name in names:
        if name in others and schema.field(name).type != other.field(name).type:
            parts.append(
                f"{name!r} is {schema.field(name).type} in {labels[0]}, {other.field(name).type} in {labels[1]}"
            )
    if not parts and names != others:
        parts.append(f"the columns are in another order: {', '.join(names)} vs {', '.join(others)}")
    return "; ".join(parts) or "their field metadata differ"


def unify(column: str, typed: list[tuple[Path, pa.DataType]], *, text_fallback: bool) -> pa.DataType:
    """One type for a column that several files typed on their own (``null`` = no value seen).

    Equal types stay; integers and floats become float64; anything else becomes text when
    ``text_fallback`` (values are then kept as written), or is an error.
    """
    seen = [(path, t) for path, t in typed if not pa.types.is_null(t)]
    kinds = {t for _, t in seen}
    if not kinds:
        return pa.string()
    if len(kinds) == 1:
        return kinds.pop()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in kinds):
        return pa.float64()
    if text_fallback:
        return pa.string()
    (first, a), (second, b) = seen[0], next((p, t) for p, t in seen if t != seen[0][1])
    raise PermanentError(
        f"column {column!r} is {a} in {display(first)} but {b} in {display(second)}; "
        f"declare its type, e.g. `schema: {{{column}: string}}`"
    )


def chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``first``, then the rest: a stream whose first batch was taken to learn its schema."""
    yield first
    yield from rest


def batches_of(batch: pa.RecordBatch, size: int) -> Iterator[pa.RecordBatch]:
    """``batch`` in slices of at most ``size`` rows (zero-copy)."""
    for offset in range(0, batch.num_rows, size):
        yield batch.slice(offset, size)


# -- lines and byte ranges -----------------------------------------------------------------------


def line_start(f: Any, position: int, first: int, size: int) -> int:
    """The first line start at or after ``position``, in a file whose data lines start at ``first``.

    A line starts at ``first`` or right after a ``\\n``. A chunk planned as ``[start, end)``
    holds the lines that start inside it: the bytes ``[line_start(start), line_start(end))``.
    So adjacent chunks share no line and miss none, whatever bytes the boundaries fall on
    (a ``\\r\\n`` stays whole: the ``\\r`` belongs to the line that it ends).
    """
    if position <= first:
        return first
    if position >= size:
        return size
    f.seek(position - 1)
    offset = position - 1
    while block := f.read(1 << 16):
        found = block.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(block)
    return size


def byte_ranges(path: Path, first: int, size: int, step: int) -> list[tuple[int, int]]:
    """Cut ``[first, size)`` into ranges of about ``step`` bytes, each starting a line; none empty.

    A remainder of less than a quarter of ``step`` joins the last range instead of making one.
    """
    if first >= size:
        return []
    bounds = [first]
    step = max(1, step)
    with open(path, "rb") as f:
        position = first + step
        while position < size:
            start = line_start(f, position, first, size)
            if start >= size or (size - start) * 4 < step:
                break
            bounds.append(start)
            position = start + step
    return list(zip(bounds, [*bounds[1:], size], strict=True))


def read_sample(path: Path, start: int, size: int) -> bytes:
    """About :data:`SAMPLE_BYTES` from ``start``, cut after the last whole line (at least one)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(SAMPLE_BYTES)
        if start + len(data) >= size:
            return data
        cut = data.rfind(b"\n")
        while cut < 0:  # a line longer than the sample: read on to its end
            more = f.read(SAMPLE_BYTES)
            if not more:
                return data
            if (found := more.find(b"\n")) >= 0:
                cut = len(data) + found
            data += more
        return data[: cut + 1]


def count_lines(path: Path, start: int, end: int, blank: bytes) -> int:
    """How many lines of ``[start, end)`` hold something besides the bytes in ``blank``.

    Reads in large binary blocks and finds the newlines with NumPy; only blocks that hold a
    line starting with a newline or a ``blank`` byte are split into lines, to look closer.
    A last line without a trailing newline counts too.
    """
    rows = 0
    carry_blank = True  # the line read so far (carried across blocks) is blank
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0 and (block := f.read(min(_BLOCK, remaining))):
            remaining -= len(block)
            head = block.find(b"\n")
            if head < 0:
                carry_blank = carry_blank and not block.strip(blank)
                continue
            tail = block.rfind(b"\n")
            rows += not (carry_blank and not block[:head].strip(blank))
            # The lines between the first and the last newline: each starts after a newline in
            # [head, tail). Only one that starts with a newline or a blank byte may be blank.
            data = np.frombuffer(block, np.uint8)
            starts = data[np.flatnonzero(data[head:tail] == 10) + head + 1]
            if np.isin(starts, np.frombuffer(b"\n" + blank, np.uint8)).any():
                rows += sum(1 for line in block[head + 1 : tail].split(b"\n") if line.strip(blank))
            else:
                rows += len(starts)
            carry_blank = not block[tail + 1 :].strip(blank)
    return rows + (not carry_blank)


def line_number(path: str | Path, offset: int) -> int:
    """The 1-based line that byte ``offset`` is on (reads the file up to it: for error messages)."""
    lines = 1
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0 and (block := f.read(min(_BLOCK, remaining))):
            lines += block.count(b"\n")
            remaining -= len(block)
    return lines


@dataclass(frozen=True)
class TextFile:
    """What planning learned about one text file."""

    path: Path
    size: int
    #: The byte offset of the first data line (after a header).
    first: int
    #: The types found in the sample; ``None`` when the file holds no rows.
    schema: pa.Schema | None
    bytes_per_row: float = 1.0


class FileSource(Source):
    """A source of the files its ``path`` option names (a file, a glob or a directory).

    Incremental by modification time: the job's ``incremental: {cursor: mtime}`` reads, in each
    run, only the files modified since the last completed run (:func:`modified`, in UTC to the
    microsecond). The run's upper bound is the newest file's time when the run is planned; a
    file modified after that is left for the next run, and so is a planned file modified again
    before its chunk is read (with a warning): its chunks read nothing. A file modified again
    after it was read is read again, whole, by the next run. An existing directory with no file
    (or a glob in one that matches nothing) is nothing new rather than an error.

    A file moved into place, or copied with its times (``cp -p``, ``rsync -a``), keeps the time
    it was written with: one at or below the mark is never read, unless the job's ``lookback``
    reaches back to it.
    """

    #: File names a directory ``path`` is read for.
    suffixes: ClassVar[tuple[str, ...]]
    incremental: ClassVar[bool] = True

    @classmethod
    def check_cursor(cls, options: StageOptions, cursor: str) -> None:
        if cursor != MTIME:
            raise ValueError(
                f"file sources follow the files' modification time, not a column ({cursor!r}); write `cursor: mtime`"
            )

    def files(self) -> list[Path]:
        """The files to read: all that ``path`` names, or, in an incremental run, those
        modified inside its window (maybe none)."""
        window = self.context.window
        if window is None:
            return resolve_files(self.options.path, self.suffixes)  # type: ignore[attr-defined]
        if window.empty:
            return []
        return [path for path, mtime in self._modified() if window.holds(mtime)]

    def _modified(self) -> list[tuple[Path, dt.datetime]]:
        """Every file ``path`` names, with its modification time (none in an empty directory)."""
        found = []
        for path in resolve_files(self.options.path, self.suffixes, none_ok=True):  # type: ignore[attr-defined]
            try:
                found.append((path, modified(path)))
            except FileNotFoundError:  # removed since it was listed
                continue
        return found

    def cursor_high(self, cursor: str, above: Any = None) -> dt.datetime | None:
        """The newest file's modification time (``None`` when there is no file, or none
        modified after ``above``)."""
        newest = max((mtime for _, mtime in self._modified()), default=None)
        return None if newest is None or (above is not None and newest <= above) else newest

    def unchanged(self, chunk: Chunk) -> bool:
        """Whether the chunk's file is still inside the run's window: False (with a warning)
        when it was modified since the run was planned, and is left for the next run."""
        window = self.context.window
        if window is None:
            return True
        try:
            mtime = modified(chunk.args["path"])
        except FileNotFoundError:
            return True  # reading it says so
        if window.holds(mtime):
            return True
        logger.bind(job=self.context.job, run=self.context.run_id).warning(
            "{} was modified at {} since the run was planned: {} left for the next run",
            display(chunk.args["path"]),
            mtime.isoformat(),
            chunk.label or f"chunk {chunk.index}",
        )
        return False


class LineSource(FileSource):
    """A source of line-oriented text files, read in byte ranges of whole lines (Hadoop-style).

    Planning samples the first :data:`SAMPLE_BYTES` of each file to infer its types and how
    many bytes a row takes, and cuts the file into ranges of about ``chunk_size`` rows; a chunk
    owns the lines that start inside its range. Subclasses inspect a file, combine the files'
    schemas, and parse a range.
    """

    #: The bytes that a blank line, which holds no row, may consist of.
    blank: ClassVar[bytes] = b"\r"
    #: What :meth:`plan` found: the schema, and whether any file holds a row.
    _planned: tuple[pa.Schema, bool] | None = None

    def first_line(self, path: Path) -> int:
        """The byte offset of the first data line: 0, or after a header line."""
        return 0

    @abstractmethod
    def inspect(self, path: Path) -> TextFile:
        """Sample one file: its first data line, inferred types and bytes per row."""

    @abstractmethod
    def combine(self, files: list[TextFile]) -> pa.Schema:
        """The one schema every chunk is parsed with."""

    @abstractmethod
    def parse(self, stream: pa.NativeFile, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """Parse the bytes of one range (whole lines) into batches of ``schema``."""

    def explain(self, error: Exception, chunk: Chunk, schema: pa.Schema) -> PermanentError:
        """A parse error, made into a message that names the file and the line."""
        path = chunk.args["path"]
        line = line_number(path, int(chunk.args["start"]))
        return PermanentError(f"{display(path)}: in the lines from line {line:,}: {error}")

    def split(self, info: TextFile, chunk_size: int) -> list[tuple[int, int]]:
        """The byte ranges that one file is read in."""
        return byte_ranges(info.path, info.first, info.size, round(info.bytes_per_row * chunk_size))

    # -- the source contract -------------------------------------------------------------------

    def count(self) -> RowCount:
        rows = 0
        for path in self.files():
            rows += count_lines(path, self.first_line(path), path.stat().st_size, self.blank)
        return RowCount(rows, exact=True)

    def output_schema(self) -> pa.Schema | None:
        """The schema every chunk is parsed with (the one planning inferred from the files'
        first megabyte and ``schema:``), or ``None`` when no file holds a row yet."""
        planned = self._planned
        if planned is None:
            infos = [self.inspect(path) for path in self.files()]
            planned = self._planned = (self.combine(infos), any(info.schema is not None for info in infos))
        schema, rows = planned
        return schema if rows else None

    def plan(self, chunk_size: int) -> Plan:
        infos = [self.inspect(path) for path in self.files()]
        schema = self.combine(infos)
        self._planned = (schema, any(info.schema is not None for info in infos))
        chunks = []
        for info in infos:
            if info.schema is None:
                continue
            for start, end in self.split(info, chunk_size):
                chunks.append(
                    Chunk(
                        index=len(chunks),
                        args={"path": absolute(info.path), "start": start, "end": end},
                        label=f"{display(info.path)} bytes {start:,}-{end - 1:,}",
                    )
                )
        return Plan(chunks, schema_to_shared(schema))

    def read(self, chunk: Chunk, shared: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
        if not self.unchanged(chunk):
            return
        schema = schema_from_shared(shared)
        start, end = int(chunk.args["start"]), int(chunk.args["end"])
        with pa.OSFile(chunk.args["path"]) as f:
            batches = self.parse(f.get_stream(start, end - start), schema)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise self.explain(exc, chunk, schema) from exc
                yield from batches_of(batch, self.context.batch_size)
