"""Schedules: which worker fires scheduled runs (the scheduler's lease), and each scheduled job's
last slot handled, pause flag and last fired run (``PREFIX:schedule:JOB``)."""

from __future__ import annotations

from typing import Any

from etl.kv import Tx
from etl.store.base import StoreBase
from etl.store.records import FOREVER, RunRecord

__all__ = ["Schedules"]


class Schedules(StoreBase):
    def _schedule_key(self, job: str) -> str:
        return f"{self.prefix}:schedule:{job}"

    def lead(self, worker: str, lease: float) -> bool:
        """Take (or keep) the scheduler's lease: one worker at a time fires scheduled runs. Another
        worker takes over once the holder stops renewing for ``lease`` seconds."""
        key = f"{self.prefix}:scheduler"

        def lead(tx: Tx) -> bool:
            doc = tx.get(key)
            now = self.clock()
            if doc is not None and doc["holder"] != worker and doc["until"] >= now:
                return False
            since = doc["since"] if doc is not None and doc["holder"] == worker else now
            tx.put(key, {"holder": worker, "until": now + lease, "since": since})
            return True

        return self.kv.atomic(lead, [key])

    def resign(self, worker: str) -> None:
        """Give the scheduler's lease up (a worker stopping), so that another takes over at once."""
        key = f"{self.prefix}:scheduler"

        def resign(tx: Tx) -> None:
            doc = tx.get(key)
            if doc is not None and doc["holder"] == worker:
                tx.delete(key)

        self.kv.atomic(resign, [key])

    def scheduler(self) -> dict[str, Any] | None:
        """Who fires scheduled runs: ``{"holder", "until", "since"}``."""
        return self.kv.get(f"{self.prefix}:scheduler")

    def schedule_state(self, job: str) -> dict[str, Any]:
        """A scheduled job's state: the last slot handled (``last_slot``, a Unix time), whether it
        is ``paused``, and its last fired run (``last_run``)."""
        return self.kv.get(self._schedule_key(job)) or {}

    def start_schedule(self, job: str, slot: float) -> bool:
        """Record ``slot`` as the job's last one handled if it has none yet (a job seen for the
        first time fires from its next slot on); False if it had one."""
        key = self._schedule_key(job)

        def start(tx: Tx) -> bool:
            doc = tx.get(key) or {}
            if doc.get("last_slot") is not None:
                return False
            tx.put(key, {**doc, "last_slot": slot})
            return True

        return self.kv.atomic(start, [key])

    def set_paused(self, job: str, paused: bool) -> bool:
        """Pause or resume a job's schedule; False if it already was. Slots that fall due while
        it is paused are passed over, not caught up on resume."""
        key = self._schedule_key(job)

        def pause(tx: Tx) -> bool:
            doc = tx.get(key) or {}
            if bool(doc.get("paused")) == paused:
                return False
            tx.put(key, {**doc, "paused": paused})
            return True

        return self.kv.atomic(pause, [key])

    def fire(self, run: RunRecord, slot: float, overlap: str, limit: int | None = None) -> tuple[str, str | None]:
        """Fire ``run`` for its job's ``slot``, once: in one transaction, the slot is recorded as
        handled and the run created (``waiting``). Returns what happened and the run concerned:

        * ``("fired", run id)``;
        * ``("done", None)``: the slot was handled already (by this or another scheduler);
        * ``("paused", None)``: the job is paused; the slot is passed over;
        * ``("skipped", unfinished run id)``: ``overlap="skip"`` and a run of the job is
          unfinished, or ``limit`` (the job's ``concurrency``) runs are; with
          ``overlap="queue"`` the new run waits for the last one instead (``after``).
        """
        key = self._schedule_key(run.job)
        unfinished = self._z(f"unfinished:{run.job}")
        run.created_at = run.created_at or self.clock()
        run.state = "waiting"

        def fire(tx: Tx) -> tuple[str, str | None]:
            doc = tx.get(key) or {}
            if doc.get("last_slot") is not None and slot <= doc["last_slot"]:
                return "done", None
            doc = {**doc, "last_slot": slot}
            if doc.get("paused"):
                tx.put(key, doc)
                return "paused", None
            busy = [m for m, _ in tx.zrange(unfinished, -FOREVER, FOREVER, 1000)]
            if busy and (overlap == "skip" or (limit is not None and len(busy) >= limit)):
                tx.put(key, doc)
                return "skipped", busy[-1]
            run.after = busy[-1] if busy else None
            self._insert_run(tx, run)
            tx.put(key, {**doc, "last_run": run.id})
            return "fired", run.id

        return self.kv.atomic(fire, [key, unfinished])
