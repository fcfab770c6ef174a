"""Running a job: plan its chunks, then read → transform → write each one.

:class:`JobRun` holds a job's stages in one process and runs one attempt at one chunk at a
time; it knows nothing of queues, so the same code serves an in-process run (:func:`run_job`)
and a worker that receives chunk descriptors from elsewhere.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from loguru import logger

from etl.errors import Interrupted, JobFailed, PermanentError, RejectedRows, UsageError, describe, is_transient
from etl.progress import Progress
from etl.rejects import ChunkRejects
from etl.retry import Clock, RetryPolicy, SystemClock
from etl.runs import ChunkResult, RunInfo, RunResult, new_run_id, utcnow
from etl.stages import Chunk, Plan, RowCount, Sink, Source, StageContext, Transform, current_rejects
from etl.units import format_duration

if TYPE_CHECKING:
    import pluggy
    import pyarrow as pa

    from etl.config import Job, StageConfig
    from etl.incremental import Window
    from etl.store import RunStore

__all__ = ["JobRun", "check_thresholds", "run_job"]

MAX_BATCH_ROWS = 100_000


def check_thresholds(job: Job, count: RowCount) -> list[str]:
    """Warnings for a run of ``count`` rows; refuses one above ``thresholds.max``.

    Raises:
        UsageError: the run is larger than ``thresholds.max``.
    """
    thresholds = job.spec.thresholds
    rows = count.rows
    if rows is None:
        return []
    if thresholds.max is not None and rows > thresholds.max:
        raise UsageError(
            f"{job.file}: thresholds.max: the source holds {rows:,} rows, more than the limit of "
            f"{thresholds.max:,}; narrow the source, or raise the limit "
            f"(e.g. --set thresholds.max={rows})"
        )
    if thresholds.warn is not None and rows > thresholds.warn:
        return [f"this run is very large: {rows:,} rows, above thresholds.warn ({thresholds.warn:,})"]
    return []


@dataclass
class _ChunkState:
    """Bookkeeping of one attempt at one chunk."""

    rejects: ChunkRejects
    rows_read: int = 0
    offsets: list[int] = field(default_factory=list)
    stop: threading.Event | None = None
    #: Where the stages' rejected rows go: the chunk's rejects with `on_error: skip`, else None.
    collector: ChunkRejects | None = None


class JobRun:
    """A job's stages, instantiated for one run in this process."""

    def __init__(
        self,
        job: Job,
        pm: pluggy.PluginManager,
        *,
        run_id: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.job = job
        self.pm = pm
        self.run_id = run_id or new_run_id()
        self.run_dir = (state_dir or Path(".etl")) / "runs" / self.run_id
        self.rejects_dir = self.run_dir / "rejects"
        self.log = logger.bind(job=job.name, run=self.run_id)
        self._source: Source | None = None
        self._transforms: list[Transform] | None = None
        self._sink: Sink | None = None
        #: An incremental run's window: set before counting (see :meth:`open_window`).
        self.window: Window | None = None

    # -- stages, made when first needed --------------------------------------------------

    def _context(self, stage: StageConfig) -> StageContext:
        return StageContext(
            job=self.job.name,
            run_id=self.run_id,
            params=self.job.params,
            job_dir=self.job.directory,
            label=stage.label,
            on_error=self.job.spec.on_error,
            batch_size=min(self.job.spec.chunk_size, MAX_BATCH_ROWS),
            window=self.window,
        )

    def _make(self, stage: StageConfig) -> Any:
        return stage.cls(stage.options, self._context(stage))

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = self._make(self.job.source)
        return self._source

    @property
    def transforms(self) -> list[Transform]:
        if self._transforms is None:
            self._transforms = [self._make(t) for t in self.job.transforms]
        return self._transforms

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            self._sink = self._make(self.job.sink)
        return self._sink

    def close(self) -> None:
        for stage in [self._source, *(self._transforms or []), self._sink]:
            if stage is not None:
                try:
                    stage.close()
                except Exception:  # closing must not hide the run's own outcome
                    self.log.opt(exception=True).warning("closing {} failed", type(stage).__name__)

    # -- planning ------------------------------------------------------------------------

    # -- incremental runs ---------------------------------------------------------------------

    def set_window(self, window: Window | None) -> None:
        """Read only the rows of ``window`` (a window fixed earlier, given back to a worker)."""
        self.window = window
        if self._source is not None:
            self._source.context.window = window

    def open_window(self, mark: Mapping[str, Any] | None) -> Window:
        """Fix this run's window from the job's stored mark (``None`` before its first good run).

        Raises:
            PermanentError: the mark or ``initial`` can't be compared with the cursor's values.
        """
        from etl.incremental import decode, open_window

        spec = self.job.spec.incremental
        assert spec is not None
        value = None
        if mark is not None:
            if mark.get("cursor") == spec.cursor:
                value = decode(mark.get("value"))
            else:
                self.log.warning(
                    "the stored mark follows {!r}, and the job now follows {!r}: starting from initial",
                    mark.get("cursor"),
                    spec.cursor,
                )
        self.set_window(None)
        try:
            window = open_window(spec, value, self.source)
        except ValueError as exc:
            raise PermanentError(f"incremental: {exc} (see the mark with: etl state {self.job.name})") from None
        self.set_window(window)
        self.log.info("incremental: {}", window.describe())
        return window

    def finalize(self, written: Mapping[int, int]) -> None:
        """Finalize the sink, telling it what each chunk wrote."""
        self.sink.context.written = dict(written)
        self.sink.finalize()

    def count(self) -> RowCount:
        if self.window is not None and self.window.empty:
            return RowCount(0)
        return self.source.count()

    def plan(self, count: RowCount | None = None) -> tuple[RunInfo, Plan]:
        """Count (unless given) and plan the run."""
        count = count or self.count()
        empty = self.window is not None and self.window.empty
        plan = Plan([]) if empty else self.source.plan(self.job.spec.chunk_size)
        rows = count.rows if count.rows is not None else plan.rows
        info = RunInfo(
            id=self.run_id,
            job=self.job.name,
            params=dict(self.job.params),
            rows=rows,
            rows_exact=count.exact if count.rows is not None else plan.rows is not None,
            chunks=len(plan.chunks),
            rejects_dir=str(self.rejects_dir),
            window=self.window.to_json() if self.window is not None else None,
        )
        # Every column a transform or the sink names, checked before anything is written.
        from etl.preflight import check_columns

        check_columns(self.job, self.source, self.transforms, self.sink)
        return info, plan

    # -- one attempt at one chunk ----------------------------------------------------------

    def run_chunk(
        self,
        chunk: Chunk,
        shared: Mapping[str, Any],
        attempt: int = 1,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        read: ChunkRead | None = None,
    ) -> ChunkResult:
        """Read, transform and write one chunk, once. Raises whatever a stage raised.

        ``read`` is the chunk's rows already on their way (see :class:`ReadAhead`); without it
        they are read here. When ``stop`` is set (the lease was lost, the run cancelled), the
        attempt ends at the next batch with :class:`~etl.errors.Interrupted`, and the sink's
        write is abandoned.
        """
        clock = clock or SystemClock()
        started = clock.monotonic()
        read = read or ChunkRead(self, chunk, shared, stop)
        state = read.state
        current_rejects.set(state.collector)  # for the rows the sink itself rejects
        try:
            written = self.sink.write(chunk, read.batches())
            state.rejects.commit()
        except RejectedRows as exc:
            state.rejects.discard()
            raise exc.in_chunk(chunk.index, state.rejects.offset) from None
        except BaseException:
            state.rejects.discard()
            raise
        finally:
            current_rejects.set(None)
            read.close()
        return ChunkResult(
            index=chunk.index,
            rows_read=state.rows_read,
            rows_written=written,
            rows_rejected=state.rejects.count,
            seconds=clock.monotonic() - started,
            attempt=attempt,
        )

    def _pipeline(self, batches: Iterable[pa.RecordBatch], state: _ChunkState) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if state.stop is not None and state.stop.is_set():
                raise Interrupted(getattr(state.stop, "reason", None) or "stopped")
            state.rows_read += batch.num_rows
            yield from self._through(batch, 0, state)

    def _through(self, batch: pa.RecordBatch, position: int, state: _ChunkState) -> Iterator[pa.RecordBatch]:
        if position == len(self.transforms):
            if batch.num_rows:
                yield batch
            return
        state.rejects.offset = state.offsets[position]
        state.offsets[position] += batch.num_rows
        current_rejects.set(state.collector)  # in whichever thread pulls the batch
        out = self.transforms[position].apply(batch)
        for piece in _batches(out):
            yield from self._through(piece, position + 1, state)


class ChunkRead:
    """One chunk's rows on their way from the source, through the transforms, to the sink.

    Read in the sink's own thread (``batches`` pulls them as the sink asks), or, once
    :meth:`start_ahead` was called, in a thread of its own that keeps up to ``depth`` batches
    ready, so that reading and transforming the next chunk overlaps writing this one.
    """

    _END = object()

    def __init__(self, work: JobRun, chunk: Chunk, shared: Mapping[str, Any], stop: threading.Event | None = None):
        self.work = work
        self.chunk = chunk
        self.shared = shared
        self.state = _ChunkState(ChunkRejects(work.rejects_dir, chunk.index), offsets=[0] * len(work.transforms))
        self.state.stop = stop
        self.state.collector = self.state.rejects if work.job.spec.on_error == "skip" else None
        self._queue: queue.Queue[Any] | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.finished = threading.Event()

    def _rows(self) -> Iterator[pa.RecordBatch]:
        # The sink may pull batches from any thread (DuckDB pulls from its own): the chunk's
        # rejects collector is made current for the thread that pulls, batch by batch.
        try:
            yield from self.work._pipeline(self.work.source.read(self.chunk, self.shared), self.state)
        finally:
            current_rejects.set(None)

    def start_ahead(self, depth: int = 2) -> None:
        """Start reading in a thread of its own (once; not after :meth:`close`)."""
        with self._start_lock:
            if self._queue is not None or self._closed.is_set():
                return
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._produce, name=f"read chunk {self.chunk.index}", daemon=True)
            self._thread.start()

    def _produce(self) -> None:
        try:
            for batch in self._rows():
                if not self._put(batch):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the sink's thread, which raises it
            self._put(exc)
        finally:
            self.finished.set()

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)  # type: ignore[union-attr]
                return True
            except queue.Full:
                continue
        return False

    def batches(self) -> Iterator[pa.RecordBatch]:
        if self._queue is None:
            yield from self._rows()
            return
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading (the attempt is over); waits for the reading thread to let go of the
        stages. Rejects of a read that was never written are dropped."""
        with self._start_lock:
            self._closed.set()
        if self._thread is not None:
            self._thread.join()
        else:
            self.finished.set()
        self.state.rejects.discard()


class ReadAhead:
    """Reads the chunks of an in-process run one after another in a thread, so that the next
    chunk is read and transformed while the sink writes the current one (a separate COPY per
    chunk otherwise leaves the source idle during every commit). One chunk is read at a time:
    stages are never used from two threads at once."""

    def __init__(self, work: JobRun, chunks: Sequence[Chunk], shared: Mapping[str, Any], depth: int = 2) -> None:
        self.work, self.chunks, self.shared, self.depth = work, list(chunks), shared, depth
        self.reads: dict[int, ChunkRead] = {}
        self._position = 0

    def take(self, chunk: Chunk) -> ChunkRead:
        """The chunk's read (started now if it wasn't yet), and the next chunk's started after it."""
        read = self.reads.pop(chunk.index, None) or ChunkRead(self.work, chunk, self.shared)
        read.start_ahead(self.depth)  # the chunk before it is written: its reading is over
        following = self._next_after(chunk)
        if following is not None and following.index not in self.reads:
            upcoming = ChunkRead(self.work, following, self.shared)
            self.reads[following.index] = upcoming
            threading.Thread(target=self._start_after, args=(read, upcoming), daemon=True).start()
        return read

    def _next_after(self, chunk: Chunk) -> Chunk | None:
        for position, candidate in enumerate(self.chunks):
            if candidate.index == chunk.index:
                return self.chunks[position + 1] if position + 1 < len(self.chunks) else None
        return None

    def _start_after(self, current: ChunkRead, upcoming: ChunkRead) -> None:
        current.finished.wait()
        upcoming.start_ahead(self.depth)

    def discard(self) -> None:
        """An attempt failed: stop every read ahead, so a retry reads with the stages to itself."""
        for read in self.reads.values():
            read.close()
        self.reads.clear()


