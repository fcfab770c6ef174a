"""Test-only stages that misbehave on purpose, loaded by the background tests' jobs.

Each is a transform that passes the batch through after doing something to its process:
sleeping, spinning the CPU, killing the process, or failing while a marker file exists.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from etl_plugins.generate import Generate
from etl_plugins.parquet_format import ParquetSink
from pydantic import Field

from etl import PermanentError, StageOptions, Transform, TransientError, hookimpl


class SleepyOptions(StageOptions):
    seconds: float = Field(0.2, description="pause per batch")


class Sleepy(Transform):
    """Sleep a while per batch (a slow source or sink)."""

    name = "sleepy"
    Options = SleepyOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(self.options.seconds)
        return batch


class SpinOptions(StageOptions):
    seconds: float = Field(1.0, description="CPU-bound work per batch")


class Spin(Transform):
    """Keep the CPU busy in pure Python (holding the GIL as much as Python does)."""

    name = "spin"
    Options = SpinOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        end = time.monotonic() + self.options.seconds
        n = 0
        while time.monotonic() < end:
            n += sum(i * i for i in range(200))
        return batch


class CrashOptions(StageOptions):
    on_id: int = Field(description="kill this process when a batch holds this id")
    log: str = Field(description="a file that gets one line per kill")


class Crash(Transform):
    """SIGKILL the own process whenever a batch holds a given id (a poison chunk)."""

    name = "crash"
    Options = CrashOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if pc.any(pc.equal(batch.column("id"), self.options.on_id)).as_py():
            with open(self.options.log, "a") as f:
                f.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return batch


class FailWhileOptions(StageOptions):
    marker: str = Field(description="fail while this file exists")
    on_id: int | None = Field(None, description="only batches holding this id fail")
    log: str | None = Field(None, description="a file that gets one line (the time) per failure")


class FailWhile(Transform):
    """Raise a transient error while a marker file exists."""

    name = "fail_while"
    Options = FailWhileOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        hit = self.options.on_id is None or pc.any(pc.equal(batch.column("id"), self.options.on_id)).as_py()
        if hit and Path(self.options.marker).exists():
            if self.options.log:
                with open(self.options.log, "a") as f:
                    f.write(f"{time.time()}\n")
            raise TransientError("the upstream service is down (marker file present)")
        return batch


class FailTimesOptions(StageOptions):
    on_id: int = Field(description="batches holding this id fail")
    times: int = Field(1, description="how many attempts fail (counted in log, across processes)")
    log: str = Field(description="a file that gets one line per failure")
    permanent: bool = Field(False, description="fail with a permanent error instead of a transient one")


class FailTimes(Transform):
    """Fail the first ``times`` attempts at the chunk holding ``on_id``, in whichever process."""

    name = "fail_times"
    Options = FailTimesOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if pc.any(pc.equal(batch.column("id"), self.options.on_id)).as_py():
            log = Path(self.options.log)
            failed = len(log.read_text().split()) if log.exists() else 0
            if failed < self.options.times:
                with log.open("a") as f:
                    f.write(f"{os.getpid()}\n")
                error = PermanentError if self.options.permanent else TransientError
                raise error(f"failure {failed + 1} of {self.options.times} at id {self.options.on_id}")
        return batch


class RejectEveryOptions(StageOptions):
    n: int = Field(description="reject the rows whose id is a multiple of n")


class RejectEvery(Transform):
    """Reject every n-th id (a bad value, say)."""

    name = "reject_every"
    Options = RejectEveryOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = batch.column("id").to_numpy(zero_copy_only=False)
        positions = [int(i) for i in (ids % self.options.n == 0).nonzero()[0]]
        if positions:
            self.context.reject(batch.take(positions), positions, f"id is a multiple of {self.options.n}", column="id")
        return batch.filter(pa.array(ids % self.options.n != 0))


class Counted(Generate):
    """Generated rows, with each count and plan logged to ETL_TEST_HOOKS (who did it, where)."""

    name = "counted"

    def count(self):
        _record("source.count")
        return super().count()

    def plan(self, chunk_size):
        _record("source.plan")
        return super().plan(chunk_size)


class FinalizeFails(ParquetSink):
    """A parquet sink whose finalize fails for good (a target that refuses the swap)."""

    name = "finalize_fails"

    def finalize(self) -> None:
        raise PermanentError("the target refused the swap")


# -- A recorder of lifecycle hooks, on when ETL_TEST_HOOKS names a file -----------------------


def _record(hook: str, **fields) -> None:
    path = os.environ.get("ETL_TEST_HOOKS")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"hook": hook, "pid": os.getpid(), **fields}) + "\n")
    if hook in os.environ.get("ETL_TEST_HOOK_RAISES", "").split(","):
        raise RuntimeError(f"the test plugin's {hook} broke")


@hookimpl
def etl_before_job_run(run):
    _record("before_job_run", run=run.id, rows=run.rows, chunks=run.chunks)


@hookimpl
def etl_before_chunk_run(run, chunk, attempt):
    _record("before_chunk_run", run=run.id, chunk=chunk.index, attempt=attempt)


@hookimpl
def etl_on_chunk_error(run, chunk, attempt, will_retry):
    _record("on_chunk_error", run=run.id, chunk=chunk.index, attempt=attempt, will_retry=will_retry)


@hookimpl
def etl_after_chunk_run(run, chunk, result):
    _record("after_chunk_run", run=run.id, chunk=chunk.index, attempt=result.attempt, rows=result.rows_written)


@hookimpl
def etl_after_job_run(run, result):
    _record("after_job_run", run=run.id, state=result.state, rows=result.rows_written)


@hookimpl
def etl_on_job_error(run, result):
    _record("on_job_error", run=run.id, state=result.state, chunk=result.error_chunk)


@hookimpl
def etl_on_job_cancel(run, result):
    _record("on_job_cancel", run=run.id, state=result.state)


@hookimpl
def etl_register_transforms():
    _record("plugin_manager")  # called once each time a plugin manager is built with this plugin
    return [Sleepy, Spin, Crash, FailWhile, FailTimes, RejectEvery]


@hookimpl
def etl_register_sources():
    return [Counted]


@hookimpl
def etl_register_sinks():
    return [FinalizeFails]
