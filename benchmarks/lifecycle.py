"""What recording a run costs per chunk: the run-store transactions an in-process run makes for
each chunk (claim, lease keeper, complete, read back), on the embedded store and on Redis, and
a whole in-process run of many small chunks with and without those transactions' share; and
what ETL_SECRET_KEY adds per chunk (checking and signing what a worker acts on).

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
