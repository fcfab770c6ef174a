"""Rejected rows of a chunk, written to the run's rejects directory (``on_error: skip``).

One JSON-lines file per chunk, ``chunk-00003.jsonl``, written to a temporary file and moved
into place when the chunk succeeds, so a retried chunk replaces its earlier attempt's rejects
instead of adding to them.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etl.stages import Rejects

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ChunkRejects"]


class ChunkRejects(Rejects):
    """Collects the rejected rows of one attempt at one chunk.

    Each line holds ``chunk``, ``row`` (0-based position in the chunk, as the rows reached the
    stage), ``stage``, ``column``, ``reason`` and ``record`` (the row's values).
    """

    def __init__(self, directory: Path, chunk: int) -> None:
        self.directory = directory
        self.chunk = chunk
        self.count = 0
        #: Rows the rejecting stage had seen in this chunk before its current batch.
        self.offset = 0
        self.path = directory / f"chunk-{chunk:05d}.jsonl"
        self._tmp = directory / f".chunk-{chunk:05d}.jsonl.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        self._file: Any = None

    def reject(
        self,
        rows: pa.RecordBatch,
        positions: Sequence[int],
        *,
        stage: str,
        reasons: Sequence[str],
        column: str | None = None,
    ) -> None:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in commit()
        for record, position, reason in zip(rows.to_pylist(), positions, reasons, strict=True):
            line = {
                "chunk": self.chunk,
                "row": self.offset + position,
                "stage": stage,
                "column": column,
                "reason": reason,
                "record": record,
            }
            self._file.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")
        self.count += len(positions)

    def commit(self) -> Path | None:
        """The attempt succeeded: put its rejects in place (removing an earlier attempt's)."""
        if self._file is None:
            self.path.unlink(missing_ok=True)
            return None
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """The attempt failed: forget its rejects."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)
