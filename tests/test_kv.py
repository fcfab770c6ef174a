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


def test_a_redis_transaction_watches_a_key_it_chose_from_what_it_read():
    """``tx.watch`` of a key found mid-transaction (the next chunk to hand out): another process's
    write to it before EXEC makes the transaction start over; its reads come in one MGET."""
    kv, other = RedisKV(REDIS_URL), redis.Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid4().hex[:8]}"
    pointer, target, plain = f"{prefix}:pointer", f"{prefix}:target", f"{prefix}:plain"
    other.set(pointer, json.dumps({"key": target}))
    other.set(target, json.dumps({"n": 1}))
    seen: list[list] = []

    def bump(tx):
        chosen = tx.get(pointer)["key"]
        tx.watch([chosen])
        docs = tx.get_many([chosen, plain, pointer])
        seen.append(docs)
        if len(seen) == 1:
            other.set(target, json.dumps({"n": 5}))  # another process commits between read and EXEC
        tx.put(chosen, {"n": docs[0]["n"] + 1})

    try:
        kv.atomic(bump, [pointer])
        assert seen == [[{"n": 1}, None, {"key": target}], [{"n": 5}, None, {"key": target}]]
        assert kv.get(target) == {"n": 6}
        assert (kv.counts.transactions, kv.counts.conflicts) == (1, 1)
    finally:
        other.delete(pointer, target)
        other.close()
        kv.close()


def test_sqlite_transactions_read_several_documents_at_once(tmp_path):
    kv = SqliteKV(tmp_path / "state.db")
    kv.atomic(lambda tx: [tx.put(k, {"k": k}) for k in ("a", "b")], ["a", "b"])

    def read(tx):
        tx.watch(["b"])  # nothing to do on SQLite: the transaction holds the file's write lock
        return tx.get_many(["b", "missing", "a"])

    assert kv.atomic(read, []) == [{"k": "b"}, None, {"k": "a"}]
    kv.close()


def test_the_acl_in_the_docs_lets_a_worker_record_a_run_from_plan_to_clean_up():
    """docs/operations.md lists the commands a worker needs (ACL): a Redis user with those and
    no more plans, hands out, claims, renews, completes (adding to counters), finishes, lists
    and deletes a run."""
    from etl.store import RunStore
    from tests.test_store import planned, result, take

    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    line = next(line for line in doc.splitlines() if line.startswith("ACL SETUSER etl-worker"))
    commands = [word for word in line.split() if word.startswith(("+", "-@"))]
    admin, user, prefix = redis.Redis.from_url(REDIS_URL), f"etltest-{uuid4().hex[:8]}", f"acl{uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "resetkeys", f"~{prefix}:*", "resetchannels", *commands)
    kv = RedisKV(f"redis://{user}:pw@127.0.0.1:6379/15")
    try:
        store = RunStore(kv, prefix=prefix)
        rid = planned(store, 3)
        assert store.dispatch(rid, 2) == [0, 1]
        for index in range(3):
            chunk = take(store, rid, index)
            assert store.renew(rid, index, chunk.token, 30) == "ok"
            completion = store.complete(rid, index, chunk.token, result(index), hand_out=2)
            assert completion.accepted
        assert completion.last and store.claim_finalize(rid, "w1", 30) and store.finish(rid, "w1")
        assert store.get_run(rid).chunks_done == 3
        assert store.clean("completed") == 1
    finally:
        kv.close()
        admin.execute_command("ACL", "DELUSER", user)
        for key in admin.scan_iter(match=f"{prefix}:*", count=1000):
            admin.unlink(key)
        admin.close()