def _batches(data: pa.RecordBatch | pa.Table) -> list[pa.RecordBatch]:
    import pyarrow as pa

    if isinstance(data, pa.RecordBatch):
        return [data]
    if isinstance(data, pa.Table):
        return data.to_batches()
    raise PermanentError(f"a transform returned {type(data).__name__}; expected a pyarrow RecordBatch or Table")


def run_job(
    job: Job,
    pm: pluggy.PluginManager,
    *,
    run_id: str | None = None,
    state_dir: Path | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    count: RowCount | None = None,
    window: Window | None = None,
    marks: RunStore | None = None,
) -> RunResult:
    """Run every chunk of ``job`` in this process, one after another, retrying as the job says.

    Returns the :class:`RunResult`. A failed run raises :class:`~etl.errors.JobFailed` carrying
    it; a run interrupted with Ctrl-C is aborted (staged data removed) and re-raises. A run
    larger than ``thresholds.max`` is refused with :class:`~etl.errors.UsageError` before it
    starts.

    An incremental job reads the ``window`` given (fixed when the run was counted), or one
    opened from the mark in ``marks``; the mark moves there when the run completes.
    """
    clock = clock or SystemClock()
    policy = RetryPolicy.from_spec(job.spec.retry)
    work = JobRun(job, pm, run_id=run_id, state_dir=state_dir)
    log = work.log
    result = RunResult(run_id=work.run_id, job=job.name)
    if job.spec.incremental is not None and marks is None:
        work.close()
        raise UsageError(f"{job.file}: an incremental job needs the run store that keeps its mark")
    try:
        if job.spec.incremental is not None:
            if window is not None:
                work.set_window(window)
            else:
                work.open_window(marks.get_mark(job.name))  # type: ignore[union-attr]
        count = count or work.count()
        warnings = check_thresholds(job, count)
        info, plan = work.plan(count)
    except UsageError:
        work.close()
        raise
    except Exception as exc:
        _fail(work, RunInfo(work.run_id, job.name, dict(job.params), None, False, 0), result, exc, None)
    result.rows_total, result.chunks_total = info.rows, info.chunks
    ahead: ReadAhead | None = None
    for warning in warnings:
        log.warning(warning)
    total = f"{info.rows:,}" if info.rows is not None else "an unknown number of"
    log.info("starting {}: {} rows in {} chunks of up to {:,}", job.name, total, info.chunks, job.spec.chunk_size)
    try:
        pm.hook.etl_before_job_run(job=job, run=info)
        work.sink.prepare()
        progress = Progress(info.rows, info.chunks, started=clock.monotonic())
        # Read the next chunk while the sink writes this one, unless the job asks for a pause
        # between chunks (then the source rests too).
        if len(plan.chunks) > 1 and not job.spec.delay:
            ahead = ReadAhead(work, plan.chunks, plan.shared)
        written: dict[int, int] = {}
        for chunk in plan.chunks:
            if chunk.index and job.spec.delay:
                clock.sleep(job.spec.delay)
            chunk_result = _run_with_retries(work, info, chunk, plan.shared, policy, clock, rng, result, ahead)
            written[chunk.index] = chunk_result.rows_written
            result.rows_read += chunk_result.rows_read
            result.rows_written += chunk_result.rows_written
            result.rows_rejected += chunk_result.rows_rejected
            result.chunks_done += 1
            progress.advance(chunk_result.rows_read)
            details = [f"{chunk_result.rows_rejected:,} rejected"] if chunk_result.rows_rejected else []
            if chunk_result.attempt > 1:
                details.append(f"attempt {chunk_result.attempt}")
            log.bind(chunk=chunk.index).info(
                "{}{}", progress.line(clock.monotonic()), "".join(f" · {d}" for d in details)
            )
            limit = job.spec.max_rejects
            if limit is not None and result.rows_rejected > limit:
                raise _ChunkFailed(
                    chunk,
                    PermanentError(f"{result.rows_rejected:,} rows rejected, more than max_rejects ({limit:,})"),
                )
        work.finalize(written)
    except _ChunkFailed as failure:
        _discard(ahead)
        result.chunks_failed = 1
        _fail(work, info, result, failure.error, failure.chunk.index)
    except KeyboardInterrupt:
        _discard(ahead)
        result.state = "cancelled"
        result.finished_at = utcnow()
        _abort(work)
        log.warning("cancelled after {:,} rows", result.rows_written)
        work.close()
        raise
    except Exception as exc:
        _discard(ahead)
        _fail(work, info, result, exc, None)
    if work.window is not None:
        from etl.incremental import shown

        try:
            marks.advance_mark(job.name, work.window.to_json(), work.run_id)  # type: ignore[union-attr]
        except Exception as exc:
            _fail(work, info, result, exc, None)
        if not work.window.empty:
            log.info("incremental: the mark of {} is now {}", job.name, shown(work.window.high))
    result.state = "completed"
    result.finished_at = utcnow()
    if result.rows_rejected:
        result.rejects_dir = str(work.rejects_dir)
    log.info(
        "completed: {:,} rows written in {} ({:,.0f} rows/s){}",
        result.rows_written,
        format_duration(result.seconds),
        result.rows_per_second,
        f"; {result.rows_rejected:,} rows rejected, see {work.rejects_dir}" if result.rows_rejected else "",
    )
    work.close()
    _observe(work, "etl_after_job_run", job=job, run=info, result=result)
    return result


