"""Finalizing: once every chunk is done, one worker at a time holds the run's finalize lease
while its sink makes the run's rows visible; then the run completes, and an incremental run's
mark moves in the same transaction."""

from __future__ import annotations

from etl.kv import Tx
from etl.store.marks import Marks
from etl.store.records import RunRecord

__all__ = ["Finalizing"]


class _Unwatched(Exception):
    """A transaction found that it must change a key it does not watch: start it over, watching
    ``key`` too (on Redis, a key must be watched before it is read)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class Finalizing(Marks):
    def claim_finalize(self, run_id: str, worker: str, lease: float) -> RunRecord | None:
        """Take the finalizing of an active run whose chunks are all done (once, or again when
        the worker that had it stopped renewing). Returns the run, ``worker`` its finalizer;
        ``None`` if it is not ready, or another worker holds it."""

        def claim(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.state != "active" or run.chunks_done != run.chunks_total:
                return None
            now = self.clock()
            if run.finalizer and (run.finalize_until or 0) >= now and run.finalizer != worker:
                return None
            run.finalize_attempts += 1
            run.finalizer, run.finalize_until = worker, now + lease
            tx.zadd(self._z("finalize"), run.id, run.finalize_until)
            return run

        return self._change_run(run_id, claim)

    def renew_finalize(self, run_id: str, worker: str, lease: float) -> RunRecord | None:
        """Extend ``worker``'s finalize lease. Returns the run; ``None`` if it is no longer
        active or another worker took the finalizing over."""

        def renew(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.state != "active" or run.finalizer != worker:
                return None
            run.finalize_until = self.clock() + lease
            tx.zadd(self._z("finalize"), run.id, run.finalize_until)
            return run

        return self._change_run(run_id, renew)

    def finish(self, run_id: str, worker: str | None = None, job: str | None = None) -> RunRecord | None:
        """The run completed: every chunk written and the sink finalized (by ``worker``). An
        incremental run's mark moves to its window's upper bound in the same transaction.
        Returns the run, completed; ``None`` if a chunk is not done, the run is not active, or
        another worker holds its finalizing.

        ``job`` (the run's job, when the caller has the run) saves an incremental run's
        transaction from starting over once to watch the job's mark, which it can only find in
        the run it reads.
        """
        watch = [self._mark_key(job)] if job is not None else []

        def finish(tx: Tx, run: RunRecord) -> RunRecord | None:
            if run.state != "active" or run.chunks_done != run.chunks_total:
                return None
            if worker is not None and run.finalizer not in (None, worker):
                return None
            if run.window is not None and self._mark_key(run.job) not in watch:
                raise _Unwatched(self._mark_key(run.job))
            run.error, run.error_chunk = None, None
            self._set_state(tx, run, "completed")
            if run.window is not None:
                self._advance(tx, run.job, run.window, run.id)
            return run

        try:
            return self._change_run(run_id, finish, watch)
        except _Unwatched as exc:
            watch.append(exc.key)
            return self._change_run(run_id, finish, watch)
