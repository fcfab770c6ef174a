"""Progress figures of a run: rows done, rows/s, ETA. One place computes them for every display."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etl.units import format_duration

__all__ = ["Progress"]


@dataclass
class Progress:
    """Counters of a run in flight, and the figures derived from them.

    ``started`` and the ``now`` arguments are monotonic seconds from the same clock.
    """

    rows_total: int | None
    chunks_total: int
    started: float
    rows_done: int = 0
    chunks_done: int = 0

    def advance(self, rows: int, chunks: int = 1) -> None:
        self.rows_done += rows
        self.chunks_done += chunks

    def elapsed(self, now: float) -> float:
        return max(now - self.started, 0.0)

    def rows_per_second(self, now: float) -> float:
        elapsed = self.elapsed(now)
        return self.rows_done / elapsed if elapsed > 0 else 0.0

    def fraction(self) -> float | None:
        """Share of the work done, from rows when the total is known, else from chunks."""
        if self.rows_total:
            return min(self.rows_done / self.rows_total, 1.0)
        if self.chunks_total:
            return self.chunks_done / self.chunks_total
        return None

    def eta(self, now: float) -> float | None:
        """Seconds left at the average pace so far, or ``None`` before there is a pace."""
        fraction = self.fraction()
        if not fraction or fraction >= 1.0:
            return 0.0 if fraction == 1.0 else None
        return self.elapsed(now) * (1.0 - fraction) / fraction

    def line(self, now: float) -> str:
        """``chunk 3/20 · 150,000/1,000,000 rows (15.0%) · 812,345 rows/s · ETA 1.2s``."""
        rows = (
            f"{self.rows_done:,}/{self.rows_total:,} rows"
            if self.rows_total is not None
            else f"{self.rows_done:,} rows"
        )
        parts = [f"chunk {self.chunks_done}/{self.chunks_total}", rows]
        fraction = self.fraction()
        if fraction is not None:
            parts[-1] += f" ({fraction:.1%})"
        parts.append(f"{self.rows_per_second(now):,.0f} rows/s")
        eta = self.eta(now)
        if eta is not None and self.chunks_done < self.chunks_total:
            parts.append(f"ETA {format_duration(eta)}")
        return " · ".join(parts)


def chunk_line(run: Any, result: Any) -> str:
    """The log line of a chunk done, from its run's record (either driver): ``chunk 3 done: …``."""
    total = f"/{run.rows_total:,}" if run.rows_total is not None else ""
    share = f" ({run.rows_read / run.rows_total:.1%})" if run.rows_total else ""
    eta = run.eta()
    parts = [
        f"chunk {result.index} done: {result.rows_written:,} rows in {format_duration(result.seconds)}",
        f"run {run.chunks_done}/{run.chunks_total} chunks, {run.rows_read:,}{total} rows{share}",
        f"{run.rows_per_second():,.0f} rows/s",
    ]
    if eta is not None and run.chunks_done < run.chunks_total:
        parts.append(f"ETA {format_duration(eta)}")
    if result.rows_rejected:
        parts.append(f"{result.rows_rejected:,} rejected")
    if result.attempt > 1:
        parts.append(f"attempt {result.attempt}")
    return " · ".join(parts)
