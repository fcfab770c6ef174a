"""What the dashboard reads from the run store, as the pages and the JSON API show it. Every
method is blocking I/O: the app calls them in a worker thread.

Every run the pages' scripts, the JSON API and the event streams show goes through one function,
:func:`run_json`: ``RunRecord.to_json`` (the one place that decides what of a run is shown: secrets in its
parameters and overrides masked, no signature), plus the figures as text and its chunks' states.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etl import api
from etl.progress import RunProgress
from etl.store import ChunkRecord, RunRecord
from etl.store import iso_time as _iso

if TYPE_CHECKING:
    from etl.scheduler import JobFiles

__all__ = ["LOG_LINES", "MAX_PAGE", "PAGE_SIZE", "STATES", "Board", "run_json"]

STATES = ("waiting", "active", "completed", "failed", "cancelled")
PAGE_SIZE = 25
#: The runs pages go back this far (10,000 runs): further back, filter by job or state, or use the API.
MAX_PAGE = 399
LOG_LINES = 200


def run_json(run: RunRecord, chunks: list[ChunkRecord] | None = None) -> dict[str, Any]:
    """A run as the API and the event streams show it: the run's fields and the figures of
    :class:`~etl.progress.RunProgress` (``RunRecord.to_json``), the same figures as text
    (``display``, which the pages show as they are), and (given the chunks) each chunk's state."""
    now = time.time()
    data = run.to_json(now, chunks)
    data["display"] = RunProgress.of(run, chunks, now).display()
    if chunks is not None:
        data["chunks"] = [
            {
                "index": c.index,
                "state": c.state,
                "attempts": c.attempts,
                "rows_read": c.rows_read,
                "rows_written": c.rows_written,
                "label": c.label,
            }
            for c in chunks
        ]
    return data


class Board:
    """The dashboard's reads of ``queue``'s run store."""

    def __init__(self, queue: Any, configs: str | None = None) -> None:
        self.queue = queue
        self.store = queue.store
        self.configs = configs
        self._files: JobFiles | None = None
        self._throughput: tuple[float, list[dict[str, Any]]] | None = None

    def summary(self) -> dict[str, Any]:
        from etl.worker import WorkerOptions

        counts = {state: self.store.count_runs(state) for state in STATES}
        live = self.store.workers(WorkerOptions.from_env().heartbeat * 3)
        return {
            "counts": counts,
            "workers": len(live),
            "slots": sum(w.concurrency for w in live),
            "stalled": counts["waiting"] + counts["active"] > 0 and not live,
        }

    def runs_page(self, state: str | None, job: str | None, page: int) -> tuple[list[RunRecord], bool]:
        found = self.store.list_runs(state=state, job=job, limit=(page + 1) * PAGE_SIZE + 1)
        start = page * PAGE_SIZE
        return found[start : start + PAGE_SIZE], len(found) > start + PAGE_SIZE

    def run(self, run_id: str) -> tuple[RunRecord, list[ChunkRecord]] | None:
        run = self.store.get_run(run_id)
        return None if run is None else (run, self.store.get_chunks(run.id, run.chunks_total))

    def run_snapshot(self, run_id: str) -> dict[str, Any] | None:
        """One run as its event stream sends it (``None``: it is gone)."""
        found = self.run(run_id)
        return None if found is None else run_json(*found)

    def all_snapshot(self) -> dict[str, Any]:
        """The counts, and the progress of every run waiting, active, or finished in the last
        minute (so that a stream sees a run's last change)."""
        found = [*self.store.list_runs(state="waiting", limit=200), *self.store.active_runs(limit=200)]
        found += self.store.finished_since(time.time() - 60, limit=200)
        return {"summary": self.summary(), "runs": {r.id: run_json(r) for r in found}}

    def throughput(self) -> list[dict[str, Any]]:
        """Rows read per minute over the last hour (from the chunks done in that time), as the
        runs' rows/s count them."""
        now = time.time()
        if self._throughput is not None and now - self._throughput[0] < 5:
            return self._throughput[1]
        since = now - 3600
        runs = {r.id: r for r in [*self.store.active_runs(limit=200), *self.store.finished_since(since)]}
        minutes: dict[int, int] = {}
        for run in runs.values():
            for chunk in self.store.get_chunks(run.id, run.chunks_total):
                if chunk.finished_at is not None and chunk.finished_at >= since:
                    minute = int(chunk.finished_at // 60) * 60
                    minutes[minute] = minutes.get(minute, 0) + chunk.rows_read
        first = int(since // 60) * 60 + 60
        points = [{"minute": _iso(m), "rows": minutes.get(m, 0)} for m in range(first, int(now // 60) * 60 + 60, 60)]
        self._throughput = (now, points)
        return points

    def schedule(self) -> list[dict[str, Any]]:
        """The scheduled jobs of ``configs`` with their next fire times, and the files there that
        fail to load (``errors``: their schedules, if any, do not fire)."""
        if not self.configs or not Path(self.configs).is_dir():
            return []
        from etl.schedule import next_slots
        from etl.scheduler import JobFiles, clock_from_env, scheduled_jobs

        if self._files is None:  # each file read again only when it changes
            self._files = JobFiles(self.configs)
        jobs, problems = scheduled_jobs(self.configs, self._files)
        found: list[dict[str, Any]] = []
        for job in jobs:
            spec = job.spec
            state = self.store.schedule_state(job.name)
            found.append(
                {
                    "file": job.file,
                    "job": job.name,
                    "schedule": spec.schedule,
                    "timezone": spec.timezone,
                    "paused": bool(state.get("paused")),
                    "next": [s.isoformat() for s in next_slots(spec.schedule, spec.timezone, clock_from_env()(), 3)],
                }
            )
        found += [{"file": file, "errors": [str(e) for e in errors]} for file, errors in sorted(problems.items())]
        return found

    def log_lines(self, run_id: str) -> list[str] | None:
        path = api.state_dir() / "runs" / run_id / "run.log"
        if not path.is_file():
            return None
        with path.open(encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        return [line.rstrip("\n") for line in lines[-LOG_LINES:]]
