"""Prometheus metrics: gauges read from the run store at scrape time, and a worker's own counters.

Two sources, kept apart because they mean different things:

* :class:`StoreCollector` reads the run store (runs by state, live workers, chunks in flight)
  when scraped. Its figures are the same whichever process serves them: every worker started
  with ``--metrics-port`` and the dashboard's ``/metrics`` export the same values.
* :class:`WorkerMetrics` holds one worker process's counters and chunk-duration histogram,
  which its :class:`~etl.executor.Executor` (and its reaper) update. Each transition the store
  records (a chunk done, a retry, a run failed, ...) is counted once, by the process that
  recorded it, so the sum over all workers is the total for the queue
  (``sum(rate(etl_rows_written_total[5m]))``).

The store keeps no lifetime totals: finished runs are deleted by retention, so a sum of kept
runs' rows would fall now and then, and Prometheus would take each fall for a counter reset.
Totals therefore come from the workers' counters only. Labels are bounded: a job's name, a
state; never a run id.

Nothing here touches the default ``prometheus_client`` registry: :func:`registry` builds one per
process (or per call). Under a supervisor (``etl worker --processes``), each worker process's
counters live in files of prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by the supervisor before the process starts), and the supervisor serves their sums.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, get_args

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from etl.errors import describe
from etl.runs import RunState

if TYPE_CHECKING:
    from etl.kv import TxCounts
    from etl.runs import ChunkResult
    from etl.store import RunStore

__all__ = ["CHUNK_BUCKETS", "StoreCollector", "WorkerMetrics", "registry", "render"]

RUN_STATES: tuple[str, ...] = get_args(RunState)
#: Chunk durations, in seconds: chunks take seconds to minutes.
CHUNK_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: Workers that sent a heartbeat within this many seconds count as live (three default heartbeats,
#: as ``etl workers``).
WORKER_TTL = 15.0
#: At most this many waiting chunks are read per scrape (keep queue backlogs in the thousands).
WAITING_LIMIT = 100_000


class StoreCollector(Collector):
    """Gauges of the whole queue, read from the run store at each scrape.

    When the store can't be read, only ``etl_store_up 0`` is exported (and a warning logged),
    so that a worker's own metrics are still served.
    """

    def __init__(self, store: RunStore, worker_ttl: float = WORKER_TTL) -> None:
        self.store = store
        self.worker_ttl = worker_ttl

    def describe(self) -> Iterable[Metric]:
        return []  # figures are read at scrape time, not at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("etl_store_up", "Whether the run store (Redis) could be read for this scrape.")
        try:
            families = list(self._read())
        except Exception as exc:
            logger.warning("metrics: reading the run store failed: {}", describe(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Iterator[Metric]:
        store = self.store
        runs = GaugeMetricFamily(
            "etl_runs",
            "Runs kept in the store, by state (finished states: what retention keeps, not a lifetime total).",
            labels=["state"],
        )
        for state in RUN_STATES:
            runs.add_metric([state], store.count_runs(state))
        yield runs

        live = store.workers(self.worker_ttl)
        yield GaugeMetricFamily("etl_workers_live", "Workers that sent a heartbeat recently.", value=len(live))
        yield GaugeMetricFamily(
            "etl_worker_slots",
            "Chunks the live workers can work on at once (sum of their -w).",
            value=sum(w.concurrency for w in live),
        )

        queued, retrying, running = store.chunks_in_flight(WAITING_LIMIT)
        yield GaugeMetricFamily(
            "etl_queue_depth", "Chunks of active runs waiting for a free worker slot.", value=queued
        )
        flight = GaugeMetricFamily(
            "etl_chunks_in_flight",
            "Chunks handed out and not finished: queued and retrying (in a backoff) of active runs; running (leased).",
            labels=["state"],
        )
        for state, count in (("queued", queued), ("retrying", retrying), ("running", running)):
            flight.add_metric([state], count)
        yield flight


class WorkerMetrics(Collector):
    """One worker process's counters, updated by its executor and reaper (thread-safe).

    Counters start at zero when the process starts; Prometheus's ``rate()`` and ``increase()``
    handle the reset when a worker restarts. A job's series appears with its first event.
    """

    def __init__(self) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ("job",)) -> Counter:
            return Counter(name, doc, labels, registry=None)

        self.rows_read = counter("etl_rows_read", "Rows read by the chunks this worker completed.")
        self.rows_written = counter("etl_rows_written", "Rows written by the chunks this worker completed.")
        self.rows_rejected = counter("etl_rows_rejected", "Rows rejected by the chunks this worker completed.")
        self.chunk_seconds = Histogram(
            "etl_chunk_duration_seconds",
            "How long this worker's completed chunks took (their successful attempt).",
            ["job"],
            buckets=CHUNK_BUCKETS,
            registry=None,
        )
        self.retries = counter(
            "etl_chunk_retries", "Failed chunk attempts queued again (after an error, or a dead worker's lease)."
        )
        self.chunks_failed = counter("etl_chunks_failed", "Chunks that failed for good (attempts spent, or permanent).")
        self.runs_finished = counter(
            "etl_runs_finished", "Runs this worker finished (completed, or failed).", ("job", "state")
        )
        self.store_transactions = counter(
            "etl_store_transactions", "Run-store transactions this worker committed (see watch_store).", ()
        )
        self.store_conflicts = counter(
            "etl_store_conflicts",
            "Attempts of this worker's run-store transactions redone after a conflict (Redis: a watched key changed).",
            (),
        )
        self._metrics = (
            self.rows_read,
            self.rows_written,
            self.rows_rejected,
            self.chunk_seconds,
            self.retries,
            self.chunks_failed,
            self.runs_finished,
            self.store_transactions,
            self.store_conflicts,
        )

    def watch_store(self, counts: TxCounts) -> None:
        """Count the transactions of this process's run store, and their conflicts (each chunk
        takes a few; conflicts grow with the workers changing one run at once)."""
        counts.listen(self._transaction)

    def _transaction(self, conflicts: int) -> None:
        self.store_transactions.inc()
        if conflicts:
            self.store_conflicts.inc(conflicts)

    # -- what the executor reports ---------------------------------------------------------

    def chunk_done(self, job: str, result: ChunkResult) -> None:
        """A chunk's completion was recorded (only the attempt whose result counts)."""
        self.rows_read.labels(job).inc(result.rows_read)
        self.rows_written.labels(job).inc(result.rows_written)
        self.rows_rejected.labels(job).inc(result.rows_rejected)
        self.chunk_seconds.labels(job).observe(result.seconds)

    def chunk_retry(self, job: str) -> None:
        """An attempt failed and the chunk was queued again."""
        self.retries.labels(job).inc()

    def chunk_failed(self, job: str) -> None:
        """A chunk failed for good."""
        self.chunks_failed.labels(job).inc()

    def run_finished(self, job: str, state: str) -> None:
        """This worker moved a run to a final state (``completed`` or ``failed``)."""
        self.runs_finished.labels(job, state).inc()

    # -- the collector ---------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        for metric in self._metrics:
            yield from metric.describe()

    def collect(self) -> Iterator[Metric]:
        # Without the ``*_created`` timestamps prometheus_client adds (one more series per
        # job and counter, which Prometheus does not need to compute rates).
        for metric in self._metrics:
            for family in metric.collect():
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


def registry(
    store: RunStore | None,
    worker_metrics: WorkerMetrics | None = None,
    *,
    worker_ttl: float = WORKER_TTL,
    processes_dir: str | None = None,
) -> CollectorRegistry:
    """A registry of the store's gauges (if ``store``) and a worker's counters (if given), or the
    sums of the counters of every worker process that wrote to ``processes_dir`` (a supervisor's
    directory in multiprocess mode: a process that died still counts, so sums never fall)."""
    found = CollectorRegistry(auto_describe=True)
    if store is not None:
        found.register(StoreCollector(store, worker_ttl))
    if worker_metrics is not None:
        found.register(worker_metrics)
    if processes_dir is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(found, path=processes_dir)
    return found


def render(
    store: RunStore | None, worker_metrics: WorkerMetrics | None = None, *, accept: str | None = None
) -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type (for a ``/metrics`` route).

    ``accept`` is the request's ``Accept`` header: a scraper asking for OpenMetrics gets it, as
    from a worker's ``--metrics-port`` server; without it, the classic text format (0.0.4).
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry(store, worker_metrics)), content_type
