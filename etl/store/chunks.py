"""Chunks: handing them out, and each attempt's lease, fencing token and outcome.

Only the holder of a chunk's latest ``token`` may renew, complete, retry, fail or release it:
a refused call returns ``None`` (``"lost"`` for :meth:`Chunks.renew`, a :class:`Completion` not
``accepted`` for :meth:`Chunks.complete`) and records nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from etl.kv import Tx
from etl.store.base import COUNTED, StoreBase
from etl.store.records import FOREVER, ChunkRecord, Completion, RunRecord

__all__ = ["Chunks"]

#: How many of a run's lowest pending chunks a completion chooses among, at most, when the next
#: chunk of its class is not pending.
HEAD = 64


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
        """Move pending chunks to ``queued`` until ``limit`` are in flight; their indices.

        It looks first, outside a transaction: most calls (the reaper's) find the run's chunks
        in flight already, and a transaction watching its pending set would start over at each
        completion meanwhile."""
        run = self.get_run(run_id)
        if run is None or self._room(run, self.kv.zcard(self._pending(run_id)), limit) <= 0:
            return []
        return self._change_run(run_id, lambda tx, run: self._hand_out(tx, run, limit), [self._pending(run_id)]) or []

    @staticmethod
    def _room(run: RunRecord, pending: int, limit: int) -> int:
        """How many more of the run's ``pending`` chunks may be queued for ``limit`` to be in flight."""
        if run.state != "active" or not pending:
            return 0
        return min(limit - (run.chunks_total - run.chunks_done - run.chunks_failed - pending), pending)

    def _pending(self, run_id: str) -> str:
        return self._z(f"pending:{run_id}")

    def _hand_out(self, tx: Tx, run: RunRecord, limit: int) -> list[int]:
        """Queue the run's lowest pending chunks until ``limit`` are in flight (the run and its
        pending set watched); their indices."""
        if run.state != "active" or run.chunks_done + run.chunks_failed >= run.chunks_total:
            return []
        pending = self._pending(run.id)
        room = self._room(run, tx.zcard(pending), limit)
        chosen = [int(m) for m, _ in tx.zrange(pending, -FOREVER, FOREVER, room)] if room > 0 else []
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
        that makes every chunk done. The completion holds the run with its new counters (each
        figure this chunk adds to as the completion left it; the others as it read them) and the
        chunk, done.

        The run's counters are added to, not rewritten (:data:`~etl.store.base.COUNTED`): two
        completions of one run don't conflict. With ``hand_out`` (the run's parallelism), the
        same transaction queues a pending chunk in this one's place (``queued``), watching only
        that chunk: the next of its class (``index + hand_out``: the chunks in flight at once
        are of as many classes, so completions at once choose different ones), else one of the
        lowest pending. That never puts more chunks in flight than there were; ``room`` says how
        many more the run could take (its parallelism grew, a choice was taken meanwhile):
        :meth:`dispatch` queues them."""
        pending, chunk_key = self._pending(run_id), self._chunk_key(run_id, index)
        amounts = {"chunks_done": 1, "rows_read": result.rows_read, "rows_written": result.rows_written}
        amounts["rows_rejected"] = result.rows_rejected

        def complete(tx: Tx) -> tuple[Any, ...] | None:
            follow = [self._chunk_key(run_id, index + hand_out)] if hand_out else []
            tx.watch(follow)
            *values, doc = tx.get_many([*self._run_keys(run_id), chunk_key, *follow])[: len(COUNTED) + 2]
            run, counted = self._run_of(values)
            chunk = ChunkRecord.from_doc(doc) if doc else None
            if run is None or chunk is None or chunk.state != "running" or chunk.token != token:
                return None
            chunk.state, chunk.worker, chunk.lease_until, chunk.error = "done", None, None, None
            chunk.done_signature = signature
            chunk.rows_read, chunk.rows_written = result.rows_read, result.rows_written
            chunk.rows_rejected, chunk.seconds = result.rows_rejected, result.seconds
            chunk.finished_at = self.clock()
            self._save_chunk(tx, chunk)
            added = {name: tx.incr(self._count_key(run_id, name), amounts[name]) for name in COUNTED if amounts[name]}
            after = self._follower(tx, run, index, hand_out, follow[0]) if follow and run.state == "active" else None
            if after is not None:
                after.state, after.queued_at = "queued", self.clock()
                self._save_chunk(tx, after)
            queued = (after.index,) if after is not None else ()
            return run, counted, chunk, added, queued, tx.zcard_then(pending) if hand_out else None

        answer = self.kv.atomic(complete, [self._run_key(run_id), chunk_key])
        if answer is None:
            return Completion(False)
        run, counted, chunk, added, queued, left = answer
        for name, before in zip(COUNTED, counted, strict=True):
            if name in added:  # (a figure this chunk adds nothing to stays as read)
                setattr(run, name, getattr(run, name) - before + added[name]())
        last = run.state == "active" and run.chunks_done == run.chunks_total
        room = 0
        if left is not None and run.state == "active" and (waiting := left()):
            room = max(hand_out - (run.chunks_total - run.chunks_done - run.chunks_failed - waiting), 0)
        return Completion(True, last, run, chunk, queued, room)

    def _follower(self, tx: Tx, run: RunRecord, index: int, hand_out: int, follow: str) -> ChunkRecord | None:
        """The pending chunk that chunk ``index`` hands out in its place, watched: the next of its
        class (``follow``, read with it already), else one of the run's lowest pending, chosen
        by its index; ``None`` when there is none."""
        doc = tx.get(follow)
        if doc is None or doc["state"] != "pending":  # handed out otherwise, or past the last chunk
            head = [int(m) for m, _ in tx.zrange(self._pending(run.id), -FOREVER, FOREVER, min(hand_out, HEAD))]
            if not head:
                return None
            follow = self._chunk_key(run.id, head[index % len(head)])
            tx.watch([follow])
            doc = tx.get(follow)
        return ChunkRecord.from_doc(doc) if doc is not None and doc["state"] == "pending" else None

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
