"""The in-process runner: chunks, retries with backoff, delay, rejects, hooks, failure."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pytest

import etl
from etl import Chunk, JobFailed, PermanentError, Sink, StageOptions, TransientError, UsageError, hookimpl
from etl.manager import get_plugin_manager

BASE = """\
name: runner-test
source: {type: generate, rows: 1000, columns: {id: {kind: sequence}, v: {kind: int, min: 0, max: 9}}}
sink: {type: flaky}
chunk_size: 250
retry: {attempts: 3, backoff: 1s, factor: 2, max_backoff: 3s, jitter: false}
"""


class FlakyOptions(StageOptions):
    pass


class Flaky(Sink):
    """A sink that fails as the test says, and remembers what was written."""

    name = "flaky"
    Options = FlakyOptions
    #: chunk index → errors to raise on its next attempts, in order.
    failures: dict[int, list[BaseException]] = {}
    written: dict[int, int] = {}
    calls: list[str] = []

    def prepare(self) -> None:
        Flaky.calls.append("prepare")

    def write(self, chunk: Chunk, batches: Iterable[pa.RecordBatch]) -> int:
        rows = sum(b.num_rows for b in batches)
        pending = Flaky.failures.get(chunk.index)
        if pending:
            raise pending.pop(0)
        Flaky.written[chunk.index] = rows
        return rows

    def finalize(self) -> None:
        Flaky.calls.append("finalize")

    def abort(self) -> None:
        Flaky.calls.append("abort")


class Recorder:
    """Records every lifecycle hook, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    @hookimpl
    def etl_register_sinks(self):
        return [Flaky]

    @hookimpl
    def etl_before_job_run(self, run):
        self.events.append(("before_job", run.chunks))

    @hookimpl
    def etl_before_chunk_run(self, chunk, attempt):
        self.events.append(("before_chunk", chunk.index, attempt))

    @hookimpl
    def etl_after_chunk_run(self, chunk, result):
        self.events.append(("after_chunk", chunk.index, result.rows_written, result.attempt))

    @hookimpl
    def etl_on_chunk_error(self, chunk, error, attempt, will_retry):
        self.events.append(("chunk_error", chunk.index, attempt, will_retry))

    @hookimpl
    def etl_after_job_run(self, result):
        self.events.append(("after_job", result.state))

    @hookimpl
    def etl_on_job_error(self, error, result):
        self.events.append(("job_error", result.state))


@pytest.fixture
def recorder():
    Flaky.failures, Flaky.written, Flaky.calls = {}, {}, []
    return Recorder()


@pytest.fixture
def pm(recorder):
    manager = get_plugin_manager()
    manager.register(recorder)
    return manager


def run(pm, clock, text=BASE, **kwargs):
    job = etl.load_job(text=text, pm=pm, **kwargs)
    return etl.run(job, pm=pm, clock=clock)


def test_every_chunk_runs_once_in_order_with_hooks(pm, recorder, clock):
    result = run(pm, clock)
    assert result.state == "completed"
    assert (result.rows_read, result.rows_written, result.chunks_done, result.retries) == (1000, 1000, 4, 0)
    assert Flaky.written == {0: 250, 1: 250, 2: 250, 3: 250}
    assert recorder.events[0] == ("before_job", 4)
    assert recorder.events[1:3] == [("before_chunk", 0, 1), ("after_chunk", 0, 250, 1)]
    assert recorder.events[-1] == ("after_job", "completed")
    assert Flaky.calls == ["prepare", "finalize"]


def test_a_transient_error_is_retried_with_exponential_backoff(pm, recorder, clock):
    Flaky.failures = {2: [TransientError("connection reset"), ConnectionError("again")]}
    result = run(pm, clock)
    assert result.state == "completed"
    assert result.retries == 2
    assert clock.sleeps == [1.0, 2.0]
    assert ("chunk_error", 2, 1, True) in recorder.events
    assert ("chunk_error", 2, 2, True) in recorder.events
    assert ("after_chunk", 2, 250, 3) in recorder.events


def test_backoff_is_capped_and_attempts_are_bounded(pm, recorder, clock):
    text = BASE.replace("attempts: 3", "attempts: 5")
    Flaky.failures = {0: [TransientError(f"try {i}") for i in range(5)]}
    with pytest.raises(JobFailed) as info:
        run(pm, clock, text=text)
    assert clock.sleeps == [1.0, 2.0, 3.0, 3.0]  # 1, 2, then capped at max_backoff 3s
    result = info.value.result
    assert result.state == "failed"
    assert result.error_chunk == 0
    assert "try 4" in result.error
    assert ("chunk_error", 0, 5, False) in recorder.events
    assert recorder.events[-1] == ("job_error", "failed")
    assert Flaky.calls == ["prepare"]  # a failed run keeps what it staged, for `etl retry`


