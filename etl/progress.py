"""Progress figures of a run: rows done, rows/s, ETA, chunks by state. One place computes them
for every display, and formats them for each.

:class:`RunProgress` is built from a run record (and optionally its chunks' records, and the time
``now``); :func:`status_line` (``etl status``, ``--follow``, ``--wait``), :func:`chunk_line` (the
log line of each chunk done, whichever driver ran it), :func:`runs_row` (``etl runs``) and
:meth:`RunProgress.to_json` (``--json``, the dashboard's API and pages) all format that one
object, so that every view shows the same numbers for the same run.

Which rows: **progress is counted in rows read**. The total is what the source counted, so the
share done, the rows shown as "rows", rows/s and the ETA are all rows read. Rows written (and
rejected) can differ (a ``filter`` transform, ``on_error: skip``): every display that shows
them labels them ``written`` (and ``rejected``); the per-chunk and status lines add them only
when they differ from the rows read.

This module sits below the run store in the layers: it takes any object with the attributes of
a run record (:class:`RunLike`) and of a chunk record (:class:`ChunkLike`), and never imports
:mod:`etl.store`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from etl.runs import ChunkResult
from etl.units import format_duration

__all__ = [
    "CHUNK_STATES",
    "ChunkLike",
    "RunLike",
    "RunProgress",
    "chunk_line",
    "runs_header",
    "runs_row",
    "status_line",
]

#: A chunk's states, in the order displays list them.
CHUNK_STATES = ("pending", "queued", "running", "retrying", "done", "failed")
#: A run's final states: a finished run has no ETA, and its figures stop at its end.
FINISHED = ("completed", "failed", "cancelled")
#: Width of the status line's bar, in characters.
BAR = 30


class RunLike(Protocol):
    """What progress needs of a run (the attributes of :class:`etl.store.RunRecord`). Times are
    Unix timestamps."""

    id: str
    job: str
    state: str
    rows_total: int | None
    rows_exact: bool
    chunks_total: int
    chunks_done: int
    chunks_failed: int
    rows_read: int
    rows_written: int
    rows_rejected: int
    retries: int
    created_at: float
    started_at: float | None
    finished_at: float | None


class ChunkLike(Protocol):
    """What progress needs of a chunk (the attributes of :class:`etl.store.ChunkRecord`)."""

    index: int
    state: str
    attempts: int
    label: str
    rows_read: int
    rows_written: int


@dataclass(frozen=True)
class RunProgress:
    """A run's progress at one moment: its counters and the figures derived from them.

    Attributes:
        run_id, job, state: the run's.
        rows_total: rows the source counted (``None``: unknown); ``rows_exact`` is False for an
            estimate.
        rows_read, rows_written, rows_rejected: rows so far, over the chunks done.
        fraction: share done, 0 to 1: rows read over the total when it is known, else chunks
            done over chunks planned; 1 for a completed run (an estimate may have been high),
            0 for a run not planned yet.
        seconds: time since the run started (until it finished, for a finished run); 0 before.
        rows_per_second: rows read per second over ``seconds`` (0 while ``seconds`` is 0).
        eta_seconds: seconds left at the pace so far; ``None`` unless the run is active, has a
            pace, and is not done.
        chunks_total, chunks_done, chunks_failed: the run's chunk counters.
        chunk_states: chunks by state (every state of :data:`CHUNK_STATES`), when the chunks'
            records were given; else ``None``.
        retries: failed attempts queued again.
    """

    run_id: str
    job: str
    state: str
    rows_total: int | None
    rows_exact: bool
    rows_read: int
    rows_written: int
    rows_rejected: int
    fraction: float
    seconds: float
    rows_per_second: float
    eta_seconds: float | None
    chunks_total: int
    chunks_done: int
    chunks_failed: int
    chunk_states: dict[str, int] | None
    retries: int

    @classmethod
    def of(cls, run: RunLike, chunks: Sequence[ChunkLike] | None = None, now: float | None = None) -> RunProgress:
        """The progress of ``run`` at ``now`` (a Unix time; the current time by default), with
        its chunks by state if ``chunks`` (its chunk records) are given."""
        now = time.time() if now is None else now
        finished = run.state in FINISHED
        if run.started_at is None:
            seconds = 0.0
        else:
            end = run.finished_at if finished and run.finished_at is not None else now
            seconds = max(end - run.started_at, 0.0)
        if run.state == "completed":
            fraction = 1.0
        elif run.rows_total:
            fraction = min(run.rows_read / run.rows_total, 1.0)
        elif run.chunks_total:
            fraction = min(run.chunks_done / run.chunks_total, 1.0)
        else:
            fraction = 0.0
        eta = None
        if run.state == "active" and seconds > 0 and 0 < fraction < 1:
            eta = seconds * (1 - fraction) / fraction
        states = None
        if chunks is not None:
            states = dict.fromkeys(CHUNK_STATES, 0)
            for chunk in chunks:
                states[chunk.state] = states.get(chunk.state, 0) + 1
        return cls(
            run_id=run.id,
            job=run.job,
            state=run.state,
            rows_total=run.rows_total,
            rows_exact=run.rows_exact,
            rows_read=run.rows_read,
            rows_written=run.rows_written,
            rows_rejected=run.rows_rejected,
            fraction=fraction,
            seconds=seconds,
            rows_per_second=run.rows_read / seconds if seconds > 0 else 0.0,
            eta_seconds=eta,
            chunks_total=run.chunks_total,
            chunks_done=run.chunks_done,
            chunks_failed=run.chunks_failed,
            chunk_states=states,
            retries=run.retries,
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def chunks_in(self, state: str) -> int | None:
        """Chunks in ``state``, or ``None`` without the chunks' records."""
        return None if self.chunk_states is None else self.chunk_states.get(state, 0)

    # -- the parts every display shares --------------------------------------------------------

    def percent(self) -> str:
        """``20.0%``."""
        return f"{self.fraction:.1%}"

    def rows(self) -> str:
        """``200,000/1,000,000 rows`` (rows read; ``~1,000,000`` for an estimated total), or
        ``200,000 rows`` when the total is unknown."""
        if self.rows_total is None:
            return f"{self.rows_read:,} rows"
        return f"{self.rows_read:,}/{'' if self.rows_exact else '~'}{self.rows_total:,} rows"

    def rate(self) -> str:
        """``161,290 rows/s``."""
        return f"{self.rows_per_second:,.0f} rows/s"

    def eta(self) -> str | None:
        """``ETA 5.0s``, or ``None`` without an ETA."""
        return None if self.eta_seconds is None else f"ETA {format_duration(self.eta_seconds)}"

    def chunks(self) -> str:
        """``chunks 4/20``, with those running, retrying and failed when there are any
        (running and retrying only with the chunks' records): ``chunks 4/20, 2 running, 1 failed``."""
        counts = [(self.chunks_in("running"), "running"), (self.chunks_in("retrying"), "retrying")]
        counts.append((self.chunks_failed, "failed"))
        return f"chunks {self.chunks_done}/{self.chunks_total}" + "".join(f", {n} {w}" for n, w in counts if n)

    def extras(self) -> list[str]:
        """``198,000 written`` when rows written differ from rows read, ``2,000 rejected`` when
        rows were rejected."""
        found = []
        if self.rows_written != self.rows_read:
            found.append(f"{self.rows_written:,} written")
        if self.rows_rejected:
            found.append(f"{self.rows_rejected:,} rejected")
        return found

    # -- for machines --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The figures for ``--json`` and the API: counters as they are, ``fraction`` to 4
        places, ``seconds`` to 3, ``rows_per_second`` and ``eta_seconds`` to 1; and, with the
        chunks' records, ``chunks_running``, ``chunks_retrying``, ``chunks_queued`` and
        ``chunks_pending``."""
        data: dict[str, Any] = {
            "state": self.state,
            "rows_total": self.rows_total,
            "rows_exact": self.rows_exact,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_rejected": self.rows_rejected,
            "fraction": round(self.fraction, 4),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "chunks_total": self.chunks_total,
            "chunks_done": self.chunks_done,
            "chunks_failed": self.chunks_failed,
            "retries": self.retries,
        }
        if self.chunk_states is not None:
            for state in ("running", "retrying", "queued", "pending"):
                data[f"chunks_{state}"] = self.chunk_states[state]
        return data

    def display(self) -> dict[str, str]:
        """The same figures as text, for pages that show them as they come (the dashboard's):
        ``percent``, ``rows`` (read, ``200,000``), ``rows_total`` (``""`` when unknown),
        ``written``, ``rate`` (``161,290``), ``eta`` (``5.0s``, or ``–``), ``chunks``
        (``4/20``), ``retries``, and ``line``: :func:`status_line` without the bar."""
        return {
            "percent": self.percent(),
            "rows": f"{self.rows_read:,}",
            "rows_total": "" if self.rows_total is None else f"{'' if self.rows_exact else '~'}{self.rows_total:,}",
            "written": f"{self.rows_written:,}",
            "rate": f"{self.rows_per_second:,.0f}",
            "eta": "–" if self.eta_seconds is None else format_duration(self.eta_seconds),
            "chunks": f"{self.chunks_done}/{self.chunks_total}",
            "retries": f"{self.retries:,}",
            "line": status_line(self, bar=False),
        }


# -- the formatters ----------------------------------------------------------------------------


def status_line(progress: RunProgress, *, bar: bool = True) -> str:
    """The progress line of ``etl status``, ``--follow`` and ``etl run --wait``: state, bar (with
    ``bar``) and share, rows, rows/s, ETA, chunks (:meth:`RunProgress.chunks`), then the rows
    written and rejected when they differ from those read, and the retries::

        active    [######........................]  20.0% · 200,000/1,000,000 rows · 161,290 rows/s · ETA 5.0s · ...
    """
    share = progress.percent().rjust(6)
    if bar:
        filled = int(progress.fraction * BAR)
        share = f"[{'#' * filled}{'.' * (BAR - filled)}] {share}"
    parts = [share, progress.rows(), progress.rate()]
    if (eta := progress.eta()) is not None:
        parts.append(eta)
    parts.append(progress.chunks())
    parts += progress.extras()
    if progress.retries:
        parts.append(f"{progress.retries:,} retries")
    return f"{progress.state:<9} " + " · ".join(parts)


def chunk_line(run: RunLike, index: int, result: ChunkResult, now: float | None = None) -> str:
    """The log line of a chunk done, the same from the in-process runner and from a worker;
    ``run`` is the run's record *after* the chunk was counted in it::

        chunk 7 done in 0.2s: 100 rows · 4/20 chunks · 400/1,000 rows (40.0%) · 812 rows/s · ETA 1.2s

    The chunk's rows written and rejected follow its rows when they differ (``100 rows, 98
    written, 2 rejected``), and ``attempt 2`` ends the line for a chunk that needed more than one.
    """
    progress = RunProgress.of(run, now=now)
    done = f"chunk {index} done in {format_duration(result.seconds)}: {result.rows_read:,} rows"
    if result.rows_written != result.rows_read:
        done += f", {result.rows_written:,} written"
    if result.rows_rejected:
        done += f", {result.rows_rejected:,} rejected"
    chunks = f"{progress.chunks_done}/{progress.chunks_total} chunks"
    parts = [done, chunks, f"{progress.rows()} ({progress.percent()})", progress.rate()]
    if (eta := progress.eta()) is not None:
        parts.append(eta)
    if result.attempt > 1:
        parts.append(f"attempt {result.attempt}")
    return " · ".join(parts)


_RUNS_COLUMNS = "{:<24} {:<20} {:<10} {:>6} {:>14} {:>14} {:>9}  {}"


def runs_header() -> str:
    """The header of ``etl runs``'s table."""
    return _RUNS_COLUMNS.format("run", "job", "state", "done", "rows", "written", "chunks", "created")


def runs_row(progress: RunProgress, created_at: float) -> str:
    """A run's row in ``etl runs``: its id, job, state, share done, rows read, rows written,
    chunks done of planned, and when it was created (UTC)."""
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created_at)) + "Z"
    return _RUNS_COLUMNS.format(
        progress.run_id,
        progress.job,
        progress.state,
        progress.percent(),
        f"{progress.rows_read:,}",
        f"{progress.rows_written:,}",
        f"{progress.chunks_done}/{progress.chunks_total}",
        created,
    )
