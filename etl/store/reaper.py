"""The reaper's queries and repairs: chunks whose lease ran out, chunks whose message may have
been lost, finalize leases that ran out, and what is in flight."""

from __future__ import annotations

from typing import Literal

from etl.kv import Tx
from etl.store.base import StoreBase
from etl.store.records import FOREVER, ChunkRecord, RunRecord

__all__ = ["Reaper"]


class Reaper(StoreBase):
    def expired_leases(self, limit: int = 100) -> list[tuple[str, int]]:
        """Running chunks whose lease ran out: their workers died or hang."""
        rows = self.kv.zrange(self._z("leases"), -FOREVER, self.clock(), limit)
        return [self._split(m) for m, _ in rows]

    def reclaim(self, run_id: str, index: int, max_attempts: int) -> Literal["requeued", "failed", "skip"]:
        """Put a chunk with an expired lease back in the queue, or fail it when it has used up
        its attempts (a chunk that kills every worker that takes it)."""

        def reclaim(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> Literal["requeued", "failed", "skip"]:
            if chunk.state != "running":
                return "skip"
            now = self.clock()
            if (chunk.lease_until or 0) >= now:
                return "skip"
            lost = f"its worker {chunk.worker} stopped renewing the lease (killed, or stalled)"
            if run.in_process:
                lost = f"the process running it ({chunk.worker}) stopped renewing the lease (killed, or stalled)"
            chunk.errors = [*chunk.errors, f"attempt {chunk.attempts}: {lost}"][-10:]
            if run.state != "active":
                chunk.state, chunk.worker, chunk.lease_until = "queued", None, None
                chunk.queued_at = now
                return "skip"
            if chunk.attempts >= max_attempts or run.in_process:
                chunk.state, chunk.worker, chunk.lease_until = "failed", None, None
                chunk.error = lost if run.in_process else f"gave up after {chunk.attempts} attempts: {lost}"
                run.chunks_failed += 1
                run.error, run.error_chunk = chunk.error, index
                self._set_state(tx, run, "failed")
                return "failed"
            chunk.state, chunk.worker, chunk.lease_until, chunk.queued_at = "queued", None, None, now
            chunk.error = lost
            run.retries += 1
            return "requeued"

        return self._change_chunk(run_id, index, reclaim) or "skip"

    def waiting_chunks(self, older_than: float, limit: int = 200) -> list[tuple[str, int]]:
        """Chunks queued (or due for a retry) longer than ``older_than`` seconds ago: their
        message may have been lost with a worker that took it and died before claiming it."""
        rows = self.kv.zrange(self._z("waiting"), -FOREVER, self.clock() - older_than, limit)
        return [self._split(m) for m, _ in rows]

    def touch(self, run_id: str, index: int) -> None:
        """A waiting chunk's message was sent again: restart its clock."""

        def touch(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> None:
            if chunk.state in ("queued", "retrying"):
                chunk.state, chunk.queued_at, chunk.not_before = "queued", self.clock(), None

        self._change_chunk(run_id, index, touch, watch_run=False)

    def park(self, run_id: str, index: int) -> bool:
        """A queued (or retrying) chunk of a run that has failed or was cancelled goes back to
        ``pending``: nothing will run it unless the run is retried, so it stops looking like a
        chunk whose message was lost."""

        def park(tx: Tx, run: RunRecord, chunk: ChunkRecord) -> bool:
            if not run.finished or chunk.state not in ("queued", "retrying"):
                return False
            chunk.state, chunk.queued_at, chunk.not_before = "pending", None, None
            return True

        return self._change_chunk(run_id, index, park) or False

    def chunks_in_flight(self, limit: int = 100_000) -> tuple[int, int, int]:
        """Chunks queued (due now) and retrying (in their backoff) of active runs, and chunks
        running (leased, whatever their run's state): read from the indexes, not the records."""
        now = self.clock()
        active = {m for m, _ in self.kv.zrange(self._z("state:active"), -FOREVER, FOREVER, limit)}
        queued = retrying = 0
        for member, score in self.kv.zrange(self._z("waiting"), -FOREVER, FOREVER, limit):
            if self._split(member)[0] in active:
                # A queued chunk's score is when it was queued; a retrying one's, when it is due.
                if score <= now:
                    queued += 1
                else:
                    retrying += 1
        return queued, retrying, self.kv.zcard(self._z("leases"))

    def expired_finalizers(self, limit: int = 50) -> list[str]:
        return [m for m, _ in self.kv.zrange(self._z("finalize"), -FOREVER, self.clock(), limit)]