def test_jitter_draws_each_delay_below_its_cap(pm, clock):
    text = BASE.replace("jitter: false", "jitter: true").replace("attempts: 3", "attempts: 4")
    Flaky.failures = {1: [TransientError("a"), TransientError("b"), TransientError("c")]}
    job = etl.load_job(text=text, pm=pm)
    planned = etl.plan(job, pm=pm)
    planned.life.rng = random.Random(3)
    etl.run(planned, clock=clock)
    caps = [1.0, 2.0, 3.0]
    assert len(clock.sleeps) == 3
    for delay, cap in zip(clock.sleeps, caps, strict=True):
        assert cap / 2 <= delay <= cap
    assert clock.sleeps != caps


def test_a_permanent_error_is_not_retried(pm, recorder, clock):
    Flaky.failures = {1: [PermanentError("schema mismatch")]}
    with pytest.raises(JobFailed, match="failed at chunk 1: schema mismatch"):
        run(pm, clock)
    assert clock.sleeps == []
    assert ("chunk_error", 1, 1, False) in recorder.events
    assert 2 not in Flaky.written, "the run stops at the failed chunk"


def test_an_unexpected_exception_is_permanent_and_named(pm, clock):
    Flaky.failures = {0: [KeyError("boom")]}
    with pytest.raises(JobFailed, match="KeyError: 'boom'"):
        run(pm, clock)
    assert clock.sleeps == []


def test_delay_pauses_between_chunks(pm, clock):
    run(pm, clock, text=BASE + "delay: 250ms\n")
    assert clock.sleeps == [0.25, 0.25, 0.25]


def test_a_run_larger_than_thresholds_max_is_refused(pm, clock):
    with pytest.raises(UsageError, match=r"holds 1,000 rows, more than the limit of 999"):
        run(pm, clock, text=BASE + "thresholds: {max: 999}\n")
    assert Flaky.calls == []


def test_thresholds_warn_is_logged(pm, clock, capsys):
    from etl import logsetup

    logsetup.configure(level="INFO")
    run(pm, clock, text=BASE + "thresholds: {warn: 500}\n")
    assert "very large: 1,000 rows, above thresholds.warn (500)" in capsys.readouterr().err


REJECTING = """\
name: rejects
source:
  type: generate
  rows: 1000
  columns: {id: {kind: sequence}, code: {kind: choice, values: ["1", "2", "x"]}}
transforms:
  - {type: cast, columns: {code: int32}}
sink: {type: flaky}
chunk_size: 400
"""


def test_a_rejected_row_fails_the_run_with_its_position_and_value(pm, clock):
    with pytest.raises(JobFailed) as info:
        run(pm, clock, text=REJECTING)
    message = str(info.value)
    assert "transforms[0] (cast) rejected chunk 0, row" in message
    assert "column 'code' value 'x'" in message
    assert "set `on_error: skip`" in message


def test_skipped_rows_are_counted_and_written_to_the_rejects_file(pm, clock, tmp_path):
    result = run(pm, clock, text=REJECTING + "on_error: skip\n")
    assert result.state == "completed"
    assert result.rows_rejected > 0
    assert result.rows_written + result.rows_rejected == 1000
    files = sorted(Path(result.rejects_dir).glob("chunk-*.jsonl"))
    assert [f.name for f in files] == ["chunk-00000.jsonl", "chunk-00001.jsonl", "chunk-00002.jsonl"]
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(lines) == result.rows_rejected
    first = lines[0]
    assert first["stage"] == "transforms[0] (cast)"
    assert first["column"] == "code"
    assert first["record"]["code"] == "x"
    assert "cannot cast to int32" in first["reason"]
    # The row position is the row's place in its chunk: the record's id says where it was.
    assert all(line["record"]["id"] == line["chunk"] * 400 + line["row"] + 1 for line in lines)


def test_max_rejects_fails_a_run_that_rejects_too_much(pm, clock):
    with pytest.raises(JobFailed, match="more than max_rejects"):
        run(pm, clock, text=REJECTING + "on_error: skip\nmax_rejects: 5\n")


def test_a_retried_chunk_replaces_its_rejects(pm, clock):
    Flaky.failures = {0: [TransientError("flap")]}
    result = run(pm, clock, text=REJECTING + "on_error: skip\n")
    lines = (Path(result.rejects_dir) / "chunk-00000.jsonl").read_text().splitlines()
    rows = [json.loads(line)["row"] for line in lines]
    assert len(rows) == len(set(rows)), "the first attempt's rejects are not kept beside the retry's"
    assert not list(Path(result.rejects_dir).glob(".*.tmp"))


def test_ctrl_c_aborts_the_sink_and_reraises(pm, clock):
    Flaky.failures = {1: [KeyboardInterrupt()]}
    with pytest.raises(KeyboardInterrupt):
        run(pm, clock)
    assert Flaky.calls == ["prepare", "abort"]


