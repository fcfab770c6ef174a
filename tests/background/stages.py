"""Test-only stages that misbehave on purpose, loaded by the background tests' jobs.

Each is a transform that passes the batch through after doing something to its process:
sleeping, spinning the CPU, killing the process, or failing while a marker file exists.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from etl import StageOptions, Transform, TransientError, hookimpl


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


@hookimpl
def etl_register_transforms():
    return [Sleepy, Spin, Crash, FailWhile]