class _ChunkFailed(Exception):
    def __init__(self, chunk: Chunk, error: BaseException) -> None:
        super().__init__(str(error))
        self.chunk = chunk
        self.error = error


def _run_with_retries(
    work: JobRun,
    info: RunInfo,
    chunk: Chunk,
    shared: Mapping[str, Any],
    policy: RetryPolicy,
    clock: Clock,
    rng: random.Random | None,
    result: RunResult,
    ahead: ReadAhead | None = None,
) -> ChunkResult:
    log = work.log.bind(chunk=chunk.index)
    attempt = 1
    while True:
        work.pm.hook.etl_before_chunk_run(job=work.job, run=info, chunk=chunk, attempt=attempt)
        read = ahead.take(chunk) if ahead is not None and attempt == 1 else None
        try:
            chunk_result = work.run_chunk(chunk, shared, attempt, clock, read=read)
        except BaseException as exc:
            if ahead is not None:
                ahead.discard()  # a retry (or the failure) has the stages to itself
            if not isinstance(exc, Exception):
                raise
            will_retry = policy.should_retry(attempt, is_transient(exc))
            work.pm.hook.etl_on_chunk_error(
                job=work.job, run=info, chunk=chunk, error=exc, attempt=attempt, will_retry=will_retry
            )
            if not will_retry:
                log.opt(exception=exc).debug("chunk {} failed", chunk.index)
                raise _ChunkFailed(chunk, exc) from exc
            delay = policy.delay(attempt, rng)
            log.warning(
                "chunk {} attempt {}/{} failed: {}; retrying in {}",
                chunk.index,
                attempt,
                policy.attempts,
                describe(exc),
                format_duration(delay),
            )
            result.retries += 1
            clock.sleep(delay)
            attempt += 1
            continue
        work.pm.hook.etl_after_chunk_run(job=work.job, run=info, chunk=chunk, result=chunk_result)
        return chunk_result


