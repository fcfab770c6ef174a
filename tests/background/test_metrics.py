"""Prometheus metrics: the store's gauges at scrape time, and real workers' counters over HTTP."""

from __future__ import annotations

import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families

from etl.metrics import WorkerMetrics, render
from etl.runs import ChunkResult
from etl.stages import Chunk
from etl.store import RunRecord, WorkerInfo
from tests.background.conftest import free_port, queue, submit, wait_finished, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples: Samples, name: str) -> float:
    """A sample summed over its label values (what ``sum(name)`` gives in PromQL)."""
    return sum(v for (n, _), v in samples.items() if n == name)


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return parse(response.text)


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except httpx.TransportError:
        return None


def start_with_metrics(workers, n: int = 1, **env: str) -> list[int]:
    ports = []
    for _ in range(n):
        port = free_port()
        workers.start(1, args=("--metrics-port", str(port)), **env)
        ports.append(port)
    for port in ports:
        wait_for(lambda p=port: try_scrape(p), 20, f"the metrics server on port {port}")
    return ports


# -- render(store) against the real store ----------------------------------------------------


def test_render_reads_runs_workers_and_chunks_in_flight_from_the_store(queue_env):
    store = queue().store
    now = store.clock()

    def planned(job: str, chunks: int) -> str:
        run = RunRecord(id=f"{job}-{now}", job=job)
        assert store.create_run(run) is None
        plan = [Chunk(index=i) for i in range(chunks)]
        assert store.set_plan(run.id, rows=None, exact=True, chunks=plan, shared={})
        assert store.dispatch(run.id, limit=chunks) == list(range(chunks))
        return run.id

    busy = planned("busy", 5)  # 5 queued, then: 1 running, 1 retrying after a backoff
    assert store.claim(busy, 0, "w1", lease=60) is not None
    retried = store.claim(busy, 1, "w1", lease=60)
    assert store.retry_later(busy, 1, retried.token, "down", delay=600)
    broken = planned("broken", 4)  # fails: its 3 chunks still queued are no work for anyone
    held = store.claim(broken, 0, "w1", lease=60)
    assert store.fail_chunk(broken, 0, held.token, "bad")
    assert store.create_run(RunRecord(id="later", job="later")) is None
    store.heartbeat(WorkerInfo(id="w1", host="h", pid=1, concurrency=4))
    store.heartbeat(WorkerInfo(id="w2", host="h", pid=2, concurrency=2))

    body, content_type = render(store)

    assert content_type.startswith("text/plain; version=0.0.4")
    samples = parse(body.decode())
    assert value(samples, "etl_store_up") == 1
    states = ("waiting", "active", "completed", "failed", "cancelled")
    runs = {s: value(samples, "etl_runs", state=s) for s in states}
    assert runs == {"waiting": 1, "active": 1, "completed": 0, "failed": 1, "cancelled": 0}
    assert {s: store.count_runs(s) for s in ("waiting", "active", "failed")} == {"waiting": 1, "active": 1, "failed": 1}
    assert value(samples, "etl_workers_live") == 2
    assert value(samples, "etl_worker_slots") == 6
    assert value(samples, "etl_queue_depth") == 3
    assert value(samples, "etl_chunks_in_flight", state="queued") == 3
    assert value(samples, "etl_chunks_in_flight", state="retrying") == 1
    assert value(samples, "etl_chunks_in_flight", state="running") == 1
    # No worker counters without a WorkerMetrics; and nothing leaks into the default registry.
    assert not [name for name, _ in samples if name.startswith(("etl_rows", "etl_chunk_duration"))]
    from prometheus_client import REGISTRY

    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("etl_")]


