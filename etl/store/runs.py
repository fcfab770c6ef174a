"""Runs: creating and listing them, and the transitions of a run as a whole (planned, failed,
cancelled, retried)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from etl.kv import Tx
from etl.stages import Chunk
from etl.store.base import StoreBase
from etl.store.records import FINISHED, FOREVER, ChunkRecord, RunRecord

__all__ = ["Runs"]


class Runs(StoreBase):
    def create_run(self, run: RunRecord, limit: int | None = None) -> list[str] | None:
        """Store a new run, ``waiting``. With ``limit``, only if its job has fewer unfinished
        runs than that; otherwise store nothing and return the unfinished runs' ids."""
        run.created_at = run.created_at or self.clock()
        run.state = "waiting"
        unfinished = self._z(f"unfinished:{run.job}")

        def create(tx: Tx) -> list[str] | None:
            if limit is not None:
                busy = [m for m, _ in tx.zrange(unfinished, -FOREVER, FOREVER, limit)]
                if len(busy) >= limit:
                    return busy
            self._insert_run(tx, run)
            return None

        return self.kv.atomic(create, [self._run_key(run.id), unfinished])

    def unfinished(self, job: str, limit: int = 100) -> list[str]:
        """The job's waiting and active runs, oldest first."""
        return [m for m, _ in self.kv.zrange(self._z(f"unfinished:{job}"), -FOREVER, FOREVER, limit)]

    def list_runs(self, *, state: str | None = None, job: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Runs, newest first, optionally of one state and/or job."""
        index = self._z(f"state:{state}") if state else self._z(f"job:{job}") if job else self._z("runs")
        result: list[RunRecord] = []
        start = 0
        while len(result) < limit:
            ids = self.kv.zrevrange(index, start, start + max(limit * 2, 50) - 1)
            if not ids:
                break
            start += len(ids)
            for run in self._runs(ids):
                if run and (job is None or run.job == job) and (state is None or run.state == state):
                    result.append(run)
        return result[:limit]

    def active_runs(self, limit: int = 1000) -> list[RunRecord]:
        return self.list_runs(state="active", limit=limit)

    def count_runs(self, state: str) -> int:
        return self.kv.zcard(self._z(f"state:{state}"))

    def finished_since(self, since: float, limit: int = 500) -> list[RunRecord]:
        """Runs that finished (in any final state) at or after ``since``."""
        ids: list[str] = []
        for state in FINISHED:
            ids += [m for m, _ in self.kv.zrange(self._z(f"finished:{state}"), since, FOREVER, limit)]
        return [run for run in self._runs(ids[:limit]) if run]

    # -- transitions -------------------------------------------------------------------------

    def set_plan(
        self,
        run_id: str,
        *,
        rows: int | None,
        exact: bool,
        chunks: Sequence[Chunk],
        shared: dict[str, Any],
        window: dict[str, Any] | None = None,
        activate: bool = True,
        sign: tuple[Callable[[RunRecord], str], Callable[[ChunkRecord], str]] | None = None,
    ) -> RunRecord | None:
        """Record the plan of a ``waiting`` run and make it ``active`` (or, with ``activate=False``,
        leave it waiting, planned, for a worker to :meth:`activate`). Returns the run; ``None`` if
        it was not waiting (cancelled meanwhile, or planned already by a re-delivered task).

        A window the run was submitted with stays (its plan was opened with it). ``sign`` gives
        the plan's signature (of the run, planned) and each chunk's (of its record)."""

        def plan(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.state != "waiting" or run.planned:
                return None
            for chunk in chunks:
                record = ChunkRecord(run_id, chunk.index, chunk.label, chunk.rows, dict(chunk.args))
                if sign is not None:
                    record.signature = sign[1](record)
                self._save_chunk(tx, record)
            run.rows_total, run.rows_exact, run.shared = rows, exact, dict(shared)
            run.window = run.window if run.window is not None else window
            run.chunks_total, run.planned = len(chunks), True
            if sign is not None:
                run.plan_signature = sign[0](run)
            if activate:
                run.started_at = self.clock()
                self._set_state(tx, run, "active")
            return run

        return self._change_run(run_id, plan)

    def activate(self, run_id: str) -> RunRecord | None:
        """Start a ``waiting`` run that was planned when it was submitted. Returns the run,
        active; ``None`` if it was not waiting and planned."""

        def activate(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.state != "waiting" or not run.planned:
                return None
            run.started_at = self.clock()
            self._set_state(tx, run, "active")
            return run

        return self._change_run(run_id, activate)

    def fail_run(self, run_id: str, error: str, chunk: int | None = None) -> RunRecord | None:
        """Mark a ``waiting`` or ``active`` run failed (planning failed, a chunk failed for good).
        Returns the run, failed with ``error``; ``None`` if it had finished."""

        def fail(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.finished:
                return None
            run.error, run.error_chunk = error, chunk
            self._set_state(tx, run, "failed")
            return run

        return self._change_run(run_id, fail)

    def cancel(self, run_id: str) -> RunRecord | None:
        """Stop handing out the run's chunks and mark it ``cancelled``. Returns the run,
        cancelled; ``None`` if it had finished."""

        def cancel(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.finished:
                return None
            run.error = run.error or "cancelled"
            self._set_state(tx, run, "cancelled")
            return run

        return self._change_run(run_id, cancel)

    def mark_aborted(self, run_id: str) -> RunRecord | None:
        """A cancelled run's sink has dropped what it staged. Returns the run; ``None`` if it was
        marked so already (by another process that aborted it too): only the first tells the
        plugins."""

        def mark(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.aborted:
                return None
            run.aborted = True
            return run

        return self._change_run(run_id, mark)

    def cancel_failed(self, run_id: str) -> RunRecord | None:
        """A failed run will not be retried: mark it cancelled, so that its staging is dropped.
        Returns the run, cancelled; ``None`` if it was not failed."""

        def cancel(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.state != "failed":
                return None
            tx.zrem(self._z("finished:failed"), run.id)
            self._set_state(tx, run, "cancelled")
            return run

        return self._change_run(run_id, cancel)

    def retry_failed(self, run_id: str) -> list[int]:
        """Make a failed run active again, its failed chunks pending with fresh attempts;
        chunks that were done stay done. (A cancelled run is final: what it staged was dropped.)

        Returns the chunks to run again (none when the run was not failed), not the run: what a
        retry does next depends on them (none left: the run only needs finalizing).
        """

        def retry(tx: Tx, run: RunRecord) -> list[int]:
            if run.state != "failed":
                return []
            again = []
            docs = tx.get_many([self._chunk_key(run_id, i) for i in range(run.chunks_total)])
            for index, doc in enumerate(docs):
                chunk = ChunkRecord.from_doc(doc) if doc else None
                if chunk is None or chunk.state == "done":
                    continue
                if chunk.state in ("failed", "queued", "retrying", "running"):
                    chunk.state, chunk.attempts, chunk.worker, chunk.lease_until = "pending", 0, None, None
                    chunk.error = None
                    self._save_chunk(tx, chunk)
                again.append(index)
            self._unfinish(tx, run)
            run.chunks_failed, run.error, run.error_chunk = 0, None, None
            run.driver, run.finalize_attempts = "queue", 0  # workers take a retried run up
            self._set_state(tx, run, "active" if run.planned else "waiting")
            return again

        return self._change_run(run_id, retry) or []
