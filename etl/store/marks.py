"""Incremental runs' high-water marks: one per job, ``{"cursor", "value" (typed JSON), "run",
"updated_at"}`` at ``PREFIX:mark:JOB``; they only move forward."""

from __future__ import annotations

from typing import Any

from etl.kv import Tx
from etl.store.base import StoreBase

__all__ = ["Marks"]


class Marks(StoreBase):
    def get_mark(self, job: str) -> dict[str, Any] | None:
        """The job's high-water mark: ``{"cursor", "value" (typed JSON), "run", "updated_at"}``."""
        return self.kv.get(self._mark_key(job))

    def _advance(self, tx: Tx, job: str, window: dict[str, Any], run_id: str) -> None:
        """Move the mark to ``window``'s upper bound, inside ``tx`` (which must watch the mark)."""
        from etl.incremental import decode

        high = decode(window.get("high"))
        if high is None:
            return
        current = tx.get(self._mark_key(job))
        if current is not None and current.get("cursor") == window["cursor"]:
            try:
                if decode(current["value"]) >= high:
                    return  # a later run moved it further already
            except TypeError:
                pass  # the cursor's type changed: the newer run's value wins
        tx.put(
            self._mark_key(job),
            {"cursor": window["cursor"], "value": window["high"], "run": run_id, "updated_at": self.clock()},
        )

    def advance_mark(self, job: str, window: dict[str, Any], run_id: str) -> None:
        """Move the mark to a completed in-process run's upper bound (never backwards)."""
        self.kv.atomic(lambda tx: self._advance(tx, job, window, run_id), [self._mark_key(job)])

    def set_mark(self, job: str, cursor: str | None, value: dict[str, Any] | None) -> None:
        """Set the mark by hand (``etl state --set``), or remove it (``value=None``: the next
        run starts from ``initial``)."""

        def put(tx: Tx) -> None:
            if value is None:
                tx.delete(self._mark_key(job))
            else:
                doc = {"cursor": cursor, "value": value, "run": None, "updated_at": self.clock()}
                tx.put(self._mark_key(job), doc)

        self.kv.atomic(put, [self._mark_key(job)])
