"""The KVs count their transactions and the attempts a conflict made them redo (the figures of
`etl_store_transactions_total` and `etl_store_conflicts_total`, and of `make bench-scale`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from uuid import uuid4

import redis

from etl.kv import RedisKV, SqliteKV
from etl.metrics import WorkerMetrics, registry
from tests.test_store import REDIS_URL


def test_a_redis_transaction_counts_the_conflict_that_made_it_start_over():
    kv, other = RedisKV(REDIS_URL), redis.Redis.from_url(REDIS_URL)
    key = f"test-{uuid4().hex[:8]}:doc"
    seen: list[int] = []
    kv.counts.listen(seen.append)
    reads: list[dict] = []

    def increment(tx):
        doc = tx.get(key) or {"n": 0}
        reads.append(doc)
        if len(reads) == 1:
            other.set(key, json.dumps({"n": 10}))  # another process commits between read and EXEC
        tx.put(key, {"n": doc["n"] + 1})

    try:
        kv.atomic(increment, [key])
        assert kv.get(key) == {"n": 11}, "the transaction was redone over the other process's write"
        assert (kv.counts.transactions, kv.counts.conflicts) == (1, 1)
        kv.atomic(increment, [key])
        assert (kv.counts.transactions, kv.counts.conflicts) == (2, 1)
        assert seen == [1, 0]
    finally:
        other.delete(key)
        other.close()
        kv.close()


def test_sqlite_transactions_are_counted_without_conflicts(tmp_path):
    kv = SqliteKV(tmp_path / "state.db")
    kv.atomic(lambda tx: tx.put("a", {"n": 1}), ["a"])
    kv.atomic(lambda tx: tx.get("a"), ["a"])
    assert (kv.counts.transactions, kv.counts.conflicts) == (2, 0)
    kv.close()


def test_a_workers_metrics_count_its_store_transactions(tmp_path):
    from prometheus_client.exposition import generate_latest

    kv, metrics = SqliteKV(tmp_path / "state.db"), WorkerMetrics()
    metrics.watch_store(kv.counts)
    for n in range(3):
        kv.atomic(lambda tx, n=n: tx.put("a", {"n": n}), ["a"])
    kv.counts.add(2)  # as a Redis transaction redone twice reports it
    text = generate_latest(registry(None, metrics)).decode()
    assert "etl_store_transactions_total 4.0" in text
    assert "etl_store_conflicts_total 2.0" in text
    kv.close()


def _sockets() -> set[str]:
    """The sockets this process has open (Linux: /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    return {link for fd in fds.iterdir() if (link := os.readlink(fd) if fd.exists() else "").startswith("socket:")}


def test_a_closed_queue_and_store_leave_no_connection_open(tmp_path):
    """A process that opens a queue (the dashboard, `etl run`, a test) and closes it lets go of
    every connection: the store's, its check's and Huey's (whose pool is ours to close)."""
    from etl.queue import Queue
    from etl.settings import queue_settings

    before = _sockets()
    queue = Queue(queue_settings({"ETL_QUEUE_URL": REDIS_URL, "ETL_QUEUE_NAME": f"t{uuid4().hex[:10]}"}))
    queue.check()
    queue.send("etl.plan", "some-run")
    assert queue.store.get_run("some-run") is None and queue.in_transit()
    queue.huey.storage.flush_queue()
    assert _sockets() - before, "it connected"
    queue.close()
    assert not _sockets() - before
