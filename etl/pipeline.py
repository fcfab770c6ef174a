"""A job's stages in one process, and one attempt at one chunk: read → transform → write.

:class:`JobRun` holds a job's stages for one run and runs one attempt at one chunk at a time; it
knows nothing of queues, stores or retries (:mod:`etl.lifecycle` decides those), so the same code
serves an in-process run and a worker that receives chunk descriptors from elsewhere.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from etl.errors import Interrupted, PermanentError, RejectedRows, UsageError
from etl.rejects import ChunkRejects
from etl.retry import Clock, SystemClock
from etl.runs import ChunkResult, RunInfo, new_run_id
from etl.stages import Chunk, Plan, RowCount, Sink, Source, StageContext, Transform, current_rejects

if TYPE_CHECKING:
    import pluggy
    import pyarrow as pa

    from etl.config import Job, StageConfig
    from etl.incremental import Window

__all__ = ["ChunkRead", "JobRun", "ReadAhead", "check_thresholds"]

MAX_BATCH_ROWS = 100_000


def check_thresholds(job: Job, count: RowCount) -> list[str]:
    """Warnings for a run of ``count`` rows; refuses one above ``thresholds.max``, or one that
    would need more than ``thresholds.max_chunks`` chunks (a plan, a ledger entry each).

    Raises:
        UsageError: the run is larger than ``thresholds.max`` or ``thresholds.max_chunks``.
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
    chunk_size = job.spec.chunk_size
    chunks = -(-rows // chunk_size)
    if chunks > thresholds.max_chunks:
        enough = -(-rows // thresholds.max_chunks)
        raise UsageError(
            f"{job.file}: chunk_size: {rows:,} rows in chunks of {chunk_size:,} would make {chunks:,} chunks, more "
            f"than thresholds.max_chunks ({thresholds.max_chunks:,}); raise chunk_size (e.g. --set chunk_size="
            f"{enough}) or narrow the source"
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
        self._positions = {c.index: position for position, c in enumerate(self.chunks)}
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
        position = self._positions.get(chunk.index)
        if position is None or position + 1 >= len(self.chunks):
            return None
        return self.chunks[position + 1]

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
