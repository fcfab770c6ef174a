"""Live workers: each registers itself with a heartbeat (``PREFIX:worker:ID``, indexed by last
heartbeat); one not seen for a while is forgotten. A worker process started by a supervisor
(``etl worker --processes``) names it in its record; the supervisor itself is not registered.
``PREFIX:key`` holds the id of the ``ETL_SECRET_KEY`` the queue's processes share, once one has
used a key."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict
from typing import Any

from etl.kv import Tx
from etl.store.base import StoreBase
from etl.store.records import FOREVER, WorkerInfo

__all__ = ["Workers"]


class Workers(StoreBase):
    def _worker_key(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def heartbeat(self, worker: WorkerInfo) -> None:
        worker.last_seen = self.clock()

        def beat(tx: Tx) -> None:
            tx.put(self._worker_key(worker.id), asdict(worker))
            tx.zadd(self._z("workers"), worker.id, worker.last_seen)

        self.kv.atomic(beat, ())

    def remove_worker(self, worker_id: str) -> None:
        self.kv.delete_many([self._worker_key(worker_id)], {self._z("workers"): [worker_id]})

    def workers(self, ttl: float) -> list[WorkerInfo]:
        """Workers seen within ``ttl`` seconds; older entries are forgotten."""
        now = self.clock()
        stale = [m for m, _ in self.kv.zrange(self._z("workers"), -FOREVER, now - ttl, 1000)]
        if stale:
            self.kv.delete_many([self._worker_key(w) for w in stale], {self._z("workers"): stale})
        live = [m for m, _ in self.kv.zrange(self._z("workers"), now - ttl, FOREVER, 1000)]
        docs = self.kv.get_many([self._worker_key(w) for w in live])
        return [WorkerInfo.from_doc(d) for d in docs if d]

    # -- the queue's key ---------------------------------------------------------------------

    def _key_key(self) -> str:
        return f"{self.prefix}:key"

    def key_marker(self, claim: str | None = None) -> dict[str, Any] | None:
        """The id of the key the queue's processes share (``{"id", "by", "at"}``), or ``None``.
        With ``claim`` (this process's key id), it becomes the queue's when it has none yet."""
        key = self._key_key()
        if claim is None:
            return self.kv.get(key)

        def mark(tx: Tx) -> dict[str, Any]:
            current = tx.get(key)
            if current is None:
                current = {"id": claim, "by": f"{socket.gethostname()}:{os.getpid()}", "at": self.clock()}
                tx.put(key, current)
            return current

        return self.kv.atomic(mark, [key])

    def forget_key(self) -> None:
        """Forget the queue's key id (to change ``ETL_SECRET_KEY``: the next process with a key
        records its own)."""
        self.kv.atomic(lambda tx: tx.delete(self._key_key()), [self._key_key()])
