"""What a worker does with each message: plan a run, run one chunk, finalize, abort.

Every step is checked against the run store first and recorded there after, so a message that
arrives twice, late, or for a run that was cancelled does nothing harmful. A chunk runs under a
lease that a thread renews; if the lease is lost (another worker took the chunk over) or the
run stops, the chunk's pipeline stops at its next batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from etl.errors import ConfigErrors, Interrupted, describe, is_transient
from etl.incremental import Window
from etl.jobs import load, state_dir
from etl.retry import RetryPolicy
from etl.runner import JobRun, check_thresholds
from etl.runs import ChunkResult, RunInfo, RunResult
from etl.schedule import run_context
from etl.store import ChunkRecord, RunRecord
from etl.units import format_duration

if TYPE_CHECKING:
    import pluggy

    from etl.config import Job
    from etl.metrics import WorkerMetrics
    from etl.queue import Queue

__all__ = ["Executor", "LeaseKeeper"]

#: How often a run queued behind another (``overlap: queue``) looks whether it may start.
AFTER_POLL_SECONDS = 2.0


class LeaseKeeper:
    """Renews a lease from its own thread every ``interval`` seconds, however busy the chunk's
    own thread is. ``stopped`` is set (with ``reason``) when the lease is lost or the run stops."""

    def __init__(self, renew: Callable[[], str], interval: float, what: str) -> None:
        self.renew = renew
        self.interval = interval
        self.what = what
        self.stopped = threading.Event()
        self.stopped.reason = None  # type: ignore[attr-defined]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease {what}", daemon=True)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                status = self.renew()
            except Exception as exc:  # Redis away: keep trying; the lease may outlast the outage
                logger.warning("renewing the lease of {} failed: {}", self.what, describe(exc))
                continue
            if status != "ok":
                self.stopped.reason = status  # type: ignore[attr-defined]
                self.stopped.set()
                return

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join(timeout=5)


@dataclass
class _Loaded:
    job: Job
    pm: pluggy.PluginManager
    work: JobRun
    info: RunInfo
    used: float
    busy: bool = False


class Executor:
    """Executes the queue's messages in one worker process (from any of its threads)."""

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
        self._loaded: dict[tuple[int, str], _Loaded] = {}
        self._finished: set[str] = set()
        self._cache_lock = threading.Lock()
        self._lock = threading.Lock()
        #: Chunks being worked on now: "run|index" → fencing token.
        self.in_hand: dict[str, int] = {}

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"etl.plan": self.plan, "etl.chunk": self.chunk, "etl.finalize": self.finalize, "etl.abort": self.abort}

    # -- loaded runs ---------------------------------------------------------------------

    def _load(self, run: RunRecord) -> _Loaded:
        """The run's job, validated in this process (``${VAR}`` from this worker's environment),
        with its stages made for this thread and marked busy until :meth:`_done`."""
        key = (threading.get_ident(), run.id)
        with self._cache_lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                loaded.busy = True
        if loaded is not None:
            if run.window is not None:  # the planned window, even if this thread opened another
                loaded.work.set_window(Window.from_json(run.window))
            return loaded
        context = run_context(None, "UTC", 0.0, run.interval) if run.interval is not None else None
        job, pm = load(
            None,
            text=run.job_text,
            params=run.params,
            sets=run.sets,
            env=None,
            pm=None,
            origin=run.job_file or None,
            run=context,
        )
        work = JobRun(job, pm, run_id=run.id, state_dir=state_dir())
        if run.window is not None:  # an incremental run's chunks read inside its planned window
            work.set_window(Window.from_json(run.window))
        info = RunInfo(
            run.id,
            run.job,
            dict(job.params),
            run.rows_total,
            run.rows_exact,
            run.chunks_total,
            rejects_dir=str(work.rejects_dir),
        )
        loaded = _Loaded(job, pm, work, info, time.monotonic(), busy=True)
        with self._cache_lock:
            self._loaded[key] = loaded
        return loaded

    def _done(self, loaded: _Loaded) -> None:
        """The task is over: the run's stages stay loaded for the next of its chunks, unless
        the run has finished meanwhile (then they are closed: a DuckDB file is let go)."""
        with self._cache_lock:
            loaded.busy, loaded.used = False, time.monotonic()
            finished = loaded.info.id in self._finished
        if finished:
            self._forget(loaded.info.id)

    def _forget(self, run_id: str) -> None:
        """Close every thread's stages of a finished run (those not in use now: the rest close
        when their task ends)."""
        with self._cache_lock:
            self._finished.add(run_id)
            gone = [k for k, v in self._loaded.items() if k[1] == run_id and not v.busy]
            closing = [self._loaded.pop(k) for k in gone]
        for loaded in closing:
            loaded.work.close()

    def close_idle(self, idle: float) -> None:
        """Close stages unused for ``idle`` seconds, so that a worker between runs holds no
        connection or file lock."""
        now = time.monotonic()
        with self._cache_lock:
            gone = [k for k, v in self._loaded.items() if not v.busy and now - v.used > idle]
            closing = [self._loaded.pop(k) for k in gone]
        for loaded in closing:
            loaded.work.close()

    def close(self) -> None:
        self.close_idle(-1.0)

    def _log(self, run: RunRecord, chunk: int | None = None):
        bound = logger.bind(job=run.job, run=run.id)
        return bound.bind(chunk=chunk) if chunk is not None else bound

    def _load_or_fail(self, run: RunRecord) -> _Loaded | None:
        if not self.queue.verify(run):
            reason = (
                f"the run's record is not signed with this worker's ETL_SECRET_KEY (worker {self.worker_id}): "
                "it was not submitted with the same key, or was written into the store by someone else"
            )
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

    def _failed(self, loaded: _Loaded, run_id: str, error: BaseException, chunk: int | None = None) -> None:
        """Tell the plugins a run failed, once: by the worker whose failure failed it."""
        run = self.store.get_run(run_id)
        if run is None or run.state != "failed" or run.error_chunk != chunk:
            return
        if self.metrics is not None:
            self.metrics.run_finished(run.job, "failed")
        self._observe(loaded, "etl_on_job_error", job=loaded.job, run=loaded.info, error=error, result=_result(run))
        self._forget(run_id)
        self._retain()

    # -- plan ------------------------------------------------------------------------------

    def plan(self, run_id: str) -> None:
        run = self.store.get_run(run_id)
        if run is None or run.state != "waiting" or run.planned:
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
        log = self._log(run)
        try:
            if loaded.job.spec.incremental is not None:
                if run.window is not None:
                    loaded.work.set_window(Window.from_json(run.window))
                else:
                    loaded.work.open_window(self.store.get_mark(run.job))
            count = loaded.work.count()
            for warning in check_thresholds(loaded.job, count):
                log.warning(warning)
            info, plan = loaded.work.plan(count)
            loaded.info = info
            loaded.pm.hook.etl_before_job_run(job=loaded.job, run=info)
            loaded.work.sink.prepare()
        except Exception as exc:
            log.opt(exception=exc).debug("planning failed")
            log.error("planning failed: {}", describe(exc))
            if self.store.fail_run(run.id, f"planning failed: {describe(exc)}"):
                self._failed(loaded, run.id, exc)
            return
        if not self.store.set_plan(
            run.id,
            rows=info.rows,
            exact=info.rows_exact,
            chunks=plan.chunks,
            shared=dict(plan.shared),
            window=info.window,
        ):
            return
        total = f"{info.rows:,}" if info.rows is not None else "an unknown number of"
        log.info(
            "planned {}: {} rows in {} chunks of up to {:,}", run.job, total, info.chunks, loaded.job.spec.chunk_size
        )
        if not plan.chunks:
            self.finalize(run.id)
        else:
            self.dispatch(self.store.get_run(run.id) or run)

    # -- one chunk -------------------------------------------------------------------------

    def chunk(self, run_id: str, index: int) -> None:
        record = self.store.claim(run_id, index, self.worker_id, self.lease)
        if record is None:
            return  # done already, held by a live worker, or its run is not active
        run = self.store.get_run(run_id)
        if run is None:
            return
        with self._using(run) as loaded:
            if loaded is not None:
                self._chunk(run, record, loaded)

    def _chunk(self, run: RunRecord, record: ChunkRecord, loaded: _Loaded) -> None:
        index, token = record.index, record.token
        member = f"{run.id}|{index}"
        with self._lock:
            self.in_hand[member] = token  # what release_all gives back on shutdown
        log = self._log(run, index)
        keeper = LeaseKeeper(
            lambda: self.store.renew(run.id, index, token, self.lease), self.lease / 3, f"chunk {index} of {run.id}"
        )
        try:
            with keeper:
                outcome = self._attempt(loaded, run, record, keeper)
        finally:
            with self._lock:
                self.in_hand.pop(member, None)
        if outcome is None:
            return
        completion = self.store.complete(run.id, index, token, outcome)
        if not completion.accepted:
            log.warning(
                "chunk {} attempt {}: another attempt took it over meanwhile; its result is not recorded",
                index,
                record.attempts,
            )
            return
        if self.metrics is not None:
            self.metrics.chunk_done(run.job, outcome)
        self._observe(
            loaded, "etl_after_chunk_run", job=loaded.job, run=loaded.info, chunk=record.descriptor(), result=outcome
        )
        now = self.store.get_run(run.id) or run
        log.info("{}", _progress(now, index, outcome))
        if completion.last:
            self.finalize(run.id)
        else:
            self.dispatch(now, delay=now.delay)

    def _attempt(self, loaded: _Loaded, run: RunRecord, record: ChunkRecord, keeper: LeaseKeeper) -> ChunkResult | None:
        # ``attempt`` counts this chunk's tries (for the retry policy, hooks and logs); ``token``
        # only grows, fencing out older attempts even across `etl retry`.
        index, attempt, token = record.index, record.attempts, record.token
        log = self._log(run, index)
        chunk = record.descriptor()
        policy = RetryPolicy.from_spec(loaded.job.spec.retry)
        try:
            loaded.pm.hook.etl_before_chunk_run(job=loaded.job, run=loaded.info, chunk=chunk, attempt=attempt)
            return loaded.work.run_chunk(chunk, run.shared, attempt=attempt, stop=keeper.stopped)
        except Interrupted as exc:
            if exc.reason == "lost":
                log.warning("chunk {} attempt {} stopped: another worker took the chunk over", index, attempt)
            else:
                log.info("chunk {} stopped: the run is no longer active", index)
            return None
        except Exception as exc:
            transient = is_transient(exc)
            will_retry = policy.should_retry(attempt, transient)
            self._observe(
                loaded,
                "etl_on_chunk_error",
                job=loaded.job,
                run=loaded.info,
                chunk=chunk,
                error=exc,
                attempt=attempt,
                will_retry=will_retry,
            )
            message = describe(exc)
            log.opt(exception=exc).debug("chunk {} attempt {} failed", index, attempt)
            if will_retry:
                delay = policy.delay(attempt)
                if self.store.retry_later(run.id, index, token, message, delay):
                    if self.metrics is not None:
                        self.metrics.chunk_retry(run.job)
                    self.queue.send("etl.chunk", run.id, index, delay=delay)
                    log.warning(
                        "chunk {} attempt {}/{} failed: {}; retrying in {}",
                        index,
                        attempt,
                        policy.attempts,
                        message,
                        format_duration(delay),
                    )
                return None
            why = "" if transient else " (permanent: not retried)"
            if self.store.fail_chunk(run.id, index, token, message):
                if self.metrics is not None:
                    self.metrics.chunk_failed(run.job)
                log.error("chunk {} failed after {} attempt(s){}: {}; the run failed", index, attempt, why, message)
                self._failed(loaded, run.id, exc, index)
            return None

    # -- finalize and abort ---------------------------------------------------------------

    def finalize(self, run_id: str) -> None:
        if not self.store.claim_finalize(run_id, self.worker_id, self.lease):
            return
        run = self.store.get_run(run_id)
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
        try:
            with keeper:
                loaded.work.finalize({c.index: c.rows_written for c in chunks})
        except Exception as exc:
            log.opt(exception=exc).debug("finalize failed")
            if is_transient(exc):
                delay = RetryPolicy.from_spec(loaded.job.spec.retry).delay(1)
                log.warning("finalizing failed: {}; trying again in {}", describe(exc), format_duration(delay))
                self.queue.send("etl.finalize", run.id, delay=delay)
            else:
                log.error("finalizing failed: {}", describe(exc))
                if self.store.fail_run(run.id, f"finalizing failed: {describe(exc)}"):
                    self._failed(loaded, run.id, exc)
            return
        if not self.store.finish(run.id, self.worker_id):
            return
        if self.metrics is not None:
            self.metrics.run_finished(run.job, "completed")
        done = self.store.get_run(run.id) or run
        log.info(
            "completed: {:,} rows written in {} ({:,.0f} rows/s){}",
            done.rows_written,
            format_duration(done.seconds()),
            done.rows_per_second(),
            f"; {done.rows_rejected:,} rows rejected" if done.rows_rejected else "",
        )
        self._observe(loaded, "etl_after_job_run", job=loaded.job, run=loaded.info, result=_result(done))
        self._forget(run.id)
        self._retain()

    def _retain(self) -> None:
        try:
            self.store.enforce_retention(self.keep_runs)
        except Exception as exc:  # housekeeping: the next finished run tries again
            logger.warning("deleting old runs failed: {}", describe(exc))

    def abort(self, run_id: str) -> None:
        """Drop what a cancelled run staged, once none of its chunks is still being written."""
        run = self.store.get_run(run_id)
        if run is None or run.state != "cancelled" or run.aborted:
            return
        now = self.store.clock()
        chunks = self.store.get_chunks(run_id, run.chunks_total)
        if any(c.state == "running" and (c.lease_until or 0) >= now for c in chunks):
            self.queue.send("etl.abort", run_id, delay=self.lease)
            return
        with self._using(run) as loaded:
            if loaded is None:  # the job can't even load here: nothing more can be cleaned
                self.store.mark_aborted(run_id)
                return
            try:
                loaded.work.sink.abort()
            except Exception as exc:
                self._log(run).warning("the sink could not clean up after the cancelled run: {}", describe(exc))
                return
        self.store.mark_aborted(run_id)
        self._forget(run_id)

    def _observe(self, loaded: _Loaded, hook: str, **kwargs: Any) -> None:
        """Call a lifecycle hook; a plugin failing in it is logged and changes nothing."""
        try:
            getattr(loaded.pm.hook, hook)(**kwargs)
        except Exception as exc:
            logger.opt(exception=exc).debug("{} failed", hook)
            logger.error("a plugin's {} failed: {}", hook, describe(exc))

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


