"""One run's life, the same for every way a job runs.

A run is opened (its incremental window fixed, its rows counted against the thresholds, its chunks
planned), started (``etl_before_job_run``, the sink prepared), its chunks attempted (each attempt
ends done, retried after a delay, failed, or stopped), finalized, and ends completed, failed or
cancelled. :class:`Lifecycle` decides each of those steps and fires the hooks that go with them;
it keeps no state of its own beyond the run in hand. Two drivers use it:

* :func:`etl.runner.run_job` loops over it in the calling process;
* :class:`etl.executor.Executor` maps its outcomes onto run-store transactions and queue messages.

Both record the run in the same run store, so that a hook, a view or a metric cannot tell which
driver ran it. The one policy for hooks (:meth:`Lifecycle.observe`): a plugin that raises in a
lifecycle hook is logged, with its traceback in the run log, and changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loguru import logger

from etl.errors import Interrupted, PermanentError, describe, is_transient
from etl.logsetup import hide_job_secrets
from etl.pipeline import JobRun, check_thresholds
from etl.preflight import check_columns
from etl.retry import Clock, RetryPolicy
from etl.runs import ChunkResult, RunInfo, RunResult

if TYPE_CHECKING:
    import random

    from etl.incremental import Window
    from etl.pipeline import ChunkRead
    from etl.stages import Chunk, Plan, RowCount
    from etl.store import RunRecord

__all__ = [
    "ChunkDone",
    "Failed",
    "LeaseKeeper",
    "Leases",
    "Lifecycle",
    "PlannedRun",
    "Retry",
    "Stopped",
    "kept",
    "result_of",
]


@dataclass(frozen=True)
class ChunkDone:
    """The attempt wrote its chunk."""

    result: ChunkResult


@dataclass(frozen=True)
class Retry:
    """The attempt failed and gets another after ``delay`` seconds."""

    error: BaseException
    delay: float

    @property
    def message(self) -> str:
        return describe(self.error)


@dataclass(frozen=True)
class Failed:
    """The attempt failed for good: the error is permanent, or the attempts are spent."""

    error: BaseException
    transient: bool

    @property
    def message(self) -> str:
        return describe(self.error)


@dataclass(frozen=True)
class Stopped:
    """The attempt was stopped between two batches: ``"lost"`` (another attempt holds the chunk
    now) or ``"stopped"`` (the run was cancelled or failed meanwhile)."""

    reason: str


Outcome = ChunkDone | Retry | Failed | Stopped


class Lifecycle:
    """The decisions and hooks of one run, around its stages (:class:`~etl.pipeline.JobRun`)."""

    def __init__(self, work: JobRun, *, rng: random.Random | None = None) -> None:
        hide_job_secrets(work.job)  # no error or log line of the run shows the job's secrets
        self.work = work
        self.job = work.job
        self.pm = work.pm
        self.log = work.log
        #: The one retry policy: chunk attempts, finalizing, and the reaper's verdict on a chunk
        #: whose workers keep dying all count against it.
        self.policy = RetryPolicy.from_spec(work.job.spec.retry)
        self.rng = rng
        self.info = RunInfo(
            work.run_id, work.job.name, dict(work.job.params), None, False, 0, rejects_dir=str(work.rejects_dir)
        )

    @property
    def run_id(self) -> str:
        return self.work.run_id

    # -- opening ---------------------------------------------------------------------------

    def open(
        self,
        *,
        mark: Mapping[str, Any] | None = None,
        window: Window | None = None,
        count: RowCount | None = None,
    ) -> tuple[RunInfo, Plan, list[str]]:
        """Fix the run's window (``window``, or one opened from the job's ``mark``), count its
        rows against the thresholds and plan its chunks. Returns the run, its plan, and the
        thresholds' warnings.

        Raises:
            UsageError: more rows than ``thresholds.max``.
            ConfigErrors: a column a stage names is not in the planned rows.
            Exception: whatever the source raised while counting or planning.
        """
        if self.job.spec.incremental is not None:
            if window is not None:
                self.work.set_window(window)
            else:
                self.work.open_window(mark)
        count = count or self.work.count()
        warnings = check_thresholds(self.job, count)
        info, plan = self.work.plan(count)
        # Every column a transform or the sink names, checked before anything is written.
        check_columns(self.job, self.work.source, self.work.transforms, self.work.sink)
        self.info = info
        return info, plan, warnings

    def resume(self, record: RunRecord) -> None:
        """Take up a run planned elsewhere (a worker given one of its chunks)."""
        from etl.incremental import Window

        if record.window is not None:
            self.work.set_window(Window.from_json(record.window))
        self.info = RunInfo(
            record.id,
            record.job,
            dict(self.job.params),
            record.rows_total,
            record.rows_exact,
            record.chunks_total,
            rejects_dir=str(self.work.rejects_dir),
            window=record.window,
        )

    def start(self) -> None:
        """The run is planned and its first chunk is next: tell the plugins, prepare the sink.

        Raises:
            Exception: whatever the sink raised while preparing.
        """
        self.observe("etl_before_job_run", job=self.job, run=self.info)
        self.work.sink.prepare()

    # -- one attempt at one chunk -------------------------------------------------------------

    def attempt(
        self,
        chunk: Chunk,
        shared: Mapping[str, Any],
        attempt: int,
        *,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        read: ChunkRead | None = None,
    ) -> Outcome:
        """Attempt ``chunk`` once and decide what follows. Only a ``KeyboardInterrupt`` (or another
        ``BaseException``) passes through."""
        self.observe("etl_before_chunk_run", job=self.job, run=self.info, chunk=chunk, attempt=attempt)
        try:
            result = self.work.run_chunk(chunk, shared, attempt, clock, stop, read)
        except Interrupted as exc:
            return Stopped(exc.reason)
        except Exception as exc:
            transient = is_transient(exc)
            will_retry = self.policy.should_retry(attempt, transient)
            self.log.bind(chunk=chunk.index).opt(exception=exc).debug(
                "chunk {} attempt {} failed", chunk.index, attempt
            )
            self.observe(
                "etl_on_chunk_error",
                job=self.job,
                run=self.info,
                chunk=chunk,
                error=exc,
                attempt=attempt,
                will_retry=will_retry,
            )
            if will_retry:
                return Retry(exc, self.policy.delay(attempt, self.rng))
            return Failed(exc, transient)
        return ChunkDone(result)

    def written(self, chunk: Chunk, result: ChunkResult, rows_rejected: int) -> PermanentError | None:
        """A chunk's write was recorded: tell the plugins. Returns the error that fails the run
        when the run's rejected rows (``rows_rejected``, over every chunk so far) are more than
        ``max_rejects``."""
        self.observe("etl_after_chunk_run", job=self.job, run=self.info, chunk=chunk, result=result)
        limit = self.job.spec.max_rejects
        if limit is not None and rows_rejected > limit:
            return PermanentError(f"{rows_rejected:,} rows rejected, more than max_rejects ({limit:,})")
        return None

    # -- the end ----------------------------------------------------------------------------------

    def finalize(self, written: Mapping[int, int], attempt: int) -> Retry | Failed | None:
        """Finalize the sink (``attempt`` counts the tries, as for a chunk); ``None`` when done."""
        try:
            self.work.finalize(written)
        except Exception as exc:
            self.log.opt(exception=exc).debug("finalizing failed")
            transient = is_transient(exc)
            if self.policy.should_retry(attempt, transient):
                return Retry(exc, self.policy.delay(attempt, self.rng))
            return Failed(exc, transient)
        return None

    def completed(self, result: RunResult) -> None:
        self.observe("etl_after_job_run", job=self.job, run=self.info, result=result)

    def failed(self, error: BaseException, result: RunResult) -> None:
        """The run has failed (and is recorded so). What the sink staged is kept, so that
        ``etl retry`` resumes the run; ``etl cancel`` drops it (:meth:`abort`)."""
        self.observe("etl_on_job_error", job=self.job, run=self.info, error=error, result=result)

    def staged(self) -> list[str]:
        """What the sink staged for the run (what a failed run keeps), as it names it; nothing
        when it can't tell."""
        try:
            return list(self.work.sink.staged())
        except Exception as exc:
            self.log.opt(exception=exc).debug("the sink could not say what it staged")
            return []

    def abort(self) -> bool:
        """Drop what the run staged (a cancel). False when the sink could not: the caller tries
        again later."""
        try:
            self.work.sink.abort()
        except Exception as exc:
            self.log.opt(exception=exc).debug("the sink's abort failed")
            self.log.warning("the sink could not drop what the run staged: {}", describe(exc))
            return False
        return True

    def cancelled(self, result: RunResult) -> None:
        """The run was cancelled and its sink has dropped what it staged."""
        self.observe("etl_on_job_cancel", job=self.job, run=self.info, result=result)

    def result(self, run: RunRecord) -> RunResult:
        """The :class:`~etl.runs.RunResult` that hooks and callers get, from the run's record."""
        result = result_of(run)
        if run.rows_rejected:
            result.rejects_dir = str(self.work.rejects_dir)
        return result

    def observe(self, hook: str, **kwargs: Any) -> None:
        """Call a lifecycle hook. A plugin that raises there is logged (its traceback in the run
        log) and changes nothing: the run goes on, and its outcome stands."""
        try:
            getattr(self.pm.hook, hook)(**kwargs)
        except Exception as exc:
            self.log.opt(exception=exc).debug("{} failed", hook)
            self.log.error("a plugin's {} failed: {}", hook, describe(exc))


