"""What the file-format sinks share: a directory of part files, one per chunk.

Not a plugin itself (it registers nothing). The ``csv``, ``jsonl`` and ``parquet`` sinks build
on :class:`PartDirectorySink`.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from etl import Chunk, Interrupted, PermanentError, Sink, StageOptions

from ._casting import lossless_cast
from ._files import display, schema_difference


class PartsOptions(StageOptions):
    path: str = Field(
        description="a directory (created if missing) that receives one part file per chunk",
        examples=["out/forecasts"],
    )
    mode: Literal["append", "replace"] = Field(
        "append",
        description="append: add the run's part files to the directory; replace: swap in a "
        "directory holding only this run's part files when the run completes",
    )


class PartDirectorySink(Sink):
    """A directory of part files, one per chunk: ``part-<run_id>-<chunk>.<suffix>``.

    Each part is written to a hidden temporary file beside it and renamed into place once the
    chunk is complete, so a rewritten chunk replaces its part, a failed write leaves no part,
    and any number of processes can write chunks at once.
    """

    #: The part files' extension, such as ``.parquet``.
    suffix: ClassVar[str]
    options: PartsOptions

    def __init__(self, options: PartsOptions, context) -> None:
        super().__init__(options, context)
        self.target = Path(os.path.abspath(options.path))
        self.run = "".join(c if c.isalnum() or c in "-_." else "_" for c in context.run_id)
        self.staging = self.target.parent / f".{self.target.name}.etl-staging-{self.run}"
        self.old = self.target.parent / f".{self.target.name}.etl-old-{self.run}"

    def staged(self) -> list[str]:
        return [f"the directory {self.staging}"] if self.options.mode == "replace" else []

    @abstractmethod
    def write_part(self, path: Path, batches: Iterator[pa.RecordBatch]) -> int | None:
        """Stream the batches into a new file at ``path``; ``None`` when there were none."""

    def part_name(self, index: int) -> str:
        return f"part-{self.run}-{index:05d}{self.suffix}"

    def _directory(self) -> Path:
        if self.target.exists() and not self.target.is_dir():
            raise PermanentError(f"{display(self.target)} is a file; the sink writes a directory of part files")
        directory = self.staging if self.options.mode == "replace" else self.target
        directory.mkdir(parents=True, exist_ok=True)  # safe when several processes race here
        return directory

    def prepare(self) -> None:
        if self.options.mode == "replace":
            self._check_replaceable()
        self._directory()

    def write(self, chunk: Chunk, batches: Iterable[pa.RecordBatch]) -> int:
        directory = self._directory()
        part = directory / self.part_name(chunk.index)
        fence = directory / f".{part.name}.fence"
        self._raise_fence(fence, chunk.attempt)
        temporary = directory / f".{part.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            rows = self.write_part(temporary, iter(batches))
            # A newer attempt at this chunk began meanwhile (this worker lost its lease): its
            # part wins, this one is dropped.
            if _fence_of(fence) > chunk.attempt:
                raise Interrupted("lost")
            if rows is None:  # no rows in the chunk: no part (and none left from an earlier try)
                part.unlink(missing_ok=True)
                return 0
            with open(temporary, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(temporary, part)
        finally:
            temporary.unlink(missing_ok=True)
        return rows

    @staticmethod
    def _raise_fence(fence: Path, attempt: int) -> None:
        """Record that attempt ``attempt`` is writing the chunk; refuse if a newer one is."""
        current = _fence_of(fence)
        if current > attempt:
            raise Interrupted("lost")
        if current < attempt:
            staged = fence.with_name(f"{fence.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
            staged.write_text(str(attempt))
            os.replace(staged, fence)

    def finalize(self) -> None:
        if self.options.mode == "append":
            self._remove_temporaries(self.target)
            return
        if not self.staging.exists():  # already swapped in by an earlier finalize
            shutil.rmtree(self.old, ignore_errors=True)
            return
        self._check_replaceable()
        self._remove_temporaries(self.staging)
        # Between these two renames the path briefly does not exist: a reader that looks
        # exactly then finds nothing rather than a mix of old and new parts.
        if self.target.exists():
            os.rename(self.target, self.old)
        try:
            os.rename(self.staging, self.target)
        except BaseException:
            if self.old.exists() and not self.target.exists():
                os.rename(self.old, self.target)
            raise
        shutil.rmtree(self.old, ignore_errors=True)

    def abort(self) -> None:
        if self.options.mode == "replace":
            shutil.rmtree(self.staging, ignore_errors=True)
        elif self.target.is_dir():
            self._remove_temporaries(self.target)

    def _remove_temporaries(self, directory: Path) -> None:
        """Temporary parts of this run left by a process that died mid-write, and its fences."""
        for pattern in (f".part-{glob.escape(self.run)}-*.tmp", f".part-{glob.escape(self.run)}-*.fence"):
            for leftover in directory.glob(pattern):
                leftover.unlink(missing_ok=True)

    def _check_replaceable(self) -> None:
        """Replace deletes the old directory: refuse when it holds anything but part files."""
        if not self.target.is_dir():
            return
        foreign = sorted(
            p.name
            for p in self.target.iterdir()
            if not (
                p.is_file()
                and p.name.startswith(("part-", ".part-"))
                and p.name.endswith((self.suffix, ".tmp", ".fence"))
            )
        )
        if foreign:
            raise PermanentError(
                f"{display(self.target)} holds files that are not part files ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); mode replace would delete them. "
                "Point `path` at a directory of its own"
            )


def _fence_of(fence: Path) -> int:
    try:
        return int(fence.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with ``schema`` (the chunk's first batch's), or an error saying how they differ."""
    if batch.schema.equals(schema):
        return batch
    if batch.schema.names == schema.names:
        try:  # each value kept exactly (Arrow's cast alone would round a float64 to a float32)
            columns = [lossless_cast(c, f.type) for c, f in zip(batch.columns, schema, strict=True)]
            return pa.RecordBatch.from_arrays(columns, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            pass
    raise PermanentError(
        f"the batches of one chunk differ: {schema_difference(schema, batch.schema)}; a part file has one schema"
    )
