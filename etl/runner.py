"""Running a job in this process: the in-process driver of the run lifecycle.

:func:`run_job` loops over a planned run's chunks one after another, asking
:class:`~etl.lifecycle.Lifecycle` what each attempt's outcome means, and records every step in the
run store exactly as a worker would (:class:`~etl.executor.Executor`): the run and its chunk
ledger, leases included. So an in-process run shows in ``etl runs``, ``etl status``, the dashboard
and the metrics, counts for ``overlap:`` and ``concurrency:``, and ``etl cancel`` stops it from
another terminal. When this process dies, a worker's reaper fails the run once its lease runs out,
and ``etl retry`` resumes it on the workers.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from etl.errors import EtlError, JobFailed, TransientError, UsageError, describe
from etl.lifecycle import ChunkDone, Failed, LeaseKeeper, PlannedRun, Retry, Stopped, kept
from etl.pipeline import ReadAhead
from etl.progress import chunk_line
from etl.records import Signer, busy, key_refusal, new_record, record_plan
from etl.retry import Clock, SystemClock
from etl.units import format_duration

if TYPE_CHECKING:
    from etl.runs import RunResult
    from etl.stages import Chunk
    from etl.store import RunRecord, RunStore

__all__ = ["run_job"]

#: How long an in-process run's chunk stays its own without a renewal (renewed every third).
LEASE_SECONDS = 15.0


def run_job(
    planned: PlannedRun,
    store: RunStore,
    *,
    secret: str = "",
    clock: Clock | None = None,
    lease: float = LEASE_SECONDS,
    keep_runs: int = 1000,
) -> RunResult:
    """Run every chunk of ``planned`` in this process, one after another, retrying as the job says,
    and record the run in ``store``.

    Returns the :class:`~etl.runs.RunResult`. A failed or cancelled run raises
    :class:`~etl.errors.JobFailed` carrying it; a run interrupted with Ctrl-C is cancelled (its
    staging dropped) and the ``KeyboardInterrupt`` re-raised.

    Once the run has finished, the store keeps the ``keep_runs`` most recent completed and
    cancelled runs, as a worker does (failed runs are left to the workers and ``etl clean``:
    their sinks keep what they staged, for ``etl retry``).

    Raises:
        UsageError: the job's ``concurrency:`` is reached, or the store's queue is keyed
            (``ETL_SECRET_KEY``) and ``secret`` is not its key.
        TransientError: the run store can't be reached (the run did not start).
    """
    driver = _InProcess(planned, store, clock or SystemClock(), lease, Signer(secret))
    try:
        driver.record()
    except BaseException:
        planned.close()
        raise
    try:
        return driver.run()
    finally:
        try:
            store.enforce_retention(keep_runs, states=("completed", "cancelled"))
        except EtlError as exc:  # housekeeping: the next run tries again
            driver.log.warning("deleting old runs failed: {}", describe(exc))


class _End(Exception):
    """The run ended before it completed: failed (``error``) or stopped from elsewhere."""

    def __init__(self, error: BaseException | None, chunk: int | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.chunk = chunk


class _InProcess:
    def __init__(self, planned: PlannedRun, store: RunStore, clock: Clock, lease: float, signer: Signer) -> None:
        self.planned = planned
        self.signer = signer
        self.life = planned.life
        self.job = planned.job
        self.store = store
        self.clock = clock
        self.lease = lease
        self.run_id = planned.run_id
        self.owner = f"{socket.gethostname()}:{os.getpid()}:process"
        self.log = self.life.log
        self.written: dict[int, int] = {}
        #: The run as its completion left it.
        self.done: RunRecord | None = None
        #: The chunk in hand (index, fencing token), whose lease :attr:`keeper` renews.
        self.held: tuple[int, int] | None = None
        self.keeper = LeaseKeeper(self._renew, lease / 3, f"the chunks of {self.run_id}")

    def record(self) -> None:
        """Record the run, planned and active, signed as a submitter signs it (``etl retry``
        hands a failed in-process run to the workers)."""
        info, plan, secret = self.planned.info, self.planned.plan, self.signer.secret
        record = new_record(
            self.job,
            secret=secret,
            params=self.planned.params,
            sets=self.planned.sets,
            run_id=self.run_id,
            window=info.window,
            driver="process",
        )
        try:
            refused = key_refusal(self.store, secret)
            if refused is not None:
                raise UsageError(refused)
            unfinished = self.store.create_run(record, limit=self.job.spec.concurrency)
            if unfinished is not None:
                raise busy(self.job, unfinished)
            record_plan(self.store, self.run_id, info, plan, secret=secret)
        except TransientError as exc:
            raise TransientError(
                f"the run store ({self.store.kv.display}) can't be reached, and in-process runs are recorded "
                f"there too: {exc}; start it, or unset ETL_QUEUE_URL and REDIS_HOST for the embedded store"
            ) from None

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        info, plan, job = self.planned.info, self.planned.plan, self.job
        for warning in self.planned.warnings:
            self.log.warning(warning)
        total = f"{info.rows:,}" if info.rows is not None else "an unknown number of"
        self.log.info(
            "starting {}: {} rows in {} chunks of up to {:,}", job.name, total, info.chunks, job.spec.chunk_size
        )
        ahead: ReadAhead | None = None
        try:
            try:
                self.life.start()
            except Exception as exc:
                self._fail_run(f"starting failed: {describe(exc)}", None)
                raise _End(exc) from exc
            # Read the next chunk while the sink writes this one, unless the job asks for a pause
            # between chunks (then the source rests too).
            if len(plan.chunks) > 1 and not job.spec.delay:
                ahead = ReadAhead(self.life.work, plan.chunks, plan.shared)
            # One thread renews the lease of the chunk in hand, whichever it is.
            with self.keeper:
                for chunk in plan.chunks:
                    if chunk.index and job.spec.delay:
                        self.clock.sleep(job.spec.delay)
                    self._chunk(chunk, ahead)
            self._finalize()
        except KeyboardInterrupt:
            _discard(ahead)
            self.store.cancel(self.run_id)
            self._cancelled("interrupted")
            raise
        except _End as end:
            _discard(ahead)
            return self._ended(end)
        except Exception as exc:  # the store itself failed us
            _discard(ahead)
            self.log.opt(exception=exc).debug("the run broke off")
            with contextlib.suppress(EtlError):
                self._fail_run(describe(exc), None)
            raise JobFailed(f"run {self.run_id} failed: {describe(exc)}") from exc
        assert self.done is not None
        result = self.life.result(self.done)
        self.log.info(
            "completed: {:,} rows written in {} ({:,.0f} rows/s){}",
            result.rows_written,
            format_duration(result.seconds),
            result.rows_per_second,
            f"; {result.rows_rejected:,} rows rejected, see {result.rejects_dir}" if result.rows_rejected else "",
        )
        if self.life.work.window is not None and not self.life.work.window.empty:
            from etl.incremental import shown

            self.log.info("incremental: the mark of {} is now {}", job.name, shown(self.life.work.window.high))
        self.life.work.close()
        self.life.completed(result)
        return result

    def _chunk(self, planned: Chunk, ahead: ReadAhead | None) -> None:
        log = self.log.bind(chunk=planned.index)
        first = True
        while True:
            record = self.store.claim(self.run_id, planned.index, self.owner, self.lease)
            if record is None or self.keeper.stopped.is_set():
                raise _End(None)  # the run was cancelled or failed from elsewhere
            token = record.token
            read = ahead.take(planned) if ahead is not None and first else None
            first = False
            self.held = (planned.index, token)
            # The chunk as this process planned it (the store's copy is for the workers).
            chunk = replace(planned, attempt=token)
            try:
                outcome = self.life.attempt(
                    chunk,
                    self.planned.plan.shared,
                    record.attempts,
                    clock=self.clock,
                    stop=self.keeper.stopped,
                    read=read,
                )
            finally:
                self.held = None
            if not isinstance(outcome, ChunkDone):
                _discard(ahead)  # a retry (or the failure) has the stages to itself
            if isinstance(outcome, ChunkDone):
                result = outcome.result
                signed = self.signer.done(self.run_id, planned.index, token, result.rows_written)
                completion = self.store.complete(self.run_id, planned.index, token, result, signed)
                if not completion.accepted or completion.run is None:
                    raise _End(None)
                self.written[planned.index] = result.rows_written
                run = completion.run
                log.info("{}", chunk_line(run, planned.index, result))
                too_many = self.life.written(chunk, result, run.rows_rejected)
                if too_many is not None:
                    self._fail_run(describe(too_many), planned.index)
                    raise _End(too_many, planned.index)
                return
            if isinstance(outcome, Retry):
                self.store.retry_later(self.run_id, planned.index, token, outcome.message, outcome.delay)
                log.warning(
                    "chunk {} attempt {}/{} failed: {}; retrying in {}",
                    planned.index,
                    record.attempts,
                    self.life.policy.attempts,
                    outcome.message,
                    format_duration(outcome.delay),
                )
                self.clock.sleep(outcome.delay)
                continue
            if isinstance(outcome, Failed):
                self.store.fail_chunk(self.run_id, planned.index, token, outcome.message)
                raise _End(outcome.error, planned.index)
            assert isinstance(outcome, Stopped)
            raise _End(None)

    def _renew(self) -> str:
        held = self.held
        if held is None:
            return "ok"
        status = self.store.renew(self.run_id, held[0], held[1], self.lease)
        # A chunk let go (written) while its lease was being renewed is not a lost lease.
        return status if self.held == held else "ok"

    def _finalize(self) -> None:
        while True:
            run = self.store.claim_finalize(self.run_id, self.owner, self.lease)
            if run is None:
                raise _End(None)
            keeper = LeaseKeeper(
                lambda: "ok" if self.store.renew_finalize(self.run_id, self.owner, self.lease) else "lost",
                self.lease / 3,
                f"finalizing {self.run_id}",
            )
            with keeper:
                outcome = self.life.finalize(self.written, run.finalize_attempts)
            if outcome is None:
                self.done = self.store.finish(self.run_id, self.owner, job=self.job.name)
                if self.done is None:
                    raise _End(None)
                return
            if isinstance(outcome, Retry):
                self.log.warning(
                    "finalizing failed: {}; trying again in {}", outcome.message, format_duration(outcome.delay)
                )
                self.clock.sleep(outcome.delay)
                continue
            self._fail_run(f"finalizing failed: {outcome.message}", None)
            raise _End(outcome.error)

    # -- the end of a run that did not complete ------------------------------------------------

    def _fail_run(self, message: str, chunk: int | None) -> None:
        self.store.fail_run(self.run_id, message, chunk)

    def _ended(self, end: _End) -> RunResult:
        run = self.store.get_run(self.run_id)
        assert run is not None
        if run.state == "cancelled":
            result = self._cancelled("cancelled")
            raise JobFailed(f"run {self.run_id} was cancelled", result)
        result = self.life.result(run)
        where = f" at chunk {run.error_chunk}" if run.error_chunk is not None else ""
        error = end.error or RuntimeError(run.error or "failed")
        if end.error is not None:
            self.log.opt(exception=end.error).debug("run {} failed{}", self.run_id, where)
        self.log.error("failed{}: {}", where, run.error)
        self.life.work.close()
        self.life.failed(error, result)
        message = f"run {self.run_id} failed{where}: {run.error}{kept(self.run_id, self.life.staged())}"
        raise JobFailed(message, result) from end.error

    def _cancelled(self, why: str) -> RunResult:
        first = self.life.abort() and self.store.mark_aborted(self.run_id)
        run = self.store.get_run(self.run_id)
        assert run is not None
        result = self.life.result(run)
        self.log.warning("{} after {:,} rows: what the run staged was dropped", why, result.rows_written)
        self.life.work.close()
        if first:
            self.life.cancelled(result)
        return result


def _discard(ahead: ReadAhead | None) -> None:
    if ahead is not None:
        ahead.discard()
