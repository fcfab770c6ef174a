"""Retention: deleting finished runs, with their chunks and every index entry, in batches."""

from __future__ import annotations

from etl.runs import RunState
from etl.store.base import StoreBase
from etl.store.records import FINISHED, FOREVER, RunRecord

__all__ = ["Retention"]


class Retention(StoreBase):
    def clean(self, state: RunState, older_than: float = 0.0, batch: int = 500, limit: int | None = None) -> int:
        """Delete finished runs of ``state`` that finished more than ``older_than`` seconds ago,
        ``batch`` at a time (so that a large clean never blocks Redis for long)."""
        cutoff = self.clock() - older_than
        deleted = 0
        while limit is None or deleted < limit:
            size = batch if limit is None else min(batch, limit - deleted)
            ids = [m for m, _ in self.kv.zrange(self._z(f"finished:{state}"), -FOREVER, cutoff, size)]
            if not ids:
                break
            self._delete_runs(ids)
            deleted += len(ids)
        return deleted

    def enforce_retention(self, keep: int, batch: int = 500, states: tuple[RunState, ...] = FINISHED) -> int:
        """Keep the ``keep`` most recent finished runs of each of ``states``; delete older ones."""
        deleted = 0
        for state in states:
            excess = self.excess(state, keep)
            if excess > 0:
                deleted += self.clean(state, 0.0, batch, limit=excess)
        return deleted

    def excess(self, state: RunState, keep: int) -> int:
        """How many finished runs of ``state`` are beyond the ``keep`` most recent."""
        return max(self.kv.zcard(self._z(f"finished:{state}")) - keep, 0)

    def oldest(self, state: RunState, older_than: float = 0.0, limit: int = 500) -> list[str]:
        """Runs of ``state`` that finished more than ``older_than`` seconds ago, oldest first."""
        cutoff = self.clock() - older_than
        return [m for m, _ in self.kv.zrange(self._z(f"finished:{state}"), -FOREVER, cutoff, limit)]

    def delete_runs(self, ids: list[str]) -> None:
        """Delete these runs, with their chunks and every index entry."""
        self._delete_runs(ids)

    def _delete_runs(self, ids: list[str]) -> None:
        docs = self.kv.get_many([self._run_key(i) for i in ids])
        keys: list[str] = []
        zsets: dict[str, list[str]] = {self._z("runs"): list(ids)}
        for run_id, doc in zip(ids, docs, strict=True):
            keys += self._run_keys(run_id)
            keys.append(self._z(f"pending:{run_id}"))
            if not doc:  # the index outlived its run: take it out of every index it may be in
                for state in ("waiting", "active", *FINISHED):
                    zsets.setdefault(self._z(f"state:{state}"), []).append(run_id)
                for state in FINISHED:
                    zsets.setdefault(self._z(f"finished:{state}"), []).append(run_id)
                continue
            run = RunRecord.from_doc(doc)
            keys += [self._chunk_key(run_id, i) for i in range(run.chunks_total)]
            for name in (f"state:{run.state}", f"finished:{run.state}", f"job:{run.job}", f"unfinished:{run.job}"):
                zsets.setdefault(self._z(name), []).append(run_id)
            members = [self._member(run_id, i) for i in range(run.chunks_total)]
            zsets.setdefault(self._z("leases"), []).extend(members)
            zsets.setdefault(self._z("waiting"), []).extend(members)
        self.kv.delete_many(keys, zsets)
