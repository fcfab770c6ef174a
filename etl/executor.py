"""What a worker does with each message: plan a run, run one chunk, finalize, abort.

Every step is checked against the run store first and recorded there after, so a message that
arrives twice, late, or for a run that was cancelled does nothing harmful. A chunk runs under a
lease that a thread renews; if the lease is lost (another worker took the chunk over) or the
run stops, the chunk's pipeline stops at its next batch.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from etl.errors import ConfigErrors, Interrupted, describe, is_transient
from etl.jobs import load, state_dir
from etl.retry import RetryPolicy
from etl.runner import JobRun, check_thresholds
from etl.runs import ChunkResult, RunInfo, RunResult
from etl.store import ChunkRecord, RunRecord
from etl.units import format_duration

if TYPE_CHECKING:
    import pluggy

    from etl.config import Job
    from etl.queue import Queue

__all__ = ["Executor", "LeaseKeeper"]

#: Runs kept loaded (stages instantiated, connections open) per worker thread.
CACHED_RUNS = 2


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
    ):
        self.queue = queue
        self.store = queue.store
        self.worker_id = worker_id
        self.lease = lease
        self.slots = slots or (lambda: 1)
        self.keep_runs = keep_runs
        self._local = threading.local()
        self._lock = threading.Lock()
        #: Chunks being worked on now: "run|index" → fencing token.
        self.in_hand: dict[str, int] = {}

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"etl.plan": self.plan, "etl.chunk": self.chunk, "etl.finalize": self.finalize, "etl.abort": self.abort}

    # -- loaded runs ---------------------------------------------------------------------

    def _cache(self) -> OrderedDict[str, _Loaded]:
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        return cache

    def _load(self, run: RunRecord) -> _Loaded:
        """The run's job, validated in this process (``${VAR}`` from this worker's environment),
        with its stages made for this thread."""
        cache = self._cache()
        loaded = cache.get(run.id)
        if loaded is None:
            job, pm = load(
                None,
                text=run.job_text,
                params=run.params,
                sets=run.sets,
                env=None,
                pm=None,
                origin=run.job_file or None,
            )
            work = JobRun(job, pm, run_id=run.id, state_dir=state_dir())
            info = RunInfo(
                run.id,
                run.job,
                dict(job.params),
                run.rows_total,
                run.rows_exact,
                run.chunks_total,
                rejects_dir=str(work.rejects_dir),
            )
            loaded = _Loaded(job, pm, work, info, time.monotonic())
            cache[run.id] = loaded
            while len(cache) > CACHED_RUNS:
                _, old = cache.popitem(last=False)
                old.work.close()
        cache.move_to_end(run.id)
        loaded.used = time.monotonic()
        return loaded

    def _forget(self, run_id: str) -> None:
        loaded = self._cache().pop(run_id, None)
        if loaded is not None:
            loaded.work.close()

    def close(self) -> None:
        for loaded in self._cache().values():
            loaded.work.close()
        self._cache().clear()

    def _log(self, run: RunRecord, chunk: int | None = None):
        bound = logger.bind(job=run.job, run=run.id)
        return bound.bind(chunk=chunk) if chunk is not None else bound

    def _load_or_fail(self, run: RunRecord) -> _Loaded | None:
        try:
            return self._load(run)
        except ConfigErrors as exc:
            reason = f"the job is invalid on worker {self.worker_id}: {exc}"
        except Exception as exc:
            reason = f"loading the job failed on worker {self.worker_id}: {describe(exc)}"
        self._log(run).error(reason)
        self.store.fail_run(run.id, reason)
        return None

    # -- dispatch --------------------------------------------------------------------------

    def dispatch(self, run: RunRecord, delay: float = 0.0) -> list[int]:
        """Queue as many of the run's pending chunks as its parallelism allows."""
        limit = run.max_parallel or max(self.slots(), 1)
        indices = self.store.dispatch(run.id, limit)
        for index in indices:
            self.queue.send("etl.chunk", run.id, index, delay=delay)
        return indices

    # -- plan ------------------------------------------------------------------------------

    def plan(self, run_id: str) -> None:
        run = self.store.get_run(run_id)
        if run is None or run.state != "waiting" or run.planned:
            return
        loaded = self._load_or_fail(run)
        if loaded is None:
            return
        log = self._log(run)
        try:
            count = loaded.work.count()
            for warning in check_thresholds(loaded.job, count):
                log.warning(warning)
            info, plan = loaded.work.plan(count)
            loaded.work.sink.prepare()
        except Exception as exc:
            log.opt(exception=exc).debug("planning failed")
            self.store.fail_run(run_id, f"planning failed: {describe(exc)}")
            log.error("planning failed: {}", describe(exc))
            return
        if not self.store.set_plan(
            run_id, rows=info.rows, exact=info.rows_exact, chunks=plan.chunks, shared=dict(plan.shared)
        ):
            return
        loaded.info = info
        total = f"{info.rows:,}" if info.rows is not None else "an unknown number of"
        log.info(
            "planned {}: {} rows in {} chunks of up to {:,}", run.job, total, info.chunks, loaded.job.spec.chunk_size
        )
        loaded.pm.hook.etl_before_job_run(job=loaded.job, run=info)
        run = self.store.get_run(run_id) or run
        if not plan.chunks:
            self.finalize(run_id)
        else:
            self.dispatch(run)

    # -- one chunk -------------------------------------------------------------------------

    def chunk(self, run_id: str, index: int) -> None:
        record = self.store.claim(run_id, index, self.worker_id, self.lease)
        if record is None:
            return  # done already, held by a live worker, or its run is not active
        run = self.store.get_run(run_id)
        if run is None:
            return
        loaded = self._load_or_fail(run)
        if loaded is None:
            return
        token = record.token
        member = f"{run_id}|{index}"
        with self._lock:
            self.in_hand[member] = token  # what release_all gives back on shutdown
        log = self._log(run, index)
        keeper = LeaseKeeper(
            lambda: self.store.renew(run_id, index, token, self.lease), self.lease / 3, f"chunk {index} of {run_id}"
        )
        try:
            with keeper:
                outcome = self._attempt(loaded, run, record, keeper)
        finally:
            with self._lock:
                self.in_hand.pop(member, None)
        if outcome is None:
            return
        completion = self.store.complete(run_id, index, token, outcome)
        if not completion.accepted:
            log.warning(
                "chunk {} attempt {}: another attempt took it over meanwhile; its result is not recorded",
                index,
                record.attempts,
            )
            return
        loaded.pm.hook.etl_after_chunk_run(job=loaded.job, run=loaded.info, chunk=record.descriptor(), result=outcome)
        now = self.store.get_run(run_id) or run
        log.info("{}", _progress(now, index, outcome))
        if completion.last:
            self.finalize(run_id)
        else:
            self.dispatch(now, delay=now.delay)

    def _attempt(self, loaded: _Loaded, run: RunRecord, record: ChunkRecord, keeper: LeaseKeeper) -> ChunkResult | None:
        # ``attempt`` counts this chunk's tries (for the retry policy, hooks and logs); ``token``
        # only grows, fencing out older attempts even across `etl retry`.
        index, attempt, token = record.index, record.attempts, record.token
        log = self._log(run, index)
        chunk = record.descriptor()
        policy = RetryPolicy.from_spec(loaded.job.spec.retry)
        loaded.pm.hook.etl_before_chunk_run(job=loaded.job, run=loaded.info, chunk=chunk, attempt=attempt)
        try:
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
            loaded.pm.hook.etl_on_chunk_error(
                job=loaded.job, run=loaded.info, chunk=chunk, error=exc, attempt=attempt, will_retry=will_retry
            )
            message = describe(exc)
            log.opt(exception=exc).debug("chunk {} attempt {} failed", index, attempt)
            if will_retry:
                delay = policy.delay(attempt)
                if self.store.retry_later(run.id, index, token, message, delay):
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
                log.error("chunk {} failed after {} attempt(s){}: {}; the run failed", index, attempt, why, message)
                failed = self.store.get_run(run.id)
                result = _result(failed or run)
                self._observe(loaded, "etl_on_job_error", job=loaded.job, run=loaded.info, error=exc, result=result)
                self._retain()
            return None

    # -- finalize and abort ---------------------------------------------------------------

    def finalize(self, run_id: str) -> None:
        if not self.store.claim_finalize(run_id, self.worker_id, self.lease):
            return
        run = self.store.get_run(run_id)
        if run is None:
            return
        loaded = self._load_or_fail(run)
        if loaded is None:
            return
        log = self._log(run)
        keeper = LeaseKeeper(
            lambda: "ok" if self.store.renew_finalize(run_id, self.worker_id, self.lease) else "lost",
            self.lease / 3,
            f"finalizing {run_id}",
        )
        try:
            with keeper:
                loaded.work.sink.finalize()
        except Exception as exc:
            log.opt(exception=exc).debug("finalize failed")
            if is_transient(exc):
                delay = RetryPolicy.from_spec(loaded.job.spec.retry).delay(1)
                log.warning("finalizing failed: {}; trying again in {}", describe(exc), format_duration(delay))
                self.queue.send("etl.finalize", run_id, delay=delay)
            else:
                self.store.fail_run(run_id, f"finalizing failed: {describe(exc)}")
                log.error("finalizing failed: {}", describe(exc))
            return
        if not self.store.finish(run_id, self.worker_id):
            return
        done = self.store.get_run(run_id) or run
        log.info(
            "completed: {:,} rows written in {} ({:,.0f} rows/s){}",
            done.rows_written,
            format_duration(done.seconds()),
            done.rows_per_second(),
            f"; {done.rows_rejected:,} rows rejected" if done.rows_rejected else "",
        )
        self._observe(loaded, "etl_after_job_run", job=loaded.job, run=loaded.info, result=_result(done))
        self._forget(run_id)
        self._retain()

    def _retain(self) -> None:
        try:
            self.store.enforce_retention(self.keep_runs)
        except Exception as exc:  # housekeeping: the next finished run tries again
            logger.warning("deleting old runs failed: {}", describe(exc))

    def abort(self, run_id: str) -> None:
        """Drop what a cancelled run staged, once none of its chunks is still being written."""
        run = self.store.get_run(run_id)
        if run is None or run.state != "cancelled":
            return
        now = self.store.clock()
        busy = [
            c
            for c in self.store.get_chunks(run_id, run.chunks_total)
            if c.state == "running" and (c.lease_until or 0) >= now
        ]
        if busy:
            self.queue.send("etl.abort", run_id, delay=self.lease)
            return
        loaded = self._load_or_fail(run)
        if loaded is None:
            return
        try:
            loaded.work.sink.abort()
        except Exception as exc:
            self._log(run).warning("the sink could not clean up after the cancelled run: {}", describe(exc))
        self._forget(run_id)

    def _observe(self, loaded: _Loaded, hook: str, **kwargs: Any) -> None:
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
