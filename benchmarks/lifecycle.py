"""What recording a run costs per chunk: the run-store transactions an in-process run makes for
each chunk (claim, lease keeper, complete, read back), on the embedded store and on Redis, and
a whole in-process run of many small chunks with and without those transactions' share; and
what ETL_SECRET_KEY adds per chunk (checking and signing what a worker acts on). With Redis:
the round trips to Redis a queued chunk costs one worker (in this process), by the call that
makes them.

    .venv/bin/python benchmarks/lifecycle.py [CHUNKS]      # default 2000; Redis at REDIS_URL

Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from etl.kv import RedisKV, SqliteKV
from etl.lifecycle import LeaseKeeper
from etl.runs import ChunkResult
from etl.stages import Chunk
from etl.store import ChunkRecord, RunRecord, RunStore


def per_chunk(store: RunStore, chunks: int) -> float:
    """Seconds per chunk of the store work `etl run --sync` does for each chunk: claim it and
    record its completion (one thread renews the lease of the chunk in hand, for the whole run)."""
    run_id = uuid.uuid4().hex[:12]
    store.create_run(RunRecord(id=run_id, job="bench", driver="process"))
    store.set_plan(run_id, rows=chunks, exact=True, chunks=[Chunk(i, rows=1) for i in range(chunks)], shared={})
    started = time.perf_counter()
    with LeaseKeeper(lambda: "ok", 5.0, "bench"):
        for index in range(chunks):
            record = store.claim(run_id, index, "bench:1:process", 15.0)
            assert record is not None
            result = ChunkResult(index, 1, 1, 0, 0.001, record.attempts)
            completion = store.complete(run_id, index, record.token, result)
            assert completion.run is not None  # the run as the completion left it: what the log line shows
    return (time.perf_counter() - started) / chunks


def signing(chunks: int) -> float:
    """Seconds per chunk of what ETL_SECRET_KEY adds to a worker's chunk: checking the run's
    record, its plan and the chunk's descriptor, and signing the chunk's completion (a record
    of a 2 KB job, a plan sharing a 20-column schema)."""
    import pyarrow as pa

    from etl.records import Signer

    signer = Signer("a-long-random-key-shared-by-every-worker-and-submitter")
    schema = pa.schema([(f"column_{i}", pa.int64()) for i in range(20)])
    shared = {"schema": schema.serialize().to_pybytes().hex(), "columns": schema.names}
    run = RunRecord(id="20261128-203731-be808a", job="bench", job_text="# a job\n" * 256, params={"day": "2026-01-01"})
    run.signature = signer.run(run)
    run.shared, run.rows_total, run.chunks_total, run.planned = shared, chunks, chunks, True
    run.plan_signature = signer.plan(run)
    records = []
    for index in range(chunks):
        record = ChunkRecord(
            run.id, index, f"rows {index}", 1, {"path": "/data/in.csv", "start": index, "end": index + 1}
        )
        record.signature = signer.chunk(record)
        records.append(record)
    started = time.perf_counter()
    for record in records:
        assert signer.check_run(run) is None and signer.check_plan(run) is None
        assert signer.check_chunk(record) is None
        signer.done(run.id, record.index, 1, 1)
    return (time.perf_counter() - started) / chunks


def whole_run(chunks: int, home: Path) -> float:
    """Seconds per chunk of an in-process run of `chunks` one-row chunks (generate → jsonl)."""
    import etl

    os.environ["ETL_HOME"] = str(home)
    text = (
        f"name: tiny\nsource: {{type: generate, rows: {chunks}}}\n"
        f"sink: {{type: jsonl, path: {home}/out}}\nchunk_size: 1\n"
    )
    job = etl.load_job(text=text)
    started = time.perf_counter()
    result = etl.run(job)
    assert result.chunks_done == chunks
    return (time.perf_counter() - started) / chunks


def round_trips(chunks: int, url: str, home: Path) -> dict[str, float]:
    """Round trips to Redis (requests sent on a connection) per chunk of a queued run of
    one-row chunks that one worker of one thread works in this process, by the call that made
    them. (Not timed: finding the caller of each request slows them down.)"""
    import collections
    import threading
    import traceback

    import redis.connection

    import etl
    from etl import api
    from etl.queue import open_queue
    from etl.settings import queue_settings
    from etl.worker import Worker, WorkerOptions

    counted: collections.Counter[str] = collections.Counter()
    counting = threading.Event()
    send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(self, command, check_health=True):  # type: ignore[no-untyped-def]
        if counting.is_set() and threading.current_thread().name.startswith("Worker"):
            # Named by the outermost call into the store, or the queue's send (else Huey's own).
            stack = traceback.extract_stack()
            calls = [f for f in stack if "/etl/store/" in f.filename]
            calls = calls or [f for f in stack if f.filename.endswith("etl/queue.py") and f.name == "send"]
            counted[f"{Path(calls[0].filename).stem}.{calls[0].name}" if calls else "huey"] += 1
        return send(self, command, check_health)

    env = {"ETL_QUEUE_URL": url, "ETL_QUEUE_NAME": f"bench{uuid.uuid4().hex[:6]}", "ETL_HOME": str(home)}
    os.environ.update(env)
    queue = open_queue(queue_settings())
    worker = Worker(queue, WorkerOptions(concurrency=1, reaper_interval=3600, heartbeat=3600))
    text = (
        f"name: rt\nsource: {{type: generate, rows: {chunks}}}\nsink: {{type: jsonl, path: {home}/out}}\n"
        "chunk_size: 1\nthresholds: {background: 1}\n"
    )
    redis.connection.AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]
    try:
        worker.start(install_signals=False)
        run_id = api.submit(etl.load_job(text=text), queue=queue).id
        skip = min(50, chunks // 4)  # the first and last chunks load the job, plan, finalize
        while (run := queue.store.get_run(run_id)) is not None and run.chunks_done < skip:
            time.sleep(0.005)
        counting.set()
        first = run.chunks_done
        while (run := queue.store.get_run(run_id)) is not None and run.chunks_done < chunks - skip:
            time.sleep(0.005)
        counting.clear()
        done = run.chunks_done - first
        while not (run := queue.store.get_run(run_id)).finished:
            time.sleep(0.05)
    finally:
        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        worker.stop()
        for key in queue.store.kv.client.scan_iter(match=f"{env['ETL_QUEUE_NAME']}:*", count=1000):
            queue.store.kv.client.unlink(key)
        queue.huey.flush()
        queue.close()
    return {where: n / done for where, n in counted.most_common()}


def main() -> None:
    chunks = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"{'what':<58} {'per chunk':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(SqliteKV(Path(tmp) / "state.db"), prefix="bench")
        print(f"{'recording a chunk, embedded store (SQLite, WAL)':<58} {per_chunk(store, chunks) * 1e3:>9.3f} ms")
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
        try:
            redis_store = RunStore(RedisKV(url), prefix=f"bench{uuid.uuid4().hex[:6]}")
            redis_store.kv.ping()
        except Exception as exc:  # no Redis here: the embedded figure is the one that matters
            print(f"(no Redis at {url}: {exc})")
        else:
            print(f"{'recording a chunk, Redis':<58} {per_chunk(redis_store, chunks) * 1e3:>9.3f} ms")
            trips = round_trips(min(chunks, 500), url, Path(tmp) / "trips")
            print(f"{'a queued chunk, one worker, Redis: round trips':<58} {sum(trips.values()):>9.2f}")
            for where, n in trips.items():
                print(f"{'  made by ' + where:<58} {n:>9.2f}")
        print(f"{'checking and signing a chunk, with ETL_SECRET_KEY':<58} {signing(chunks) * 1e3:>9.3f} ms")
        home = Path(tmp) / "home"
        print(
            f"{'a whole in-process run, one-row chunks (embedded store)':<58} {whole_run(chunks, home) * 1e3:>9.3f} ms"
        )
        os.environ["ETL_SECRET_KEY"] = "a-long-random-key-shared-by-every-worker-and-submitter"
        keyed = whole_run(chunks, Path(tmp) / "keyed")
        print(f"{'the same, with ETL_SECRET_KEY':<58} {keyed * 1e3:>9.3f} ms")


if __name__ == "__main__":
    main()
