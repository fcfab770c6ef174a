"""Source and sink ``parquet``: Parquet files, read and written by row groups.

**Source.** ``path`` is a file, a glob (``data/*.parquet``, ``lake/**/*.parquet``) or a
directory (its ``*.parquet`` and ``*.pq`` files), read in sorted order. The files must have
the same schema, at least in the columns read (``columns:`` picks them).

A chunk is whole row groups of one file: consecutive row groups are combined while they
hold no more than ``chunk_size`` rows together. A row group larger than ``chunk_size`` is a
chunk of its own, so a chunk may hold more rows than ``chunk_size``: to get small chunks,
write files with small row groups. Counting and planning read only the files' footers, never
their data, and each chunk's row count is exact. Reading streams batches of at most the run's
batch size, without buffering whole column chunks, so memory stays flat however big the
files are.

Incremental: with ``incremental: {cursor: mtime}`` in the job, each run reads only the files
modified since the last completed run (their modification time, in UTC to the microsecond),
up to the newest one when the run was planned; see :class:`._files.FileSource`.

**Sink.** ``path`` is a directory; each chunk becomes a part file
``part-<run_id>-<chunk>.parquet`` in it, compressed with ``zstd`` unless ``compression`` says
otherwise, with row groups of ``row_group_size`` rows. ``mode: append`` adds a run's parts to
the directory; ``mode: replace`` writes them into a hidden staging directory beside it and
swaps it in when the run completes (readers see the old directory until then; for an instant
between two renames, no directory). The parts of an append run that fails stay (each holds a
whole chunk); a replace run that fails leaves the directory as it was. DuckDB, Spark, Polars
and pyarrow read such a directory as one table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from etl import Chunk, PermanentError, Plan, RowCount, Sink, Source, StageOptions, hookimpl

from ._files import (
    FileSource,
    absolute,
    chain,
    display,
    same_columns,
    schema_difference,
    schema_from_shared,
    schema_to_shared,
)
from ._parts import PartDirectorySink, PartsOptions, conform


class ParquetOptions(StageOptions):
    path: str = Field(
        description="a Parquet file, a glob of them (`**` recurses), or a directory of *.parquet files",
        examples=["data/sales.parquet", "lake/2026/**/*.parquet"],
    )
    columns: list[str] | None = Field(None, min_length=1, description="read only these columns, in this order")


def row_group_chunks(sizes: list[int], chunk_size: int) -> list[tuple[list[int], int]]:
    """Consecutive row groups (their indices, and rows together) of up to ``chunk_size`` rows.

    A row group larger than ``chunk_size`` is a group of its own; empty groups are left out.
    """
    groups: list[tuple[list[int], int]] = []
    current: list[int] = []
    rows = 0
    for index, size in enumerate(sizes):
        if current and rows + size > chunk_size:
            groups.append((current, rows))
            current, rows = [], 0
        current.append(index)
        rows += size
    if current:
        groups.append((current, rows))
    return [(indices, rows) for indices, rows in groups if rows]


class ParquetSource(FileSource):
    """Parquet files (a file, glob or directory), in chunks of whole row groups."""

    name = "parquet"
    Options = ParquetOptions
    options: ParquetOptions
    suffixes = (".parquet", ".pq")
    #: The schema :meth:`plan` found (``None`` before, or without a file).
    _planned: pa.Schema | None = None

    def _open(self, path: str | Path) -> pq.ParquetFile:
        try:
            # pre_buffer=False: with it, pyarrow buffers whole column chunks and memory grows with the file.
            return pq.ParquetFile(path, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise PermanentError(f"{display(path)}: cannot read it as Parquet: {exc}") from exc

    def _schema(self, file: pq.ParquetFile, path: str | Path) -> pa.Schema:
        schema = file.schema_arrow
        columns = self.options.columns
        if columns is None:
            return schema
        if missing := [c for c in columns if c not in schema.names]:
            raise PermanentError(
                f"{display(path)} has no column {', '.join(map(repr, missing))}; it has: {', '.join(schema.names)}"
            )
        return pa.schema([schema.field(c) for c in columns])

    def count(self) -> RowCount:
        rows = 0
        for path in self.files():
            with self._open(path) as file:
                rows += file.metadata.num_rows
        return RowCount(rows, exact=True)

    def output_schema(self) -> pa.Schema | None:
        """The first file's schema (the columns read), from its footer; ``None`` without a file
        (an incremental run with nothing new). After :meth:`plan`, the schema it checked."""
        if self._planned is not None:
            return self._planned
        for path in self.files():
            with self._open(path) as file:
                return self._schema(file, path)
        return None

    def plan(self, chunk_size: int) -> Plan:
        chunks: list[Chunk] = []
        first: tuple[Path, pa.Schema] | None = None
        for path in self.files():
            with self._open(path) as file:
                schema = self._schema(file, path)
                sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
            if first is None:
                first = (path, schema)
            elif not same_columns(schema, first[1]):
                labels = (display(first[0]), display(path))
                difference = schema_difference(first[1], schema, labels)
                raise PermanentError(
                    f"{labels[0]} and {labels[1]} have different schemas: {difference}; the files of one source "
                    "must have the same schema (`columns:` can pick the columns they share)"
                )
            for indices, rows in row_group_chunks(sizes, chunk_size):
                span = f" {indices[0]}" if len(indices) == 1 else f"s {indices[0]}-{indices[-1]}"
                chunks.append(
                    Chunk(
                        index=len(chunks),
                        rows=rows,
                        args={"path": absolute(path), "row_groups": indices},
                        label=f"{display(path)} row group{span}",
                    )
                )
        self._planned = first[1] if first else None
        return Plan(chunks, schema_to_shared(first[1] if first else pa.schema([])))

    def read(self, chunk: Chunk, shared: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
        path = chunk.args["path"]
        if not self.unchanged(chunk):
            return
        with self._open(path) as file:
            if not same_columns(self._schema(file, path), schema_from_shared(shared)):
                raise PermanentError(f"{display(path)} has changed since the run was planned: its schema differs")
            yield from file.iter_batches(
                batch_size=self.context.batch_size,
                row_groups=[int(i) for i in chunk.args["row_groups"]],
                columns=self.options.columns,
            )


class ParquetSinkOptions(PartsOptions):
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = Field(
        "zstd", description="the compression codec"
    )
    compression_level: int | None = Field(
        None, description="the codec's level (zstd: 1-22, gzip: 1-9); default: the codec's own"
    )
    row_group_size: int = Field(
        131_072, ge=1, description="rows per row group (a part's last row group may hold fewer)"
    )

    @model_validator(mode="after")
    def _level(self) -> ParquetSinkOptions:
        if self.compression_level is not None and self.compression in {"snappy", "none"}:
            raise ValueError(f"compression {self.compression} has no levels; drop `compression_level`")
        return self


class ParquetSink(PartDirectorySink):
    """A directory of Parquet part files, one per chunk; append or replace (atomic swap)."""

    name = "parquet"
    Options = ParquetSinkOptions
    options: ParquetSinkOptions
    suffix = ".parquet"

    def write_part(self, path: Path, batches: Iterator[pa.RecordBatch]) -> int | None:
        first = next(batches, None)
        if first is None:
            return None
        schema = first.schema
        size = self.options.row_group_size
        rows = held = 0
        pending: list[pa.RecordBatch] = []
        options = {"compression": self.options.compression, "compression_level": self.options.compression_level}
        with pq.ParquetWriter(str(path), schema, **options) as writer:
            for batch in chain(first, batches):
                batch = conform(batch, schema)
                pending.append(batch)
                held += batch.num_rows
                rows += batch.num_rows
                if held >= size:  # gather small batches into full row groups; hold the rest back
                    table = pa.Table.from_batches(pending, schema)
                    full = held - held % size
                    writer.write_table(table.slice(0, full), row_group_size=size)
                    pending, held = table.slice(full).to_batches(), held - full
            if held:
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=size)
        return rows


@hookimpl
def etl_register_sources() -> list[type[Source]]:
    return [ParquetSource]


@hookimpl
def etl_register_sinks() -> list[type[Sink]]:
    return [ParquetSink]