def kept(run_id: str, staged: list[str]) -> str:
    """What a failed run leaves, and what to do with it: the tail of its failure message."""
    if not staged:
        return f"; nothing was staged for it: `etl retry {run_id}` runs its unfinished chunks again"
    return (
        f"; it keeps what its sink staged ({', '.join(staged)}): `etl retry {run_id}` runs its unfinished "
        f"chunks again and finalizes, `etl cancel {run_id}` drops it"
    )


def result_of(run: RunRecord) -> RunResult:
    """The :class:`~etl.runs.RunResult` that hooks get, from the run's record."""

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


class Leases:
    """Renews the leases of every chunk a process holds, from one thread, every ``interval``
    seconds, however busy the chunks' own threads are (a thread per chunk cost more than the work
    of a small chunk). A chunk's lease is held for its attempt (:meth:`hold`); the event that
    gives is set (with ``reason``) when the lease is lost or the run stops."""

    def __init__(self, renew: Callable[[str, int, int], str], interval: float) -> None:
        #: ``renew(run_id, index, token)``: ``"ok"``, ``"lost"`` or ``"stopped"``.
        self.renew = renew
        self.interval = interval
        self._held: dict[tuple[str, int], tuple[int, threading.Event]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, run_id: str, index: int, token: int) -> Iterator[threading.Event]:
        """Keep attempt ``token`` of the chunk leased while in the block."""
        stopped = threading.Event()
        stopped.reason = None  # type: ignore[attr-defined]
        key = (run_id, index)
        with self._lock:
            self._held[key] = (token, stopped)
            if self._thread is None:
                self._closing = threading.Event()
                self._thread = threading.Thread(target=self._loop, args=(self._closing,), name="leases", daemon=True)
                self._thread.start()
        try:
            yield stopped
        finally:
            with self._lock:
                if self._held.get(key, (0, None))[1] is stopped:
                    del self._held[key]

    def _loop(self, closing: threading.Event) -> None:
        while not closing.wait(self.interval):
            with self._lock:
                held = list(self._held.items())
            for (run_id, index), (token, stopped) in held:
                try:
                    status = self.renew(run_id, index, token)
                except Exception as exc:  # Redis away: keep trying; the lease may outlast the outage
                    logger.warning("renewing the lease of chunk {} of {} failed: {}", index, run_id, describe(exc))
                    continue
                with self._lock:
                    # A chunk let go (written) while its lease was being renewed has not lost it.
                    still = self._held.get((run_id, index), (0, None))[1] is stopped
                if status != "ok" and still:
                    stopped.reason = status  # type: ignore[attr-defined]
                    stopped.set()

    def close(self) -> None:
        """Stop the thread (a later :meth:`hold` starts another)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closing.set()
        if thread is not None:
            thread.join(timeout=5)


@dataclass
class PlannedRun:
    """A run opened and planned but not started: what :func:`etl.api.plan` returns, and what
    :func:`etl.api.run` and :func:`etl.api.submit` take, so that a run is counted and planned
    once. Its stages are open: :meth:`close` it if it is not run.

    Attributes:
        life: the run's lifecycle (its job, plugin manager and stages).
        plan: the chunks.
        warnings: what the thresholds said of its size.
        params, sets: the parameters and overrides the job was loaded with, as given (text):
            what the run's record keeps, for a worker that takes the run up (``etl retry``).
    """

    life: Lifecycle
    plan: Plan
    warnings: list[str]
    params: dict[str, str]
    sets: list[str]

    @property
    def info(self) -> RunInfo:
        return self.life.info

    @property
    def job(self) -> Any:
        return self.life.job

    @property
    def run_id(self) -> str:
        return self.life.run_id

    def close(self) -> None:
        self.life.work.close()
