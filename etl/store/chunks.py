"""Chunks: handing them out, and each attempt's lease, fencing token and outcome.

Only the holder of a chunk's latest ``token`` may renew, complete, retry, fail or release it:
a refused call returns ``None`` (``"lost"`` for :meth:`Chunks.renew`, a :class:`Completion` not
``accepted`` for :meth:`Chunks.complete`) and records nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from etl.kv import Tx
from etl.store.base import StoreBase
from etl.store.records import FOREVER, ChunkRecord, Completion, RunRecord

__all__ = ["Chunks"]


class Chunks(StoreBase):
    def get_chunks(self, run_id: str, chunks_total: int | None = None) -> list[ChunkRecord]:
        run = self.get_run(run_id) if chunks_total is None else None
        total = chunks_total if chunks_total is not None else (run.chunks_total if run else 0)
        docs = self.kv.get_many([self._chunk_key(run_id, i) for i in range(total)])
        return [ChunkRecord.from_doc(d) for d in docs if d]

    def in_flight(self, run_id: str, chunks_total: int | None = None) -> bool:
        """Whether a chunk of the run is being written now (running, its lease not run out)."""
        now = self.clock()
        return any(c.state == "running" and (c.lease_until or 0) >= now for c in self.get_chunks(run_id, chunks_total))

    def dispatch(self, run_id: str, limit: int) -> list[int]:
        """Move pending chunks to ``queued`` until ``limit`` are in flight; their indices."""
        return self._change_run(run_id, lambda tx, run: self._hand_out(tx, run, limit), [self._pending(run_id)]) or []

    def _pending(self, run_id: str) -> str:
        return self._z(f"pending:{run_id}")

    def _hand_out(self, tx: Tx, run: RunRecord, limit: int) -> list[int]:
        """Queue the run's lowest pending chunks until ``limit`` are in flight (the run and its
        pending set watched); their indices."""
        if run.state != "active" or run.chunks_done + run.chunks_failed >= run.chunks_total:
            return []
        pending = self._pending(run.id)
        inflight = run.chunks_total - run.chunks_done - run.chunks_failed - tx.zcard(pending)
        room = max(limit - inflight, 0)
        chosen = [int(m) for m, _ in tx.zrange(pending, -FOREVER, FOREVER, room)] if room else []
        docs = tx.get_many([self._chunk_key(run.id, i) for i in chosen]) if chosen else []
        now = self.clock()
        for doc in docs:
            chunk = ChunkRecord.from_doc(doc) if doc else None
            if chunk is not None and chunk.state == "pending":
                chunk.state, chunk.queued_at = "queued", now
                self._save_chunk(tx, chunk)
        return chosen

    def claim(self, run_id: str, index: int, worker: str, lease: float) -> ChunkRecord | None:
        """Take a queued (or retrying, or abandoned) chunk of an active run: a new attempt, with
        a new fencing token (``.token``). Returns the chunk, running; ``None`` when it is not
        there to take."""
        claimed = self.claim_with_run(run_id, index, worker, lease)
        return claimed[1] if claimed is not None else None

    def claim_with_run(
        self, run_id: str, index: int, worker: str, lease: float
    ) -> tuple[RunRecord, ChunkRecord] | None:
        """:meth:`claim`, returning the run as the claim read it too (what a worker needs to
        work the chunk: no second read)."""

        def claim(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> tuple[RunRecord, ChunkRecord] | None:
            if run.state != "active":
                return None
            now = self.clock()
            abandoned = chunk.state == "running" and (chunk.lease_until or 0) < now
            # The process driving an in-process run takes its chunks straight from pending.
            takes = ("queued", "retrying", "pending") if run.in_process else ("queued", "retrying")
            if chunk.state not in takes and not abandoned:
                return None
            chunk.state, chunk.attempts, chunk.token = "running", chunk.attempts + 1, chunk.token + 1
            chunk.worker = worker
            chunk.lease_until, chunk.not_before = now + lease, None
            return run, chunk

        return self._change_chunk(run_id, index, claim)

    def renew(self, run_id: str, index: int, token: int, lease: float) -> Literal["ok", "lost", "stopped"]:
        """Extend the lease of attempt ``token``: ``lost`` if another attempt holds the chunk now,
        ``stopped`` if the run was cancelled or failed."""

        def renew(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> Literal["ok", "lost", "stopped"]:
            if chunk.state != "running" or chunk.token != token:
                return "lost"
            if run.state != "active":
                return "stopped"
            chunk.lease_until = self.clock() + lease
            return "ok"

        # The run is only read: another chunk's completion must not make each renewal start over.
        return self._change_chunk(run_id, index, renew, watch_run=False) or "lost"

    def complete(
        self, run_id: str, index: int, token: int, result: Any, signature: str = "", hand_out: int = 0
    ) -> Completion:
        """Record attempt ``token`` as done, with its counters (a :class:`~etl.runs.ChunkResult`)
        and the completion's ``signature``. ``last`` is true for exactly one completion: the one
        that makes every chunk done. The completion holds the run with its new counters and the
        chunk, done.

        With ``hand_out`` (the run's parallelism), the same transaction queues pending chunks
        until that many are in flight, as :meth:`dispatch` does: the completion's ``queued``."""

        def complete(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> Completion | None:
            if chunk.state != "running" or chunk.token != token:
                return None
            chunk.state, chunk.worker, chunk.lease_until, chunk.error = "done", None, None, None
            chunk.done_signature = signature
            chunk.rows_read, chunk.rows_written = result.rows_read, result.rows_written
            chunk.rows_rejected, chunk.seconds = result.rows_rejected, result.seconds
            chunk.finished_at = self.clock()
            run.rows_read += result.rows_read
            run.rows_written += result.rows_written
            run.rows_rejected += result.rows_rejected
            run.chunks_done += 1
            last = run.state == "active" and run.chunks_done == run.chunks_total
            queued = self._hand_out(tx, run, hand_out) if hand_out else []
            return Completion(True, last, run, chunk, tuple(queued))

        watch = [self._pending(run_id)] if hand_out else []
        return self._change_chunk(run_id, index, complete, watch=watch) or Completion(False)

    def retry_later(self, run_id: str, index: int, token: int, error: str, delay: float) -> ChunkRecord | None:
        """Attempt ``token`` failed and will be tried again after ``delay`` seconds. Returns the
        chunk, retrying (``not_before`` is when); ``None`` if the attempt was not the chunk's
        latest."""

        def later(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> ChunkRecord | None:
            if chunk.state != "running" or chunk.token != token:
                return None
            chunk.state, chunk.worker, chunk.lease_until = "retrying", None, None
            chunk.not_before, chunk.error = self.clock() + delay, error
            chunk.errors = [*chunk.errors, f"attempt {chunk.attempts}: {error}"][-10:]
            run.retries += 1
            return chunk

        return self._change_chunk(run_id, index, later)

    def fail_chunk(self, run_id: str, index: int, token: int | None, error: str) -> RunRecord | None:
        """The chunk failed for good (permanent error, or attempts spent): it and its run fail.
        ``token=None`` is the reaper's verdict on a chunk whose workers keep dying. Returns the
        run (failed, with this chunk's error unless it had finished already); ``None`` if the
        chunk was done or failed, or the attempt was not its latest."""

        def fail(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> RunRecord | None:
            if chunk.state in ("done", "failed"):
                return None
            if token is not None and (chunk.state != "running" or chunk.token != token):
                return None
            chunk.state, chunk.worker, chunk.lease_until, chunk.error = "failed", None, None, error
            chunk.errors = [*chunk.errors, f"attempt {chunk.attempts}: {error}"][-10:]
            run.chunks_failed += 1
            if not run.finished:
                run.error, run.error_chunk = error, index
                self._set_state(tx, run, "failed")
            return run

        return self._change_chunk(run_id, index, fail)

    def release(self, run_id: str, index: int, token: int) -> ChunkRecord | None:
        """A worker shutting down gives back the chunk it holds (attempt ``token``): queued
        again at once, without waiting for the lease to run out. Returns the chunk, queued;
        ``None`` if the attempt was not the chunk's latest."""

        def release(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> ChunkRecord | None:
            if chunk.state != "running" or chunk.token != token:
                return None
            chunk.state, chunk.worker, chunk.lease_until, chunk.queued_at = "queued", None, None, self.clock()
            chunk.errors = [*chunk.errors, f"attempt {chunk.attempts}: its worker shut down before finishing it"][-10:]
            chunk.attempts -= 1  # it did not fail: a rolling restart must not use up its attempts
            return chunk

        return self._change_chunk(run_id, index, release, watch_run=False)