def test_render_adds_a_workers_counters_and_survives_a_store_that_cannot_be_read(queue_env):
    metrics = WorkerMetrics()
    metrics.chunk_done("orders", ChunkResult(0, rows_read=100, rows_written=98, rows_rejected=2, seconds=3, attempt=1))
    metrics.chunk_done("orders", ChunkResult(1, rows_read=50, rows_written=50, rows_rejected=0, seconds=45, attempt=2))
    metrics.chunk_retry("orders")
    metrics.chunk_failed("orders")
    metrics.run_finished("orders", "failed")

    class Broken:
        def count_runs(self, state):
            raise ConnectionError("Redis is away")

    samples = parse(render(Broken(), metrics)[0].decode())  # type: ignore[arg-type]
    assert value(samples, "etl_store_up") == 0
    assert value(samples, "etl_runs", state="active") is None
    assert value(samples, "etl_rows_read_total", job="orders") == 150
    assert value(samples, "etl_rows_written_total", job="orders") == 148
    assert value(samples, "etl_rows_rejected_total", job="orders") == 2
    assert value(samples, "etl_chunk_duration_seconds_count", job="orders") == 2
    assert value(samples, "etl_chunk_duration_seconds_sum", job="orders") == 48
    assert value(samples, "etl_chunk_duration_seconds_bucket", job="orders", le="5.0") == 1
    assert value(samples, "etl_chunk_duration_seconds_bucket", job="orders", le="60.0") == 2
    assert value(samples, "etl_chunk_retries_total", job="orders") == 1
    assert value(samples, "etl_chunks_failed_total", job="orders") == 1
    assert value(samples, "etl_runs_finished_total", job="orders", state="failed") == 1
    assert not [name for name, _ in samples if name.endswith("_created")]
    # A scraper asking for OpenMetrics gets it.
    body, content_type = render(queue().store, metrics, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


# -- real workers ------------------------------------------------------------------------------


def test_workers_count_what_they_load_and_the_sum_is_the_runs(cli, workers, job_file):
    ports = start_with_metrics(workers, 2)
    assert any(f"metrics at http://127.0.0.1:{ports[0]}/metrics" in workers.log(p) for p in workers.procs)
    run_id = submit(cli, job_file(50_000, 5_000, "[{type: sleepy, seconds: 0.05}]"))
    run = wait_finished(run_id)
    assert run.state == "completed", run.error

    def finished_everywhere():
        scraped = [scrape(p) for p in ports]
        return sum(total(s, "etl_runs_finished_total") for s in scraped) == 1 and scraped

    scraped = wait_for(finished_everywhere, 10, "the run's completion to be counted")
    assert sum(value(s, "etl_rows_written_total", job="bg") or 0 for s in scraped) == 50_000
    assert sum(value(s, "etl_rows_read_total", job="bg") or 0 for s in scraped) == 50_000
    assert sum(value(s, "etl_chunk_duration_seconds_count", job="bg") or 0 for s in scraped) == run.chunks_total == 10
    assert sum(value(s, "etl_runs_finished_total", job="bg", state="completed") or 0 for s in scraped) == 1
    assert all(value(s, "etl_chunk_retries_total", job="bg") in (None, 0) for s in scraped)
    # The store's gauges are the same from every worker, and match the store.
    store = queue().store
    for samples in scraped:
        assert value(samples, "etl_store_up") == 1
        assert value(samples, "etl_runs", state="completed") == store.count_runs("completed") == 1
        assert value(samples, "etl_runs", state="active") == 0
        assert value(samples, "etl_workers_live") == 2
        assert value(samples, "etl_queue_depth") == 0
        assert total(samples, "etl_chunks_in_flight") == 0


def test_a_retried_and_failed_chunk_is_counted(cli, workers, job_file, tmp_path):
    marker = tmp_path / "down"
    marker.touch()
    (port,) = start_with_metrics(workers, 1)
    transforms = f'[{{type: fail_while, marker: "{marker}", on_id: 10001}}]'
    run_id = submit(cli, job_file(20_000, 5_000, transforms))
    run = wait_finished(run_id)
    assert run.state == "failed" and run.error_chunk == 2

    samples = wait_for(
        lambda: (s := scrape(port)) and value(s, "etl_runs_finished_total", job="bg", state="failed") == 1 and s,
        10,
        "the run's failure to be counted",
    )
    assert value(samples, "etl_chunk_retries_total", job="bg") == 2 == run.retries, "3 attempts: 2 retries"
    assert value(samples, "etl_chunks_failed_total", job="bg") == 1
    assert value(samples, "etl_rows_written_total", job="bg") == run.rows_written
    assert value(samples, "etl_chunk_duration_seconds_count", job="bg") == run.chunks_done
    assert value(samples, "etl_runs_finished_total", job="bg", state="completed") is None
    assert value(samples, "etl_runs", state="failed") == 1
    assert value(samples, "etl_queue_depth") == 0, "a failed run's leftover chunks are no work"


def test_a_metrics_port_in_use_is_a_usage_error(cli, queue_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("worker", "--metrics-port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
