"""What a run is, and what it produced: plain, picklable records."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["ChunkResult", "RunInfo", "RunResult", "RunState", "new_run_id"]

RunState = Literal["waiting", "active", "completed", "failed", "cancelled"]


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261128-193300-4f1a2b``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunInfo:
    """A planned run.

    Attributes:
        id: the run id.
        job: the job's name.
        params: the job's parameters, typed.
        rows: the rows the source holds (``None`` when it cannot tell).
        rows_exact: whether ``rows`` is exact or an estimate.
        chunks: the number of chunks planned.
        created_at: when the run was created (UTC).
        rejects_dir: where rejected rows are written, if any are.
        window: an incremental run's window (:class:`~etl.incremental.Window` as JSON).
    """

    id: str
    job: str
    params: dict[str, Any]
    rows: int | None
    rows_exact: bool
    chunks: int
    created_at: datetime = field(default_factory=utcnow)
    rejects_dir: str | None = None
    window: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChunkResult:
    """One chunk, written.

    Attributes:
        index: the chunk's index in the plan.
        rows_read: rows the source gave.
        rows_written: rows the sink wrote.
        rows_rejected: rows a stage rejected (``on_error: skip``).
        seconds: how long the successful attempt took.
        attempt: which attempt succeeded (1 for the first).
    """

    index: int
    rows_read: int
    rows_written: int
    rows_rejected: int
    seconds: float
    attempt: int


@dataclass
class RunResult:
    """A finished run's counters and timings.

    Attributes:
        run_id: the run id.
        job: the job's name.
        state: ``completed``, ``failed`` or ``cancelled``.
        rows_total: rows the source said it held (``None`` when unknown).
        rows_read, rows_written, rows_rejected: counters over all chunks.
        chunks_total, chunks_done, chunks_failed: chunk counters.
        retries: attempts beyond the first, over all chunks.
        started_at, finished_at: UTC timestamps.
        error: the message of the error that failed the run.
        error_chunk: the chunk it happened in, when it happened in one.
        rejects_dir: the directory holding rejected rows, when there were any.
    """

    run_id: str
    job: str
    state: RunState = "active"
    rows_total: int | None = None
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    retries: int = 0
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    error: str | None = None
    error_chunk: int | None = None
    rejects_dir: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "completed"

    @property
    def seconds(self) -> float:
        end = self.finished_at or utcnow()
        return max((end - self.started_at).total_seconds(), 0.0)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: timestamps in ISO 8601 UTC, derived figures included."""
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            value = data[key]
            data[key] = value.isoformat().replace("+00:00", "Z") if value else None
        data["seconds"] = round(self.seconds, 3)
        data["rows_per_second"] = round(self.rows_per_second, 1)
        return data