def test_a_source_that_fails_to_plan_fails_the_run(pm, clock, tmp_path):
    text = BASE.replace(
        "source: {type: generate, rows: 1000, columns: {id: {kind: sequence}, v: {kind: int, min: 0, max: 9}}}",
        f"source: {{type: parquet, path: '{tmp_path}/none/*.parquet'}}",
    )
    with pytest.raises(JobFailed, match="none/"):
        run(pm, clock, text=text)


def test_plan_counts_and_plans_without_running(pm):
    job = etl.load_job(text=BASE + "thresholds: {warn: 10}\n", pm=pm)
    planned = etl.plan(job, pm=pm)
    planned.close()
    assert (planned.info.rows, planned.info.chunks) == (1000, 4)
    assert [c.rows for c in planned.plan.chunks] == [250] * 4
    assert planned.warnings and "above thresholds.warn (10)" in planned.warnings[0]
    assert Flaky.calls == [] and Flaky.written == {}


def test_a_failing_observer_hook_is_logged_and_the_outcome_stands(pm, clock, capsys):
    from etl import logsetup

    class Broken:
        @hookimpl
        def etl_after_job_run(self):
            raise RuntimeError("notifier down")

    pm.register(Broken())
    logsetup.configure(level="INFO")
    result = run(pm, clock)
    assert result.state == "completed"
    err = capsys.readouterr().err
    assert "a plugin's etl_after_job_run failed: RuntimeError: notifier down" in err
    assert "Traceback" not in err


def test_the_next_chunk_is_read_while_one_is_written_but_stages_never_run_twice_at_once(pm, clock):
    import threading
    import time

    from etl import StageOptions, Transform

    active, peak, lock = [0], [0], threading.Lock()
    overlap = []

    class Watch(Transform):
        name = "watch"
        Options = StageOptions

        def apply(self, batch):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                overlap.append(bool(Flaky.committing))
            time.sleep(0.01)
            with lock:
                active[0] -= 1
            return batch

    class Slow:
        @hookimpl
        def etl_register_transforms(self):
            return [Watch]

    original = Flaky.write

    def slow_write(self, chunk, batches):
        written = original(self, chunk, batches)
        Flaky.committing = True  # every row of the chunk is in: now its commit takes a while
        time.sleep(0.05)
        Flaky.committing = False
        return written

    Flaky.committing = False
    Flaky.write = slow_write
    try:
        pm.register(Slow())
        text = BASE.replace("sink: {type: flaky}", "transforms: [{type: watch}]\nsink: {type: flaky}")
        result = run(pm, clock, text=text.replace("chunk_size: 250", "chunk_size: 100"))
    finally:
        Flaky.write = original
    assert result.rows_written == 1000
    assert peak[0] == 1, "a transform was applied from two threads at once"
    assert any(overlap), "no chunk was read while the one before it was committing"


def test_rejects_are_collected_whichever_thread_the_sink_pulls_rows_from(tmp_path):
    # The jsonl sink hands the batches to DuckDB, which pulls them from a thread of its own.
    text = REJECTING.replace("sink: {type: flaky}", f"sink: {{type: jsonl, path: {tmp_path / 'out'}}}")
    result = etl.run(etl.load_job(text=text + "on_error: skip\n"))
    assert result.state == "completed" and result.rows_rejected > 0
    assert result.rows_written + result.rows_rejected == 1000
    files = Path(result.rejects_dir).glob("chunk-*.jsonl")
    assert sum(len(f.read_text().splitlines()) for f in files) == result.rows_rejected


def test_rows_a_sink_rejects_are_counted_with_skip_without_any_transform(pm, clock):
    from etl import StageOptions

    class Picky(Sink):
        """Rejects the rows with an odd id."""

        name = "picky"
        Options = StageOptions

        def write(self, chunk, batches):
            kept = 0
            for batch in batches:
                odd = [i for i, v in enumerate(batch.column("id").to_pylist()) if v % 2]
                self.context.reject(batch.take(odd), odd, "odd")
                kept += batch.num_rows - len(odd)
            return kept

    class Plugin:
        @hookimpl
        def etl_register_sinks(self):
            return [Picky]

    pm.register(Plugin())
    text = BASE.replace("sink: {type: flaky}", "sink: {type: picky}") + "on_error: skip\n"
    result = run(pm, clock, text=text)
    assert (result.rows_written, result.rows_rejected) == (500, 500)
    lines = [
        json.loads(line)
        for f in sorted(Path(result.rejects_dir).glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert len(lines) == 500 and all(line["record"]["id"] % 2 for line in lines)


def test_a_rejected_value_python_cant_hold_is_still_named():
    from etl.errors import RejectedRows
    from etl.stages import StageContext

    batch = pa.record_batch({"at": pa.array([2**62], pa.timestamp("ns")), "d": pa.array([2**50], pa.date64())})
    context = StageContext(job="j", run_id="r", label="sink")
    for column, shown in (("at", "2116-02-20 23:53:38.427387904"), ("d", "out of range")):
        with pytest.raises(RejectedRows, match=shown):
            context.reject(batch, [0], "too far", column=column)
