"""Run state: runs, their chunks' ledger with leases and fencing tokens, and live workers.

This state is ours, not the queue's: Huey only carries ``(run id, chunk index)`` messages and
forgets a message once a worker has taken it. Every change here is one atomic transaction on
:mod:`etl.kv` (Redis, or the embedded SQLite file), so any number of workers on any number of
machines can share it.

A chunk moves ``pending → queued → running → done``; a failed attempt goes ``running →
retrying → running`` (or ``failed`` when attempts are spent or the error is permanent). A
``running`` chunk is held under a lease that its worker renews; each claim increments the
chunk's ``attempts`` (reset when a failed run is retried) and its ``token``, which only ever
grows: only the holder of the latest token may renew, complete, retry or fail the chunk, so a
worker that lost its lease (a "zombie") cannot record anything.

A transition returns the record as it left it (the run, or the chunk where the chunk is what
matters; each method says which), or ``None`` when it was refused and changed nothing.

The store is in parts, each a class over :class:`~etl.store.base.StoreBase` (the keys and the
one update helper, which writes each transition's load, check, change and save once):
:mod:`~etl.store.records`, :mod:`~etl.store.runs`, :mod:`~etl.store.chunks`,
:mod:`~etl.store.finalize` (with :mod:`~etl.store.marks`), :mod:`~etl.store.schedules`,
:mod:`~etl.store.reaper`, :mod:`~etl.store.workers` and :mod:`~etl.store.retention`.
:class:`RunStore` is all of them.
"""

from __future__ import annotations

from etl.store.chunks import Chunks
from etl.store.finalize import Finalizing
from etl.store.reaper import Reaper
from etl.store.records import (
    FINISHED,
    FOREVER,
    INFLIGHT,
    ChunkRecord,
    ChunkState,
    Completion,
    RunRecord,
    WorkerInfo,
    iso_time,
)
from etl.store.retention import Retention
from etl.store.runs import Runs
from etl.store.schedules import Schedules
from etl.store.workers import Workers

__all__ = [
    "FINISHED",
    "FOREVER",
    "INFLIGHT",
    "ChunkRecord",
    "ChunkState",
    "Completion",
    "RunRecord",
    "RunStore",
    "WorkerInfo",
    "iso_time",
]


class RunStore(Runs, Chunks, Finalizing, Schedules, Reaper, Workers, Retention):
    """Runs, chunk ledgers and workers, kept in a :class:`~etl.kv.KV`."""
