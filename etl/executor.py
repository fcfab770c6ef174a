"""What a worker does with each message: plan a run, run one chunk, finalize, abort.

Every step is checked against the run store first and recorded there after, so a message that
arrives twice, late, or for a run that was cancelled does nothing harmful. A chunk runs under a
lease that one thread of the process renews (for every chunk in hand); if the lease is lost
(another worker took the chunk over) or the run stops, the chunk's pipeline stops at its next
batch. A chunk's completion queues the run's next chunk in the same transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from etl.errors import ConfigErrors, PermanentError, TransientError, describe
from etl.incremental import Window
from etl.jobs import state_dir
from etl.lifecycle import ChunkDone, Failed, LeaseKeeper, Leases, Lifecycle, Retry, Stopped, kept
from etl.pipeline import JobRun
from etl.progress import chunk_line
from etl.records import load_recorded, record_plan
from etl.runs import ChunkResult
from etl.store import ChunkRecord, RunRecord
from etl.units import format_duration

if TYPE_CHECKING:
    import pluggy

    from etl.config import Job
    from etl.metrics import WorkerMetrics
    from etl.records import Signer
    from etl.store import RunStore

__all__ = ["Executor", "LeaseKeeper"]

#: How often a run queued behind another (``overlap: queue``) looks whether it may start.
AFTER_POLL_SECONDS = 2.0
#: Failed runs beyond ``ETL_KEEP_RUNS`` cancelled (their staging dropped) after each finished run.
RETAIN_FAILED_AT_ONCE = 20


class Queue(Protocol):
    """What the executor needs of the queue (:class:`etl.queue.Queue`): its run store, sending
    messages, and its key: checking what a run's records hold, and whether this process may
    work the queue at all. The executor never loads Huey itself."""

    store: RunStore
    signer: Signer

    def send(self, name: str, *args: Any, delay: float = 0.0) -> None: ...

    def dispatch(self, run: RunRecord, slots: int, delay: float = 0.0) -> list[int]: ...

    def parallelism(self, run: RunRecord, slots: int) -> int: ...

    def send_chunks(self, run_id: str, indices: Sequence[int], delay: float = 0.0) -> None: ...

    def refusal(self, *, fresh: bool = False) -> str | None: ...


@dataclass
class _Loaded:
    """A run's job loaded in this process, with its stages for one thread."""

    life: Lifecycle
    used: float
    busy: bool = False

    @property
    def job(self) -> Job:
        return self.life.job

    @property
    def work(self) -> JobRun:
        return self.life.work


