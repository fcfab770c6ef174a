"""What every part of the store shares: its keys, loading and saving records with their indexes,
and the one update helper.

Every key starts with the store's prefix (``etl`` unless the settings name another):

* ``PREFIX:run:RUN`` a run's document, ``PREFIX:chunk:RUN:INDEX`` a chunk's;
* ``PREFIX:count:RUN:NAME`` a run's counters that completions add to (:data:`COUNTED`);
* ``PREFIX:z:NAME`` the sorted sets that index them: ``runs``, ``state:STATE``,
  ``finished:STATE``, ``job:JOB`` and ``unfinished:JOB`` (runs, by creation or finish time),
  ``leases`` and ``waiting`` (chunks as ``RUN|INDEX``, by lease end or by when they were queued
  or are due), ``pending:RUN`` (a run's pending chunks, by index), ``finalize`` (by finalize
  lease end) and ``workers`` (by last heartbeat);
* ``PREFIX:mark:JOB``, ``PREFIX:schedule:JOB``, ``PREFIX:scheduler``, ``PREFIX:worker:ID`` and
  ``PREFIX:key`` (the id of the queue's ``ETL_SECRET_KEY``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from etl.kv import KV, Tx
from etl.runs import RunState
from etl.store.records import FINISHED, ChunkRecord, RunRecord

__all__ = ["COUNTED", "StoreBase"]

T = TypeVar("T")

#: The figures of a run that every completion adds to. Each is a counter of its own that a
#: completion adds to without reading it (``incr``), so that a completion neither rewrites nor
#: watches the run's document and completions of one run never conflict. A run's figure is its
#: document's (what runs stored before the counters hold; 0 for the others) plus its counter's.
COUNTED = ("chunks_done", "rows_read", "rows_written", "rows_rejected")
NO_COUNTS = (0,) * len(COUNTED)


class StoreBase:
    """The store's state (a :class:`~etl.kv.KV`, a key prefix, a clock) and the helpers that the
    parts of :class:`~etl.store.RunStore` build on."""

    def __init__(self, kv: KV, prefix: str = "etl", clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.prefix = prefix
        self.clock = clock

    # -- keys --------------------------------------------------------------------------------

    def _run_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def _run_keys(self, run_id: str) -> list[str]:
        """The keys of a run's document and of its counters (:data:`COUNTED`), in that order."""
        return [self._run_key(run_id), *(self._count_key(run_id, name) for name in COUNTED)]

    def _count_key(self, run_id: str, name: str) -> str:
        return f"{self.prefix}:count:{run_id}:{name}"

    def _chunk_key(self, run_id: str, index: int) -> str:
        return f"{self.prefix}:chunk:{run_id}:{index}"

    def _mark_key(self, job: str) -> str:
        return f"{self.prefix}:mark:{job}"

    def _z(self, name: str) -> str:
        return f"{self.prefix}:z:{name}"

    @staticmethod
    def _member(run_id: str, index: int) -> str:
        return f"{run_id}|{index}"

    @staticmethod
    def _split(member: str) -> tuple[str, int]:
        run_id, index = member.rsplit("|", 1)
        return run_id, int(index)

    # -- records -----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        return self._runs([run_id])[0]

    def _runs(self, ids: Sequence[str]) -> list[RunRecord | None]:
        """Runs by id, each with its counters (one read)."""
        values = self.kv.get_many([key for run_id in ids for key in self._run_keys(run_id)])
        size = 1 + len(COUNTED)
        return [self._run_of(values[at : at + size])[0] for at in range(0, len(values), size)]

    @staticmethod
    def _run_of(values: Sequence[Any]) -> tuple[RunRecord | None, tuple[int, ...]]:
        """A run from what its keys (:meth:`_run_keys`) hold, and its counters' values."""
        doc, *counters = values
        counted = tuple(int(c or 0) for c in counters)
        if not doc:
            return None, counted
        run = RunRecord.from_doc(doc)
        for name, value in zip(COUNTED, counted, strict=True):
            setattr(run, name, getattr(run, name) + value)
        return run, counted

    def get_chunk(self, run_id: str, index: int) -> ChunkRecord | None:
        doc = self.kv.get(self._chunk_key(run_id, index))
        return ChunkRecord.from_doc(doc) if doc else None

    def _save_run(self, tx: Tx, run: RunRecord, counted: Sequence[int] = NO_COUNTS) -> None:
        """Write the run's document: its figures less what its counters held when it was read
        (``counted``), which stay in the counters."""
        doc = run.to_doc()
        for name, value in zip(COUNTED, counted, strict=True):
            doc[name] -= value
        tx.put(self._run_key(run.id), doc)

    def _save_chunk(self, tx: Tx, chunk: ChunkRecord) -> None:
        tx.put(self._chunk_key(chunk.run_id, chunk.index), chunk.to_doc())
        member = self._member(chunk.run_id, chunk.index)
        if chunk.state == "running":
            tx.zadd(self._z("leases"), member, chunk.lease_until or 0.0)
        else:
            tx.zrem(self._z("leases"), member)
        if chunk.state == "queued":
            tx.zadd(self._z("waiting"), member, chunk.queued_at or 0.0)
        elif chunk.state == "retrying":
            tx.zadd(self._z("waiting"), member, chunk.not_before or 0.0)
        else:
            tx.zrem(self._z("waiting"), member)
        if chunk.state == "pending":
            tx.zadd(self._z(f"pending:{chunk.run_id}"), str(chunk.index), chunk.index)
        else:
            tx.zrem(self._z(f"pending:{chunk.run_id}"), str(chunk.index))

    def _insert_run(self, tx: Tx, run: RunRecord) -> None:
        """Store a new run, ``waiting``, in every index it belongs to."""
        self._save_run(tx, run)
        tx.zadd(self._z("runs"), run.id, run.created_at)
        tx.zadd(self._z("state:waiting"), run.id, run.created_at)
        tx.zadd(self._z(f"job:{run.job}"), run.id, run.created_at)
        tx.zadd(self._z(f"unfinished:{run.job}"), run.id, run.created_at)

    def _set_state(self, tx: Tx, run: RunRecord, state: RunState) -> None:
        """Move a run to ``state``, keeping the per-state indexes in step."""
        tx.zrem(self._z(f"state:{run.state}"), run.id)
        run.state = state
        tx.zadd(self._z(f"state:{state}"), run.id, run.created_at)
        if state in FINISHED:
            run.finished_at = self.clock()
            run.finalizer = run.finalize_until = None
            tx.zadd(self._z(f"finished:{state}"), run.id, run.finished_at)
            tx.zrem(self._z("finalize"), run.id)
            tx.zrem(self._z(f"unfinished:{run.job}"), run.id)

    def _unfinish(self, tx: Tx, run: RunRecord) -> None:
        tx.zrem(self._z(f"finished:{run.state}"), run.id)
        tx.zadd(self._z(f"unfinished:{run.job}"), run.id, run.created_at)
        run.finished_at = None

    # -- the update helper -------------------------------------------------------------------

    def _change_run(self, run_id: str, fn: Callable[[Tx, RunRecord], T | None], watch: Iterable[str] = ()) -> T | None:
        """Change a run in one atomic transaction: load it, call ``fn(tx, run)`` (which checks,
        then changes ``run`` in place and may write more through ``tx``), save the run if ``fn``
        changed it, and return ``fn``'s answer. ``None`` when there is no such run.

        The run's key is watched, and ``watch``: every other key that ``fn`` reads and writes.
        """

        def change(tx: Tx) -> T | None:
            run, counted = self._run_of(tx.get_many(self._run_keys(run_id)))
            if run is None:
                return None
            before = run.to_doc()
            answer = fn(tx, run)
            if run.to_doc() != before:
                self._save_run(tx, run, counted)
            return answer

        return self.kv.atomic(change, [self._run_key(run_id), *watch])

    def _change_chunk(
        self,
        run_id: str,
        index: int,
        fn: Callable[[Tx, RunRecord, ChunkRecord], T | None],
        *,
        watch_run: bool = True,
    ) -> T | None:
        """Change a chunk (and its run) in one atomic transaction: load both (one read), call
        ``fn(tx, run, chunk)``, save each record that ``fn`` changed (a chunk with its indexes),
        and return ``fn``'s answer. ``None`` when the run or the chunk is not there.

        ``watch_run=False`` for a change that only reads the run: a write to the run by another
        transaction (another chunk completing) then does not make this one start over. Such a
        ``fn`` must not change the run.
        """

        def change(tx: Tx) -> T | None:
            *values, chunk_doc = tx.get_many([*self._run_keys(run_id), self._chunk_key(run_id, index)])
            run, counted = self._run_of(values)
            if run is None or chunk_doc is None:
                return None
            chunk = ChunkRecord.from_doc(chunk_doc)
            run_before, chunk_before = run.to_doc(), chunk.to_doc()
            answer = fn(tx, run, chunk)
            if chunk.to_doc() != chunk_before:
                self._save_chunk(tx, chunk)
            if run.to_doc() != run_before:
                if not watch_run:
                    raise RuntimeError(f"a change of chunk {index} of run {run_id} changed the run, unwatched")
                self._save_run(tx, run, counted)
            return answer

        run_key = [self._run_key(run_id)] if watch_run else []
        return self.kv.atomic(change, [*run_key, self._chunk_key(run_id, index)])
