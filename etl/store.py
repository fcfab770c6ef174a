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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from etl.kv import KV, Tx
from etl.runs import RunState
from etl.stages import Chunk

__all__ = ["ChunkRecord", "RunRecord", "RunStore", "WorkerInfo"]

ChunkState = Literal["pending", "queued", "running", "retrying", "done", "failed"]
FINISHED: tuple[RunState, ...] = ("completed", "failed", "cancelled")
INFLIGHT: tuple[ChunkState, ...] = ("queued", "running", "retrying")
FOREVER = float("inf")


def iso_time(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC, ``2026-11-28T20:33:00Z`` (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class RunRecord:
    """A run as the store keeps it. Times are Unix timestamps (UTC)."""

    id: str
    job: str
    state: RunState = "waiting"
    job_file: str = ""
    job_text: str = ""
    params: dict[str, str] = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)
    max_parallel: int = 0
    delay: float = 0.0
    attempts: int = 3
    rows_total: int | None = None
    rows_exact: bool = True
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    retries: int = 0
    planned: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    error_chunk: int | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    finalizer: str | None = None
    finalize_until: float | None = None
    aborted: bool = False
    submitted_by: str = ""
    signature: str = ""
    #: An incremental run's window (:class:`~etl.incremental.Window` as JSON), fixed at plan time.
    window: dict[str, Any] | None = None
    #: A scheduled run: the slot it was fired for (a Unix time), and the interval it covers.
    scheduled_for: float | None = None
    interval: dict[str, str] | None = None
    #: With ``overlap: queue``, the run this one waits for before it is planned.
    after: str | None = None
    #: Who drives the run: ``"queue"`` (workers, from queue messages) or ``"process"`` (the
    #: process that started it, in a loop; the reaper fails it when that process dies).
    driver: str = "queue"
    #: Attempts at finalizing, counted against the job's retry policy like a chunk's.
    finalize_attempts: int = 0

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def seconds(self, now: float | None = None) -> float:
        if self.started_at is None:
            return 0.0
        return max((self.finished_at or now or time.time()) - self.started_at, 0.0)

    def rows_per_second(self, now: float | None = None) -> float:
        seconds = self.seconds(now)
        return self.rows_read / seconds if seconds else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the pace so far, or ``None`` before there is a pace."""
        if self.state != "active":
            return None
        if self.rows_total:
            done, total = self.rows_read, self.rows_total
        else:
            done, total = self.chunks_done, self.chunks_total
        if not done or not total:
            return None
        return self.seconds(now) * max(total - done, 0) / done

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The run for ``--json`` output: ISO 8601 UTC times and derived figures; not the job text."""
        data = {k: v for k, v in self.to_doc().items() if k not in ("job_text", "shared")}
        for key in ("created_at", "started_at", "finished_at", "finalize_until", "scheduled_for"):
            data[key] = iso_time(data[key])
        data["seconds"] = round(self.seconds(now), 3)
        data["rows_per_second"] = round(self.rows_per_second(now), 1)
        eta = self.eta(now)
        data["eta_seconds"] = None if eta is None else round(eta, 1)
        return data


@dataclass
class ChunkRecord:
    """A chunk's ledger entry."""

    run_id: str
    index: int
    label: str = ""
    rows: int | None = None
    args: dict[str, Any] = field(default_factory=dict)
    state: ChunkState = "pending"
    attempts: int = 0
    token: int = 0
    worker: str | None = None
    lease_until: float | None = None
    queued_at: float | None = None
    not_before: float | None = None
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    seconds: float = 0.0
    error: str | None = None
    errors: list[str] = field(default_factory=list)
    #: When the chunk was done (a Unix time): the dashboard's throughput per minute.
    finished_at: float | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ChunkRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    def descriptor(self) -> Chunk:
        return Chunk(index=self.index, rows=self.rows, args=self.args, label=self.label, attempt=self.token)

    def to_json(self) -> dict[str, Any]:
        data = self.to_doc()
        data["lease_until"] = iso_time(self.lease_until)
        data["queued_at"] = iso_time(self.queued_at)
        data["not_before"] = iso_time(self.not_before)
        data["finished_at"] = iso_time(self.finished_at)
        return data


@dataclass
class WorkerInfo:
    """A live worker process, as it registers itself."""

    id: str
    host: str
    pid: int
    concurrency: int = 1
    started_at: float = 0.0
    last_seen: float = 0.0
    current: list[str] = field(default_factory=list)
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = iso_time(self.started_at)
        data["last_seen"] = iso_time(self.last_seen)
        return data


@dataclass(frozen=True)
class Completion:
    """What :meth:`RunStore.complete` decided."""

    accepted: bool
    last: bool = False


class RunStore:
    """Runs, chunk ledgers and workers, kept in a :class:`~etl.kv.KV`."""

    def __init__(self, kv: KV, prefix: str = "etl", clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.prefix = prefix
        self.clock = clock

    # -- keys --------------------------------------------------------------------------------

    def _run_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def _chunk_key(self, run_id: str, index: int) -> str:
        return f"{self.prefix}:chunk:{run_id}:{index}"

    def _z(self, name: str) -> str:
        return f"{self.prefix}:z:{name}"

    @staticmethod
    def _member(run_id: str, index: int) -> str:
        return f"{run_id}|{index}"

    @staticmethod
    def _split(member: str) -> tuple[str, int]:
        run_id, index = member.rsplit("|", 1)
        return run_id, int(index)

    def _load_run(self, tx: Tx, run_id: str) -> RunRecord | None:
        doc = tx.get(self._run_key(run_id))
        return RunRecord.from_doc(doc) if doc else None

    def _load_chunk(self, tx: Tx, run_id: str, index: int) -> ChunkRecord | None:
        doc = tx.get(self._chunk_key(run_id, index))
        return ChunkRecord.from_doc(doc) if doc else None

    def _save_run(self, tx: Tx, run: RunRecord) -> None:
        tx.put(self._run_key(run.id), run.to_doc())

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

    # -- runs --------------------------------------------------------------------------------

    def create_run(self, run: RunRecord, limit: int | None = None) -> list[str] | None:
        """Store a new run, ``waiting``. With ``limit``, only if its job has fewer unfinished
        runs than that; otherwise store nothing and return the unfinished runs' ids."""
        run.created_at = run.created_at or self.clock()
        run.state = "waiting"
        unfinished = self._z(f"unfinished:{run.job}")

        def create(tx: Tx) -> list[str] | None:
            if limit is not None:
                busy = [m for m, _ in tx.zrange(unfinished, -FOREVER, FOREVER, limit)]
                if len(busy) >= limit:
                    return busy
            self._insert_run(tx, run)
            return None

        return self.kv.atomic(create, [self._run_key(run.id), unfinished])

    def _insert_run(self, tx: Tx, run: RunRecord) -> None:
        self._save_run(tx, run)
        tx.zadd(self._z("runs"), run.id, run.created_at)
        tx.zadd(self._z("state:waiting"), run.id, run.created_at)
        tx.zadd(self._z(f"job:{run.job}"), run.id, run.created_at)
        tx.zadd(self._z(f"unfinished:{run.job}"), run.id, run.created_at)

    def unfinished(self, job: str, limit: int = 100) -> list[str]:
        """The job's waiting and active runs, oldest first."""
        return [m for m, _ in self.kv.zrange(self._z(f"unfinished:{job}"), -FOREVER, FOREVER, limit)]

    def get_run(self, run_id: str) -> RunRecord | None:
        doc = self.kv.get(self._run_key(run_id))
        return RunRecord.from_doc(doc) if doc else None

    def list_runs(self, *, state: str | None = None, job: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Runs, newest first, optionally of one state and/or job."""
        index = self._z(f"state:{state}") if state else self._z(f"job:{job}") if job else self._z("runs")
        result: list[RunRecord] = []
        start = 0
        while len(result) < limit:
            ids = self.kv.zrevrange(index, start, start + max(limit * 2, 50) - 1)
            if not ids:
                break
            start += len(ids)
            for doc in self.kv.get_many([self._run_key(i) for i in ids]):
                if doc and (job is None or doc["job"] == job) and (state is None or doc["state"] == state):
                    result.append(RunRecord.from_doc(doc))
        return result[:limit]

    def count_runs(self, state: str) -> int:
        return self.kv.zcard(self._z(f"state:{state}"))

    def finished_since(self, since: float, limit: int = 500) -> list[RunRecord]:
        """Runs that finished (in any final state) at or after ``since``."""
        ids: list[str] = []
        for state in FINISHED:
            ids += [m for m, _ in self.kv.zrange(self._z(f"finished:{state}"), since, FOREVER, limit)]
        docs = self.kv.get_many([self._run_key(i) for i in ids[:limit]])
        return [RunRecord.from_doc(d) for d in docs if d]

    def get_chunks(self, run_id: str, chunks_total: int | None = None) -> list[ChunkRecord]:
        run = self.get_run(run_id) if chunks_total is None else None
        total = chunks_total if chunks_total is not None else (run.chunks_total if run else 0)
        docs = self.kv.get_many([self._chunk_key(run_id, i) for i in range(total)])
        return [ChunkRecord.from_doc(d) for d in docs if d]

    def get_chunk(self, run_id: str, index: int) -> ChunkRecord | None:
        doc = self.kv.get(self._chunk_key(run_id, index))
        return ChunkRecord.from_doc(doc) if doc else None

    def set_plan(
        self,
        run_id: str,
        *,
        rows: int | None,
        exact: bool,
        chunks: Sequence[Chunk],
        shared: dict[str, Any],
        window: dict[str, Any] | None = None,
        activate: bool = True,
    ) -> bool:
        """Record the plan of a ``waiting`` run and make it ``active`` (or, with ``activate=False``,
        leave it waiting, planned, for a worker to :meth:`activate`). False if it was not waiting
        (cancelled meanwhile, or planned already by a re-delivered task)."""

        def plan(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.state != "waiting" or run.planned:
                return False
            for chunk in chunks:
                record = ChunkRecord(run_id, chunk.index, chunk.label, chunk.rows, dict(chunk.args))
                self._save_chunk(tx, record)
            run.rows_total, run.rows_exact, run.shared = rows, exact, dict(shared)
            run.window = window if window is not None else run.window
            run.chunks_total, run.planned = len(chunks), True
            if activate:
                run.started_at = self.clock()
                self._set_state(tx, run, "active")
            self._save_run(tx, run)
            return True

        return self.kv.atomic(plan, [self._run_key(run_id)])

    def activate(self, run_id: str) -> bool:
        """Start a ``waiting`` run planned when it was submitted: it becomes ``active``."""

        def activate(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.state != "waiting" or not run.planned:
                return False
            run.started_at = self.clock()
            self._set_state(tx, run, "active")
            self._save_run(tx, run)
            return True

        return self.kv.atomic(activate, [self._run_key(run_id)])

    def fail_run(self, run_id: str, error: str, chunk: int | None = None) -> bool:
        """Mark a ``waiting`` or ``active`` run failed (planning failed, a chunk failed for good)."""

        def fail(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.finished:
                return False
            run.error, run.error_chunk = error, chunk
            self._set_state(tx, run, "failed")
            self._save_run(tx, run)
            return True

        return self.kv.atomic(fail, [self._run_key(run_id)])

    def cancel(self, run_id: str) -> bool:
        """Stop handing out the run's chunks and mark it ``cancelled``. False if it had finished."""

        def cancel(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.finished:
                return False
            run.error = run.error or "cancelled"
            self._set_state(tx, run, "cancelled")
            self._save_run(tx, run)
            return True

        return self.kv.atomic(cancel, [self._run_key(run_id)])

    def mark_aborted(self, run_id: str) -> bool:
        """A cancelled run's sink has dropped what it staged. False if it was marked so already
        (by another process that aborted it too): only the first tells the plugins."""

        def mark(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.aborted:
                return False
            run.aborted = True
            self._save_run(tx, run)
            return True

        return self.kv.atomic(mark, [self._run_key(run_id)])

    def cancel_failed(self, run_id: str) -> bool:
        """A failed run will not be retried: mark it cancelled, so that its staging is dropped."""

        def cancel(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.state != "failed":
                return False
            tx.zrem(self._z("finished:failed"), run.id)
            self._set_state(tx, run, "cancelled")
            self._save_run(tx, run)
            return True

        return self.kv.atomic(cancel, [self._run_key(run_id)])

    def retry_failed(self, run_id: str) -> list[int]:
        """Make a failed run active again, its failed chunks pending with fresh attempts;
        chunks that were done stay done. Returns the chunks to run again. (A cancelled run is
        final: what it staged was dropped.)"""

        def retry(tx: Tx) -> list[int]:
            run = self._load_run(tx, run_id)
            if run is None or run.state != "failed":
                return []
            again = []
            for index in range(run.chunks_total):
                chunk = self._load_chunk(tx, run_id, index)
                if chunk is None or chunk.state == "done":
                    continue
                if chunk.state in ("failed", "queued", "retrying", "running"):
                    chunk.state, chunk.attempts, chunk.worker, chunk.lease_until = "pending", 0, None, None
                    chunk.error = None
                    self._save_chunk(tx, chunk)
                again.append(index)
            self._unfinish(tx, run)
            run.chunks_failed, run.error, run.error_chunk = 0, None, None
            run.driver, run.finalize_attempts = "queue", 0  # workers take a retried run up
            self._set_state(tx, run, "active" if run.planned else "waiting")
            self._save_run(tx, run)
            return again

        return self.kv.atomic(retry, [self._run_key(run_id)])

    # -- chunks ------------------------------------------------------------------------------

    def dispatch(self, run_id: str, limit: int) -> list[int]:
        """Move pending chunks to ``queued`` until ``limit`` are in flight; their indices."""
        pending = self._z(f"pending:{run_id}")

        def dispatch(tx: Tx) -> list[int]:
            run = self._load_run(tx, run_id)
            if run is None or run.state != "active":
                return []
            inflight = run.chunks_total - run.chunks_done - run.chunks_failed - tx.zcard(pending)
            room = max(limit - inflight, 0)
            chosen = [int(m) for m, _ in tx.zrange(pending, -FOREVER, FOREVER, room)] if room else []
            now = self.clock()
            for index in chosen:
                chunk = self._load_chunk(tx, run_id, index)
                if chunk is not None and chunk.state == "pending":
                    chunk.state, chunk.queued_at = "queued", now
                    self._save_chunk(tx, chunk)
            return chosen

        return self.kv.atomic(dispatch, [self._run_key(run_id), pending])

    def claim(self, run_id: str, index: int, worker: str, lease: float) -> ChunkRecord | None:
        """Take a queued (or retrying, or abandoned) chunk of an active run: a new attempt, with
        a new fencing token (``.token``). ``None`` when the chunk is not there to take."""
        key = self._chunk_key(run_id, index)

        def claim(tx: Tx) -> ChunkRecord | None:
            run = self._load_run(tx, run_id)
            chunk = self._load_chunk(tx, run_id, index)
            if run is None or chunk is None or run.state != "active":
                return None
            now = self.clock()
            abandoned = chunk.state == "running" and (chunk.lease_until or 0) < now
            # The process driving an in-process run takes its chunks straight from pending.
            takes = ("queued", "retrying", "pending") if run.driver == "process" else ("queued", "retrying")
            if chunk.state not in takes and not abandoned:
                return None
            chunk.state, chunk.attempts, chunk.token = "running", chunk.attempts + 1, chunk.token + 1
            chunk.worker = worker
            chunk.lease_until, chunk.not_before = now + lease, None
            self._save_chunk(tx, chunk)
            return chunk

        return self.kv.atomic(claim, [self._run_key(run_id), key])

    def renew(self, run_id: str, index: int, token: int, lease: float) -> Literal["ok", "lost", "stopped"]:
        """Extend the lease of attempt ``token``: ``lost`` if another attempt holds the chunk now,
        ``stopped`` if the run was cancelled or failed."""
        key = self._chunk_key(run_id, index)

        def renew(tx: Tx) -> Literal["ok", "lost", "stopped"]:
            run = self._load_run(tx, run_id)
            chunk = self._load_chunk(tx, run_id, index)
            if run is None or chunk is None or chunk.state != "running" or chunk.token != token:
                return "lost"
            if run.state != "active":
                return "stopped"
            chunk.lease_until = self.clock() + lease
            self._save_chunk(tx, chunk)
            return "ok"

        return self.kv.atomic(renew, [key])

    def complete(self, run_id: str, index: int, token: int, result: Any) -> Completion:
        """Record attempt ``token`` as done, with its counters (a :class:`~etl.runs.ChunkResult`).
        ``last`` is true for exactly one completion: the one that makes every chunk done."""
        key = self._chunk_key(run_id, index)

        def complete(tx: Tx) -> Completion:
            run = self._load_run(tx, run_id)
            chunk = self._load_chunk(tx, run_id, index)
            if run is None or chunk is None or chunk.state != "running" or chunk.token != token:
                return Completion(False)
            chunk.state, chunk.worker, chunk.lease_until, chunk.error = "done", None, None, None
            chunk.rows_read, chunk.rows_written = result.rows_read, result.rows_written
            chunk.rows_rejected, chunk.seconds = result.rows_rejected, result.seconds
            chunk.finished_at = self.clock()
            self._save_chunk(tx, chunk)
            run.rows_read += result.rows_read
            run.rows_written += result.rows_written
            run.rows_rejected += result.rows_rejected
            run.chunks_done += 1
            last = run.state == "active" and run.chunks_done == run.chunks_total
            self._save_run(tx, run)
            return Completion(True, last)

        return self.kv.atomic(complete, [self._run_key(run_id), key])

    def retry_later(self, run_id: str, index: int, token: int, error: str, delay: float) -> bool:
        """Attempt ``token`` failed and will be tried again after ``delay`` seconds."""
        key = self._chunk_key(run_id, index)

        def later(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            chunk = self._load_chunk(tx, run_id, index)
            if run is None or chunk is None or chunk.state != "running" or chunk.token != token:
                return False
            chunk.state, chunk.worker, chunk.lease_until = "retrying", None, None
            chunk.not_before, chunk.error = self.clock() + delay, error
            chunk.errors = [*chunk.errors, f"attempt {chunk.attempts}: {error}"][-10:]
            self._save_chunk(tx, chunk)
            run.retries += 1
            self._save_run(tx, run)
            return True

        return self.kv.atomic(later, [self._run_key(run_id), key])

    def fail_chunk(self, run_id: str, index: int, token: int | None, error: str) -> bool:
        """The chunk failed for good (permanent error, or attempts spent): it and its run fail.
        ``token=None`` is the reaper's verdict on a chunk whose workers keep dying."""
        key = self._chunk_key(run_id, index)

        def fail(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            chunk = self._load_chunk(tx, run_id, index)
            if run is None or chunk is None or chunk.state in ("done", "failed"):
                return False
            if token is not None and (chunk.state != "running" or chunk.token != token):
                return False
            chunk.state, chunk.worker, chunk.lease_until, chunk.error = "failed", None, None, error
            chunk.errors = [*chunk.errors, f"attempt {chunk.attempts}: {error}"][-10:]
            self._save_chunk(tx, chunk)
            run.chunks_failed += 1
            if not run.finished:
                run.error, run.error_chunk = error, index
                self._set_state(tx, run, "failed")
            self._save_run(tx, run)
            return True

        return self.kv.atomic(fail, [self._run_key(run_id), key])

    def release(self, run_id: str, index: int, token: int) -> bool:
        """A worker shutting down gives back the chunk it holds (attempt ``token``): queued
        again at once, without waiting for the lease to run out."""
        key = self._chunk_key(run_id, index)

        def release(tx: Tx) -> bool:
            chunk = self._load_chunk(tx, run_id, index)
            if chunk is None or chunk.state != "running" or chunk.token != token:
                return False
            chunk.state, chunk.worker, chunk.lease_until, chunk.queued_at = "queued", None, None, self.clock()
            chunk.errors = [*chunk.errors, f"attempt {chunk.attempts}: its worker shut down before finishing it"][-10:]
            chunk.attempts -= 1  # it did not fail: a rolling restart must not use up its attempts
            self._save_chunk(tx, chunk)
            return True

        return self.kv.atomic(release, [key])

    # -- finalizing --------------------------------------------------------------------------

    def claim_finalize(self, run_id: str, worker: str, lease: float) -> bool:
        """Take the finalizing of an active run whose chunks are all done (once, or again when
        the worker that had it stopped renewing)."""

        def claim(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.state != "active" or run.chunks_done != run.chunks_total:
                return False
            now = self.clock()
            if run.finalizer and (run.finalize_until or 0) >= now and run.finalizer != worker:
                return False
            run.finalize_attempts += 1
            run.finalizer, run.finalize_until = worker, now + lease
            tx.zadd(self._z("finalize"), run.id, run.finalize_until)
            self._save_run(tx, run)
            return True

        return self.kv.atomic(claim, [self._run_key(run_id)])

    def renew_finalize(self, run_id: str, worker: str, lease: float) -> bool:
        def renew(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.state != "active" or run.finalizer != worker:
                return False
            run.finalize_until = self.clock() + lease
            tx.zadd(self._z("finalize"), run.id, run.finalize_until)
            self._save_run(tx, run)
            return True

        return self.kv.atomic(renew, [self._run_key(run_id)])

    def finish(self, run_id: str, worker: str | None = None) -> bool:
        """The run completed: every chunk written and the sink finalized (by ``worker``). An
        incremental run's mark moves to its window's upper bound in the same transaction."""

        def finish(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            if run is None or run.state != "active" or run.chunks_done != run.chunks_total:
                return False
            if worker is not None and run.finalizer not in (None, worker):
                return False
            run.error, run.error_chunk = None, None
            self._set_state(tx, run, "completed")
            self._save_run(tx, run)
            if run.window is not None:
                self._advance(tx, run.job, run.window, run.id)
            return True

        return self.kv.atomic(finish, [self._run_key(run_id), self._mark_key(self._job_of(run_id))])

    def _job_of(self, run_id: str) -> str:
        run = self.get_run(run_id)
        return run.job if run is not None else ""

    # -- incremental marks -------------------------------------------------------------------

    def _mark_key(self, job: str) -> str:
        return f"{self.prefix}:mark:{job}"

    def get_mark(self, job: str) -> dict[str, Any] | None:
        """The job's high-water mark: ``{"cursor", "value" (typed JSON), "run", "updated_at"}``."""
        return self.kv.get(self._mark_key(job))

    def _advance(self, tx: Tx, job: str, window: dict[str, Any], run_id: str) -> None:
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

    # -- schedules ---------------------------------------------------------------------------

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

    # -- the reaper's queries ------------------------------------------------------------------

    def expired_leases(self, limit: int = 100) -> list[tuple[str, int]]:
        """Running chunks whose lease ran out: their workers died or hang."""
        rows = self.kv.zrange(self._z("leases"), -FOREVER, self.clock(), limit)
        return [self._split(m) for m, _ in rows]

    def reclaim(self, run_id: str, index: int, max_attempts: int) -> Literal["requeued", "failed", "skip"]:
        """Put a chunk with an expired lease back in the queue, or fail it when it has used up
        its attempts (a chunk that kills every worker that takes it)."""
        key = self._chunk_key(run_id, index)

        def reclaim(tx: Tx) -> Literal["requeued", "failed", "skip"]:
            run = self._load_run(tx, run_id)
            chunk = self._load_chunk(tx, run_id, index)
            if run is None or chunk is None or chunk.state != "running":
                return "skip"
            now = self.clock()
            if (chunk.lease_until or 0) >= now:
                return "skip"
            lost = f"its worker {chunk.worker} stopped renewing the lease (killed, or stalled)"
            if run.driver == "process":
                lost = f"the process running it ({chunk.worker}) stopped renewing the lease (killed, or stalled)"
            chunk.errors = [*chunk.errors, f"attempt {chunk.attempts}: {lost}"][-10:]
            if run.state != "active":
                chunk.state, chunk.worker, chunk.lease_until = "queued", None, None
                chunk.queued_at = now
                self._save_chunk(tx, chunk)
                return "skip"
            if chunk.attempts >= max_attempts or run.driver == "process":
                chunk.state, chunk.worker, chunk.lease_until = "failed", None, None
                chunk.error = lost if run.driver == "process" else f"gave up after {chunk.attempts} attempts: {lost}"
                self._save_chunk(tx, chunk)
                run.chunks_failed += 1
                run.error, run.error_chunk = chunk.error, index
                self._set_state(tx, run, "failed")
                self._save_run(tx, run)
                return "failed"
            chunk.state, chunk.worker, chunk.lease_until, chunk.queued_at = "queued", None, None, now
            chunk.error = lost
            self._save_chunk(tx, chunk)
            run.retries += 1
            self._save_run(tx, run)
            return "requeued"

        return self.kv.atomic(reclaim, [self._run_key(run_id), key])

    def waiting_chunks(self, older_than: float, limit: int = 200) -> list[tuple[str, int]]:
        """Chunks queued (or due for a retry) longer than ``older_than`` seconds ago: their
        message may have been lost with a worker that took it and died before claiming it."""
        rows = self.kv.zrange(self._z("waiting"), -FOREVER, self.clock() - older_than, limit)
        return [self._split(m) for m, _ in rows]

    def touch(self, run_id: str, index: int) -> None:
        """A waiting chunk's message was sent again: restart its clock."""
        key = self._chunk_key(run_id, index)

        def touch(tx: Tx) -> None:
            chunk = self._load_chunk(tx, run_id, index)
            if chunk is not None and chunk.state in ("queued", "retrying"):
                chunk.state, chunk.queued_at, chunk.not_before = "queued", self.clock(), None
                self._save_chunk(tx, chunk)

        self.kv.atomic(touch, [key])

    def park(self, run_id: str, index: int) -> bool:
        """A queued (or retrying) chunk of a run that has failed or was cancelled goes back to
        ``pending``: nothing will run it unless the run is retried, so it stops looking like a
        chunk whose message was lost."""
        key = self._chunk_key(run_id, index)

        def park(tx: Tx) -> bool:
            run = self._load_run(tx, run_id)
            chunk = self._load_chunk(tx, run_id, index)
            if run is None or chunk is None or not run.finished or chunk.state not in ("queued", "retrying"):
                return False
            chunk.state, chunk.queued_at, chunk.not_before = "pending", None, None
            self._save_chunk(tx, chunk)
            return True

        return self.kv.atomic(park, [self._run_key(run_id), key])

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

    def active_runs(self, limit: int = 1000) -> list[RunRecord]:
        return self.list_runs(state="active", limit=limit)

    # -- workers -----------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerInfo) -> None:
        worker.last_seen = self.clock()

        def beat(tx: Tx) -> None:
            tx.put(f"{self.prefix}:worker:{worker.id}", asdict(worker))
            tx.zadd(self._z("workers"), worker.id, worker.last_seen)

        self.kv.atomic(beat, ())

    def remove_worker(self, worker_id: str) -> None:
        self.kv.delete_many([f"{self.prefix}:worker:{worker_id}"], {self._z("workers"): [worker_id]})

    def workers(self, ttl: float) -> list[WorkerInfo]:
        """Workers seen within ``ttl`` seconds; older entries are forgotten."""
        now = self.clock()
        stale = [m for m, _ in self.kv.zrange(self._z("workers"), -FOREVER, now - ttl, 1000)]
        if stale:
            self.kv.delete_many([f"{self.prefix}:worker:{w}" for w in stale], {self._z("workers"): stale})
        live = [m for m, _ in self.kv.zrange(self._z("workers"), now - ttl, FOREVER, 1000)]
        docs = self.kv.get_many([f"{self.prefix}:worker:{w}" for w in live])
        return [WorkerInfo(**d) for d in docs if d]

    # -- clean-up ----------------------------------------------------------------------------

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

    def enforce_retention(self, keep: int, batch: int = 500) -> int:
        """Keep the ``keep`` most recent finished runs of each final state; delete older ones."""
        deleted = 0
        for state in FINISHED:
            excess = self.kv.zcard(self._z(f"finished:{state}")) - keep
            if excess > 0:
                deleted += self.clean(state, 0.0, batch, limit=excess)
        return deleted

    def _delete_runs(self, ids: list[str]) -> None:
        docs = self.kv.get_many([self._run_key(i) for i in ids])
        keys: list[str] = []
        zsets: dict[str, list[str]] = {self._z("runs"): list(ids)}
        for run_id, doc in zip(ids, docs, strict=True):
            keys.append(self._run_key(run_id))
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