def _progress(run: RunRecord, index: int, result: ChunkResult) -> str:
    total = f"/{run.rows_total:,}" if run.rows_total is not None else ""
    share = f" ({run.rows_read / run.rows_total:.1%})" if run.rows_total else ""
    eta = run.eta()
    parts = [
        f"chunk {index} done: {result.rows_written:,} rows in {format_duration(result.seconds)}",
        f"run {run.chunks_done}/{run.chunks_total} chunks, {run.rows_read:,}{total} rows{share}",
        f"{run.rows_per_second():,.0f} rows/s",
    ]
    if eta is not None and run.chunks_done < run.chunks_total:
        parts.append(f"ETA {format_duration(eta)}")
    if result.attempt > 1:
        parts.append(f"attempt {result.attempt}")
    return " · ".join(parts)


def _result(run: RunRecord) -> RunResult:
    from datetime import UTC, datetime

    def stamp(ts: float | None) -> datetime | None:
        return None if ts is None else datetime.fromtimestamp(ts, UTC)

    return RunResult(
        run_id=run.id,
        job=run.job,
        state=run.state if run.state in ("completed", "failed", "cancelled") else "active",
        rows_total=run.rows_total,
        rows_read=run.rows_read,
        rows_written=run.rows_written,
        rows_rejected=run.rows_rejected,
        chunks_total=run.chunks_total,
        chunks_done=run.chunks_done,
        chunks_failed=run.chunks_failed,
        retries=run.retries,
        started_at=stamp(run.started_at) or stamp(run.created_at),  # type: ignore[arg-type]
        finished_at=stamp(run.finished_at),
        error=run.error,
        error_chunk=run.error_chunk,
    )