def _discard(ahead: ReadAhead | None) -> None:
    if ahead is not None:
        ahead.discard()


def _abort(work: JobRun) -> None:
    try:
        work.sink.abort()
    except Exception as exc:
        work.log.opt(exception=exc).debug("the sink's abort failed")
        work.log.warning("the sink could not clean up after the run: {}", describe(exc))


def _observe(work: JobRun, hook: str, **kwargs: Any) -> None:
    """Call a hook that observes a finished run. A plugin failing there is logged (its
    traceback in the run log) but changes nothing: the run is over, its outcome stands."""
    try:
        getattr(work.pm.hook, hook)(**kwargs)
    except Exception as exc:
        work.log.opt(exception=exc).debug("{} failed", hook)
        work.log.error("a plugin's {} failed: {}", hook, describe(exc))


def _fail(work: JobRun, info: RunInfo, result: RunResult, error: BaseException, chunk: int | None) -> NoReturn:
    result.state = "failed"
    result.finished_at = utcnow()
    result.error = describe(error)
    result.error_chunk = chunk
    _abort(work)
    where = f" at chunk {chunk}" if chunk is not None else ""
    work.log.opt(exception=error).debug("run {} failed{}", work.run_id, where)
    work.log.error("failed{}: {}", where, result.error)
    work.close()
    _observe(work, "etl_on_job_error", job=work.job, run=info, error=error, result=result)
    raise JobFailed(f"run {work.run_id} failed{where}: {result.error}", result) from error