class Executor:
    """Executes the queue's messages in one worker process (from any of its threads): each
    message's step is decided by the run's :class:`~etl.lifecycle.Lifecycle`, and its outcome
    recorded in the run store and followed by the messages it calls for."""

    def __init__(
        self,
        queue: Queue,
        worker_id: str,
        *,
        lease: float = 15.0,
        slots: Callable[[], int] | None = None,
        keep_runs: int = 1000,
        metrics: WorkerMetrics | None = None,
    ):
        self.queue = queue
        self.store = queue.store
        self.worker_id = worker_id
        self.lease = lease
        self.slots = slots or (lambda: 1)
        self.keep_runs = keep_runs
        #: This process's Prometheus counters (``etl worker --metrics-port``), or None.
        self.metrics = metrics
        #: One validated job and plugin manager per run in this process, shared by its threads.
        self._jobs: dict[str, tuple[Job, pluggy.PluginManager]] = {}
        #: Each thread's stages of a run.
        self._loaded: dict[tuple[int, str], _Loaded] = {}
        self._finished: set[str] = set()
        self._cache_lock = threading.Lock()
        self._lock = threading.Lock()
        #: Chunks being worked on now: "run|index" → fencing token.
        self.in_hand: dict[str, int] = {}
        #: One thread renews the leases of every chunk in hand.
        self.leases = Leases(lambda run_id, index, token: self.store.renew(run_id, index, token, lease), lease / 3)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"etl.plan": self.plan, "etl.chunk": self.chunk, "etl.finalize": self.finalize, "etl.abort": self.abort}

    # -- loaded runs ---------------------------------------------------------------------

    def adopt(self, run_id: str, job: Job, pm: pluggy.PluginManager) -> None:
        """Use ``job`` and its plugin manager for the run's tasks in this process (the process
        that planned the run works it too: its job is not loaded twice)."""
        with self._cache_lock:
            self._jobs.setdefault(run_id, (job, pm))

    def _load(self, run: RunRecord) -> _Loaded:
        """The run's job, validated in this process (``${VAR}`` from this worker's environment),
        with its stages made for this thread and marked busy until :meth:`_done`."""
        key = (threading.get_ident(), run.id)
        with self._cache_lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                loaded.busy = True
            known = self._jobs.get(run.id)
        if loaded is not None:
            loaded.life.resume(run)  # the planned window, even if this thread opened another
            return loaded
        if known is None:
            known = load_recorded(run)
        job, pm = known
        life = Lifecycle(JobRun(job, pm, run_id=run.id, state_dir=state_dir()))
        life.resume(run)
        loaded = _Loaded(life, time.monotonic(), busy=True)
        with self._cache_lock:
            self._jobs.setdefault(run.id, known)
            self._loaded[key] = loaded
        return loaded

    def _done(self, loaded: _Loaded) -> None:
        """The task is over: the run's stages stay loaded for the next of its chunks, unless
        the run has finished meanwhile (then they are closed: a DuckDB file is let go)."""
        with self._cache_lock:
            loaded.busy, loaded.used = False, time.monotonic()
            finished = loaded.life.run_id in self._finished
        if finished:
            self._forget(loaded.life.run_id)

    def _forget(self, run_id: str) -> None:
        """Close every thread's stages of a finished run (those not in use now: the rest close
        when their task ends)."""
        with self._cache_lock:
            self._finished.add(run_id)
            gone = [k for k, v in self._loaded.items() if k[1] == run_id and not v.busy]
            closing = [self._loaded.pop(k) for k in gone]
            if not any(k[1] == run_id for k in self._loaded):
                self._jobs.pop(run_id, None)
        for loaded in closing:
            loaded.work.close()

    def close_idle(self, idle: float) -> None:
        """Close stages unused for ``idle`` seconds, so that a worker between runs holds no
        connection or file lock."""
        now = time.monotonic()
        with self._cache_lock:
            gone = [k for k, v in self._loaded.items() if not v.busy and now - v.used > idle]
            closing = [self._loaded.pop(k) for k in gone]
            held = {k[1] for k in self._loaded}
            for run_id in [r for r in self._jobs if r not in held]:
                del self._jobs[run_id]
        for loaded in closing:
            loaded.work.close()

    def close(self) -> None:
        self.close_idle(-1.0)
        self.leases.close()

    def _log(self, run: RunRecord, chunk: int | None = None):
        bound = logger.bind(job=run.job, run=run.id)
        return bound.bind(chunk=chunk) if chunk is not None else bound

    def _unsigned(self, what: str) -> str:
        """The error of a record that fails its signature's check."""
        return (
            f"{what} is not signed with this worker's ETL_SECRET_KEY (worker {self.worker_id}): it was written "
            "into the store by someone else, or by a process without the same key; nothing was read or written"
        )

    def _load_or_fail(self, run: RunRecord) -> _Loaded | None:
        signer = self.queue.signer
        unsigned = signer.check_run(run) or signer.check_plan(run)
        if unsigned is not None:
            reason = self._unsigned(unsigned)
            self._log(run).error(reason)
            self._fail_unloaded(run, reason)
            return None
        try:
            return self._load(run)
        except ConfigErrors as exc:
            reason = f"the job is invalid on worker {self.worker_id}: {exc}"
        except Exception as exc:
            reason = f"loading the job failed on worker {self.worker_id}: {describe(exc)}"
        self._log(run).error(reason)
        self._fail_unloaded(run, reason)
        return None

    def _fail_unloaded(self, run: RunRecord, reason: str) -> None:
        """Fail a run whose job did not load here (no plugin hears of it: none is loaded)."""
        if self.store.fail_run(run.id, reason) and self.metrics is not None:
            self.metrics.run_finished(run.job, "failed")

    # -- dispatch --------------------------------------------------------------------------

    def dispatch(self, run: RunRecord, delay: float = 0.0) -> list[int]:
        """Queue as many of the run's pending chunks as its parallelism allows."""
        return self.queue.dispatch(run, self.slots(), delay)

    @contextmanager
    def _using(self, run: RunRecord) -> Iterator[_Loaded | None]:
        """The run's loaded job for one task (``None`` when it can't load: the run has failed)."""
        loaded = self._load_or_fail(run)
        try:
            yield loaded
        finally:
            if loaded is not None:
                self._done(loaded)

    def _fail(self, loaded: _Loaded, run_id: str, message: str, error: BaseException, chunk: int | None = None) -> None:
        """Fail the run (unless it has finished meanwhile) and tell the plugins, once."""
        failed = self.store.fail_run(run_id, message, chunk)
        if failed is not None:
            self._failed(loaded, failed, error, chunk)

    def _failed(self, loaded: _Loaded, run: RunRecord, error: BaseException, chunk: int | None = None) -> None:
        """Tell the plugins a run failed (``run`` as the failing transaction left it), once: by the
        worker whose failure failed it."""
        if run.state != "failed" or run.error_chunk != chunk:
            return
        if self.metrics is not None:
            self.metrics.run_finished(run.job, "failed")
        where = f" at chunk {chunk}" if chunk is not None else ""
        self._log(run).error("the run failed{}: {}{}", where, run.error, kept(run.id, loaded.life.staged()))
        loaded.life.failed(error, loaded.life.result(run))
        self._forget(run.id)
        self._retain()

    def reaped(self, run_id: str) -> None:
        """The reaper failed the run (its workers kept dying, or the process driving it died):
        tell the plugins, as for any failed run."""
        run = self.store.get_run(run_id)
        if run is None or run.state != "failed":
            return
        if self.metrics is not None:
            self.metrics.run_finished(run.job, "failed")
        with self._using(run) as loaded:
            if loaded is not None:
                loaded.life.failed(TransientError(run.error or "its workers died"), loaded.life.result(run))
        self._forget(run_id)

    # -- plan ------------------------------------------------------------------------------

    def plan(self, run_id: str) -> None:
        run = self.store.get_run(run_id)
        if run is None or run.state != "waiting":
            return
        if run.after is not None:
            before = self.store.get_run(run.after)
            if before is not None and not before.finished:
                # overlap: queue: this run waits for the one before it to finish.
                self.queue.send("etl.plan", run.id, delay=AFTER_POLL_SECONDS)
                return
        with self._using(run) as loaded:
            if loaded is not None:
                self._plan(run, loaded)

    def _plan(self, run: RunRecord, loaded: _Loaded) -> None:
        """Open the run (unless it was planned when it was submitted), start it, and dispatch."""
        log, life = self._log(run), loaded.life
        try:
            if not run.planned:
                mark = self.store.get_mark(run.job) if loaded.job.spec.incremental is not None else None
                window = Window.from_json(run.window) if run.window is not None else None
                info, plan, warnings = life.open(mark=mark, window=window)
                for warning in warnings:
                    log.warning(warning)
            life.start()
        except Exception as exc:
            log.opt(exception=exc).debug("planning failed")
            log.error("planning failed: {}", describe(exc))
            self._fail(loaded, run.id, f"planning failed: {describe(exc)}", exc)
            return
        # Submitted with its plan (`etl run`), the run only starts; else its plan is recorded now.
        now = (
            self.store.activate(run.id)
            if run.planned
            else record_plan(self.store, run.id, info, plan, secret=self.queue.signer.secret)
        )
        if now is None:
            return
        total = f"{now.rows_total:,}" if now.rows_total is not None else "an unknown number of"
        log.info(
            "planned {}: {} rows in {} chunks of up to {:,}",
            run.job,
            total,
            now.chunks_total,
            loaded.job.spec.chunk_size,
        )
        if not now.chunks_total:
            self.finalize(run.id)
        else:
            self.dispatch(now)

    # -- one chunk -------------------------------------------------------------------------

    def chunk(self, run_id: str, index: int) -> None:
        claimed = self.store.claim_with_run(run_id, index, self.worker_id, self.lease)
        if claimed is None:
            return  # done already, held by a live worker, or its run is not active
        run, record = claimed
        with self._using(run) as loaded:
            if loaded is not None:
                self._chunk(run, record, loaded)

    def _chunk(self, run: RunRecord, record: ChunkRecord, loaded: _Loaded) -> None:
        # ``attempts`` counts this chunk's tries (for the retry policy, hooks and logs); ``token``
        # only grows, fencing out older attempts even across `etl retry`.
        index, token, attempt = record.index, record.token, record.attempts
        log = self._log(run, index)
        unsigned = self.queue.signer.check_chunk(record)
        if unsigned is not None:  # refused before the source reads anything
            reason = self._unsigned(unsigned)
            failed = self.store.fail_chunk(run.id, index, token, reason)
            log.error("chunk {} refused: {}", index, reason)
            if failed is not None:
                self._failed(loaded, failed, PermanentError(reason), index)
            return
        member = f"{run.id}|{index}"
        with self._lock:
            self.in_hand[member] = token  # what release_all gives back on shutdown
        chunk = record.descriptor()
        try:
            with self.leases.hold(run.id, index, token) as stopped:
                outcome = loaded.life.attempt(chunk, run.shared, attempt, stop=stopped)
        finally:
            with self._lock:
                self.in_hand.pop(member, None)
        if isinstance(outcome, ChunkDone):
            self._chunk_done(run, record, loaded, outcome.result)
        elif isinstance(outcome, Retry):
            if self.store.retry_later(run.id, index, token, outcome.message, outcome.delay):
                if self.metrics is not None:
                    self.metrics.chunk_retry(run.job)
                self.queue.send("etl.chunk", run.id, index, delay=outcome.delay)
                log.warning(
                    "chunk {} attempt {}/{} failed: {}; retrying in {}",
                    index,
                    attempt,
                    loaded.life.policy.attempts,
                    outcome.message,
                    format_duration(outcome.delay),
                )
        elif isinstance(outcome, Failed):
            why = "" if outcome.transient else " (permanent: not retried)"
            failed = self.store.fail_chunk(run.id, index, token, outcome.message)
            if failed is not None:
                if self.metrics is not None:
                    self.metrics.chunk_failed(run.job)
                log.error("chunk {} failed after {} attempt(s){}: {}", index, attempt, why, outcome.message)
                self._failed(loaded, failed, outcome.error, index)
        elif isinstance(outcome, Stopped):
            if outcome.reason == "lost":
                log.warning("chunk {} attempt {} stopped: another worker took the chunk over", index, attempt)
            else:
                log.info("chunk {} stopped: the run is no longer active", index)

    def _chunk_done(self, run: RunRecord, record: ChunkRecord, loaded: _Loaded, result: ChunkResult) -> None:
        index = record.index
        log = self._log(run, index)
        signed = self.queue.signer.done(run.id, index, record.token, result.rows_written)
        # The chunk to follow is queued by the completion itself, unless its rejected rows may
        # fail the run (then only once the run's total passed the check).
        hand_out = not result.rows_rejected or loaded.job.spec.max_rejects is None
        limit = self.queue.parallelism(run, self.slots()) if hand_out else 0
        completion = self.store.complete(run.id, index, record.token, result, signed, hand_out=limit)
        if not completion.accepted:
            log.warning(
                "chunk {} attempt {}: another attempt took it over meanwhile; its result is not recorded",
                index,
                record.attempts,
            )
            return
        if self.metrics is not None:
            self.metrics.chunk_done(run.job, result)
        now = completion.run or run
        log.info("{}", chunk_line(now, index, result))
        too_many = loaded.life.written(record.descriptor(), result, now.rows_rejected)
        if too_many is not None:
            self._fail(loaded, run.id, describe(too_many), too_many, index)
        elif completion.last:
            self.finalize(run.id)
        elif hand_out:
            self.queue.send_chunks(run.id, completion.queued, delay=now.delay)
            if completion.room:  # the run may take more than it had (more workers): queue them
                self.dispatch(now, delay=now.delay)
        else:
            self.dispatch(now, delay=now.delay)

    # -- finalize and abort ---------------------------------------------------------------

    def finalize(self, run_id: str) -> None:
        run = self.store.claim_finalize(run_id, self.worker_id, self.lease)
        if run is None:
            return
        with self._using(run) as loaded:
            if loaded is not None:
                self._finalize(run, loaded)

    def _finalize(self, run: RunRecord, loaded: _Loaded) -> None:
        log = self._log(run)
        keeper = LeaseKeeper(
            lambda: "ok" if self.store.renew_finalize(run.id, self.worker_id, self.lease) else "lost",
            self.lease / 3,
            f"finalizing {run.id}",
        )
        chunks = self.store.get_chunks(run.id, run.chunks_total)
        unsigned = self._unfinished(run, chunks)
        if unsigned is not None:  # the sink is not told to make anything visible
            reason = f"finalizing refused: {self._unsigned(unsigned)}"
            log.error(reason)
            self._fail(loaded, run.id, reason, PermanentError(reason))
            return
        with keeper:
            outcome = loaded.life.finalize({c.index: c.rows_written for c in chunks}, run.finalize_attempts)
        if isinstance(outcome, Retry):
            log.warning("finalizing failed: {}; trying again in {}", outcome.message, format_duration(outcome.delay))
            self.queue.send("etl.finalize", run.id, delay=outcome.delay)
            return
        if isinstance(outcome, Failed):
            log.error("finalizing failed: {}", outcome.message)
            self._fail(loaded, run.id, f"finalizing failed: {outcome.message}", outcome.error)
            return
        done = self.store.finish(run.id, self.worker_id, job=run.job)
        if done is None:
            return
        if self.metrics is not None:
            self.metrics.run_finished(run.job, "completed")
        log.info(
            "completed: {:,} rows written in {} ({:,.0f} rows/s){}",
            done.rows_written,
            format_duration(done.seconds()),
            done.rows_per_second(),
            f"; {done.rows_rejected:,} rows rejected" if done.rows_rejected else "",
        )
        loaded.life.completed(loaded.life.result(done))
        self._forget(run.id)
        self._retain()

    def _unfinished(self, run: RunRecord, chunks: list[ChunkRecord]) -> str | None:
        """With a key: what says that a chunk of the run was not written, though the store
        counts every chunk done (a chunk missing, or its completion not signed); else ``None``."""
        signer = self.queue.signer
        if not signer.secret:
            return None
        seen = {c.index for c in chunks}
        missing = [i for i in range(run.chunks_total) if i not in seen]
        if missing:
            return f"the ledger of chunk {missing[0]}"
        return next((why for c in chunks if (why := signer.check_done(c)) is not None), None)

    def _retain(self) -> None:
        """Keep the store from growing without bound. A failed run beyond the ones kept is
        cancelled first (its sink drops what it kept staged for `etl retry`), a few at a time:
        retention never leaves a staging table behind with no run pointing to it."""
        try:
            excess = self.store.excess("failed", self.keep_runs)
            if excess:
                self.drop_failed(self.store.oldest("failed", limit=min(excess, RETAIN_FAILED_AT_ONCE)))
            self.store.enforce_retention(self.keep_runs, states=("completed", "cancelled"))
        except Exception as exc:  # housekeeping: the next finished run tries again
            logger.warning("deleting old runs failed: {}", describe(exc))

    def drop_failed(self, run_ids: list[str]) -> list[str]:
        """Cancel these failed runs and drop what their sinks kept staged; the ids of those whose
        staging is gone (the others keep it, and stay failed or cancelled for a later try)."""
        dropped = []
        for run_id in run_ids:
            if self.store.cancel_failed(run_id) is not None and self.abort(run_id):
                dropped.append(run_id)
        return dropped

    def abort(self, run_id: str) -> bool:
        """Drop what a cancelled run staged, once none of its chunks is still being written, and
        tell the plugins. False when that must wait (an ``etl.abort`` message is sent again)."""
        run = self.store.get_run(run_id)
        if run is None or run.state != "cancelled" or run.aborted:
            return True
        if self.queue.refusal() is not None:
            return False  # this process lacks the queue's key: a worker that has it drops the staging
        if self.store.in_flight(run_id, run.chunks_total):
            self.queue.send("etl.abort", run_id, delay=self.lease)
            return False
        with self._using(run) as loaded:
            if loaded is None:  # the job can't even load here: nothing more can be cleaned
                self.store.mark_aborted(run_id)
                return True
            if not loaded.life.abort():
                return False
            aborted = self.store.mark_aborted(run_id)
            if aborted is not None:  # the first to drop it tells the plugins
                loaded.life.cancelled(loaded.life.result(aborted))
        self._forget(run_id)
        return True

    # -- shutting down ---------------------------------------------------------------------

    def release_all(self) -> list[str]:
        """Give back every chunk this process holds, so that other workers take them at once."""
        with self._lock:
            held = dict(self.in_hand)
        released = []
        for member, token in held.items():
            run_id, index = member.rsplit("|", 1)
            if self.store.release(run_id, int(index), token):
                self.queue.send("etl.chunk", run_id, int(index))
                released.append(member)
        return released
