"""The run store's contract (etl/store/), on both backends: Redis and the embedded SQLite file.

Every test runs twice, once per backend, through the ``store`` fixture. Time is a fake clock
that moves only when a test advances it, so leases expire deterministically without sleeping.
The Redis half needs the Redis at 127.0.0.1:6379 (database 15, a unique key prefix per test,
removed afterwards); when it is not reachable those tests fail, they are not skipped.
"""

from __future__ import annotations

import functools
import json
import random
import sqlite3
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from etl.kv import RedisKV, SqliteKV
from etl.runs import ChunkResult
from etl.stages import Chunk
from etl.store import RunRecord, RunStore, WorkerInfo
from etl.store.base import COUNTED

REDIS_URL = "redis://127.0.0.1:6379/15"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


# -- fixtures ------------------------------------------------------------------------------


class FakeClock:
    """A clock for the store: a float that moves only when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@functools.cache
def _redis_problem() -> str | None:
    """Why the test Redis can't be used, or None. Asked once, quickly (no retries)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # any reason at all: the Redis half of the suite can't run
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def _purge(kv: RedisKV, prefix: str) -> None:
    """Delete every Redis key of one test's store (SCAN MATCH prefix* + UNLINK)."""
    keys = list(kv.client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        kv.client.unlink(*keys[start : start + 500])


@pytest.fixture(params=["sqlite", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid4().hex[:8]}"


class _Unreachable:
    """Stands in for the Redis KV when there is no Redis: the first use fails the test, with
    the reason; the test is not skipped."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __getattr__(self, name: str):
        pytest.fail(self.message, pytrace=False)


@pytest.fixture
def kv(backend, tmp_path, prefix):
    if backend == "sqlite":
        store_kv = SqliteKV(tmp_path / "state.db")
        yield store_kv
        store_kv.close()
        return
    problem = _redis_problem()
    if problem is not None:
        yield _Unreachable(
            f"the Redis half of the run store's contract needs a Redis at {REDIS_URL}, and it is not reachable "
            f"({problem}); start one (e.g. `redis-server --port 6379`): these tests are not skipped"
        )
        return
    store_kv = RedisKV(REDIS_URL)
    try:
        yield store_kv
    finally:
        _purge(store_kv, prefix)
        store_kv.close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(kv, prefix, fake_clock) -> RunStore:
    return RunStore(kv, prefix=prefix, clock=fake_clock)


# -- helpers -------------------------------------------------------------------------------


def new_run(store: RunStore, run_id: str | None = None, job: str = "load", **fields) -> RunRecord:
    record = RunRecord(id=run_id or f"run-{uuid4().hex[:8]}", job=job, **fields)
    assert store.create_run(record) is None
    return record


def chunks(n: int) -> list[Chunk]:
    return [
        Chunk(i, rows=10, args={"lo": i * 10, "hi": i * 10 + 9}, label=f"rows {i * 10}-{i * 10 + 9}") for i in range(n)
    ]


def planned(
    store: RunStore, n: int = 4, *, run_id: str | None = None, job: str = "load", rows: int | None = None
) -> str:
    run = new_run(store, run_id, job)
    assert store.set_plan(run.id, rows=rows, exact=True, chunks=chunks(n), shared={"schema": {"v": "int64"}})
    return run.id


def result(index: int = 0, read: int = 10, written: int = 9, rejected: int = 1, seconds: float = 0.5) -> ChunkResult:
    return ChunkResult(index, read, written, rejected, seconds, attempt=1)


def take(store: RunStore, run_id: str, index: int, worker: str = "w1", lease: float = 30.0):
    """Claim a chunk that must be claimable; returns its record (token = attempts)."""
    record = store.claim(run_id, index, worker, lease)
    assert record is not None, f"chunk {index} of {run_id} could not be claimed"
    return record


def run_through(store: RunStore, run_id: str, n: int) -> None:
    """Dispatch, claim and complete every chunk, then finish the run."""
    store.dispatch(run_id, n)
    for index in range(n):
        token = take(store, run_id, index).token
        assert store.complete(run_id, index, token, result(index)).accepted
    assert store.finish(run_id)


def finished_run(store: RunStore, state: str, *, run_id: str | None = None, job: str = "load", n: int = 3) -> str:
    """A run finished in ``state``, leaving chunk records in as many states (and indexes) as
    that state allows: a failed run keeps a running chunk (a lease), a queued one and a pending
    one; a cancelled run a queued and pending ones."""
    rid = planned(store, n, run_id=run_id, job=job)
    if state == "completed":
        run_through(store, rid, n)
    elif state == "failed":
        store.dispatch(rid, 2)
        take(store, rid, 0)
        assert store.fail_chunk(rid, 1, None, "boom")
    elif state == "cancelled":
        store.dispatch(rid, 1)
        assert store.cancel(rid)
    else:  # pragma: no cover - a mistake in a test
        raise AssertionError(state)
    assert store.get_run(rid).state == state
    return rid


def ids(runs: list[RunRecord]) -> list[str]:
    return [r.id for r in runs]


# -- runs ----------------------------------------------------------------------------------


def test_create_and_get_a_run(store, fake_clock):
    record = RunRecord(
        id="r1", job="load", job_file="/jobs/load.yaml", job_text="name: load\n", params={"day": "1"}, attempts=5
    )
    assert store.create_run(record) is None
    run = store.get_run("r1")
    assert run is not None
    assert (run.id, run.job, run.state, run.created_at) == ("r1", "load", "waiting", fake_clock.now)
    assert (run.job_file, run.job_text, run.params, run.attempts) == (
        "/jobs/load.yaml",
        "name: load\n",
        {"day": "1"},
        5,
    )
    assert (run.planned, run.chunks_total, run.started_at, run.finished_at) == (False, 0, None, None)
    assert not run.finished
    assert store.get_run("nope") is None
    assert store.count_runs("waiting") == 1


def test_list_runs_newest_first_filtered_by_state_and_job(store, fake_clock):
    for i, job in enumerate(["a", "b", "a", "b", "a"]):
        new_run(store, f"r{i}", job)
        fake_clock.advance(1)
    assert store.set_plan("r0", rows=None, exact=True, chunks=chunks(1), shared={})
    assert store.cancel("r1")
    assert store.fail_run("r2", "boom")

    assert ids(store.list_runs()) == ["r4", "r3", "r2", "r1", "r0"]
    assert ids(store.list_runs(limit=2)) == ["r4", "r3"]
    assert ids(store.list_runs(job="a")) == ["r4", "r2", "r0"]
    assert ids(store.list_runs(job="a", limit=1)) == ["r4"]
    assert ids(store.list_runs(state="waiting")) == ["r4", "r3"]
    assert ids(store.list_runs(state="waiting", job="a")) == ["r4"]
    assert ids(store.list_runs(state="active")) == ["r0"]
    assert ids(store.list_runs(state="cancelled")) == ["r1"]
    assert ids(store.list_runs(state="failed", job="a")) == ["r2"]
    assert store.list_runs(state="failed", job="b") == []
    assert store.list_runs(state="completed") == []
    assert store.list_runs(job="nope") == []
    assert [store.count_runs(s) for s in ("waiting", "active", "completed", "failed", "cancelled")] == [2, 1, 0, 1, 1]
    assert [r.state for r in store.list_runs()] == ["waiting", "waiting", "failed", "cancelled", "active"]


def test_list_runs_pages_through_a_long_index(store, fake_clock):
    """A state index where only every third run is of the wanted job: the store reads on
    until it has ``limit`` of them."""
    for i in range(150):
        new_run(store, f"r{i:03d}", "abc"[i % 3])
        fake_clock.advance(1)
    wanted = [f"r{i:03d}" for i in reversed(range(150)) if i % 3 == 0]
    assert ids(store.list_runs(state="waiting", job="a", limit=40)) == wanted[:40]
    assert ids(store.list_runs(state="waiting", job="a", limit=1000)) == wanted
    assert ids(store.list_runs(limit=120)) == [f"r{i:03d}" for i in reversed(range(30, 150))]


def test_create_run_with_a_limit_refuses_while_the_job_has_that_many_unfinished(store, fake_clock):
    new_run(store, "a1", "a")
    fake_clock.advance(1)
    new_run(store, "a2", "a")
    assert store.create_run(RunRecord(id="b1", job="b"), limit=2) is None  # another job's runs don't count

    busy = store.create_run(RunRecord(id="a3", job="a"), limit=2)
    assert sorted(busy) == ["a1", "a2"]
    assert store.get_run("a3") is None  # nothing stored
    assert "a3" not in ids(store.list_runs()) + ids(store.list_runs(job="a")) + ids(store.list_runs(state="waiting"))
    assert store.count_runs("waiting") == 3

    assert store.cancel("a1")  # one finishes: room for one more
    assert store.create_run(RunRecord(id="a3", job="a"), limit=2) is None
    assert store.get_run("a3").state == "waiting"
    assert sorted(store.create_run(RunRecord(id="a4", job="a"), limit=2)) == ["a2", "a3"]

    assert store.fail_run("a2", "boom")
    assert store.create_run(RunRecord(id="a4", job="a"), limit=2) is None
    assert sorted(store.create_run(RunRecord(id="a5", job="a"), limit=2)) == ["a3", "a4"]

    # a completed run no longer counts either
    assert store.set_plan("a3", rows=None, exact=True, chunks=chunks(1), shared={})
    store.dispatch("a3", 1)
    assert store.complete("a3", 0, take(store, "a3", 0).token, result()).last
    assert store.finish("a3")
    assert store.create_run(RunRecord(id="a5", job="a"), limit=2) is None

    # a failed run retried is unfinished again
    assert store.retry_failed("a2") == []
    assert sorted(store.create_run(RunRecord(id="a6", job="a"), limit=3)) == ["a2", "a4", "a5"]
    assert store.get_run("a6") is None


# -- planning ------------------------------------------------------------------------------


def test_set_plan_makes_a_waiting_run_active_with_pending_chunks_once(store, fake_clock):
    new_run(store, "r1")
    fake_clock.advance(5)
    plan = chunks(3)
    assert store.set_plan("r1", rows=30, exact=False, chunks=plan, shared={"schema": {"v": "int64"}})

    run = store.get_run("r1")
    assert (run.state, run.planned, run.chunks_total) == ("active", True, 3)
    assert (run.rows_total, run.rows_exact, run.shared) == (30, False, {"schema": {"v": "int64"}})
    assert run.started_at == fake_clock.now
    assert ids(store.list_runs(state="active")) == ["r1"]
    assert store.list_runs(state="waiting") == []

    records = store.get_chunks("r1")
    assert [c.index for c in records] == [0, 1, 2]
    for record, chunk in zip(records, plan, strict=True):
        assert (record.state, record.attempts, record.worker, record.lease_until) == ("pending", 0, None, None)
        assert (record.label, record.rows, record.args) == (chunk.label, chunk.rows, dict(chunk.args))
        assert record.descriptor() == Chunk(chunk.index, chunk.rows, dict(chunk.args), chunk.label, attempt=0)
    assert store.get_chunk("r1", 1).label == "rows 10-19"

    # a re-delivered plan message changes nothing
    assert not store.set_plan("r1", rows=50, exact=True, chunks=chunks(5), shared={})
    run = store.get_run("r1")
    assert (run.chunks_total, run.rows_total, run.shared) == (3, 30, {"schema": {"v": "int64"}})
    assert store.get_chunk("r1", 3) is None
    assert not store.set_plan("missing", rows=1, exact=True, chunks=chunks(1), shared={})


def test_set_plan_is_refused_after_cancel(store):
    new_run(store, "r1")
    assert store.cancel("r1")
    assert not store.set_plan("r1", rows=30, exact=True, chunks=chunks(3), shared={})
    run = store.get_run("r1")
    assert (run.state, run.planned, run.chunks_total) == ("cancelled", False, 0)
    assert store.get_chunk("r1", 0) is None
    assert store.dispatch("r1", 10) == []


# -- dispatching ---------------------------------------------------------------------------


def test_dispatch_fills_up_to_the_limit_lowest_indices_first(store, fake_clock):
    rid = planned(store, 10)
    assert store.dispatch(rid, 3) == [0, 1, 2]
    assert store.dispatch(rid, 3) == []  # three in flight already
    assert store.dispatch(rid, 5) == [3, 4]
    states = [c.state for c in store.get_chunks(rid)]
    assert states == ["queued"] * 5 + ["pending"] * 5
    assert all(c.queued_at == fake_clock.now for c in store.get_chunks(rid)[:5])

    # running and retrying chunks are in flight too
    take(store, rid, 0)
    retried = take(store, rid, 1)
    assert store.retry_later(rid, 1, retried.token, "flaky", delay=10)
    assert store.dispatch(rid, 5) == []  # 2, 3, 4 queued + 0 running + 1 retrying

    # a chunk done or failed leaves room
    assert store.complete(rid, 0, 1, result()).accepted
    assert store.dispatch(rid, 5) == [5]
    assert store.dispatch(rid, 7) == [6, 7]
    assert store.dispatch(rid, 0) == []


def test_dispatch_never_hands_out_a_chunk_twice(store):
    rid = planned(store, 25)
    handed: list[int] = []
    while True:
        batch = store.dispatch(rid, 4)
        if not batch:
            break
        handed += batch
        for index in batch:
            assert store.complete(rid, index, take(store, rid, index).token, result(index)).accepted
    assert handed == list(range(25))
    assert store.dispatch(rid, 100) == []
    assert store.get_run(rid).chunks_done == 25


def test_dispatch_gives_nothing_for_a_run_that_is_not_active(store):
    waiting = new_run(store, "waiting").id
    cancelled = planned(store, 3, run_id="cancelled")
    assert store.cancel(cancelled)
    failed = planned(store, 3, run_id="failed")
    assert store.fail_run(failed, "boom")
    completed = planned(store, 1, run_id="completed")
    run_through(store, completed, 1)
    for run_id in (waiting, cancelled, failed, completed, "missing"):
        assert store.dispatch(run_id, 10) == [], run_id
    assert all(c.state == "pending" for c in store.get_chunks(cancelled) + store.get_chunks(failed))


# -- claiming ------------------------------------------------------------------------------


def test_claim_is_an_attempt_numbered_lease(store, fake_clock):
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    first = store.claim(rid, 0, "w1", 30.0)
    assert first is not None
    assert (first.state, first.attempts, first.worker, first.lease_until) == ("running", 1, "w1", fake_clock.now + 30)
    assert first.descriptor().attempt == 1
    stored = store.get_chunk(rid, 0)
    assert (stored.state, stored.attempts, stored.worker) == ("running", 1, "w1")

    assert store.claim(rid, 0, "w2", 30.0) is None  # live lease
    fake_clock.advance(30)
    assert store.claim(rid, 0, "w2", 30.0) is None  # up to the last second
    fake_clock.advance(1)
    second = store.claim(rid, 0, "w2", 30.0)  # the lease ran out: abandoned
    assert second is not None
    assert (second.attempts, second.worker, second.lease_until) == (2, "w2", fake_clock.now + 30)
    assert store.get_chunk(rid, 0).attempts == 2


def test_claim_refuses_pending_done_and_missing_chunks(store):
    rid = planned(store, 3)
    assert store.claim(rid, 0, "w1", 30) is None  # pending: not dispatched
    store.dispatch(rid, 1)
    token = take(store, rid, 0).token
    assert store.complete(rid, 0, token, result()).accepted
    assert store.claim(rid, 0, "w2", 30) is None  # done
    assert store.claim(rid, 7, "w1", 30) is None
    assert store.claim("missing", 0, "w1", 30) is None
    assert store.get_chunk(rid, 1).state == "pending"


@pytest.mark.parametrize("how", ["cancel", "fail_run"])
def test_claim_refuses_the_chunks_of_a_stopped_run(store, how):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    assert store.cancel(rid) if how == "cancel" else store.fail_run(rid, "boom")
    assert store.claim(rid, 0, "w1", 30) is None
    assert store.get_chunk(rid, 0).state == "queued"
    assert store.get_chunk(rid, 0).attempts == 0


# -- fencing -------------------------------------------------------------------------------


@pytest.mark.parametrize("takeover", ["reaper", "claim"])
def test_an_old_token_can_record_nothing(store, fake_clock, takeover):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    old = take(store, rid, 0, "w-old", lease=10)
    fake_clock.advance(11)
    if takeover == "reaper":
        assert store.reclaim(rid, 0, max_attempts=3) == "requeued"
    new = take(store, rid, 0, "w-new", lease=10)
    assert (old.attempts, new.attempts) == (1, 2)
    before = store.get_run(rid)

    assert store.renew(rid, 0, old.token, 60) == "lost"
    completion = store.complete(rid, 0, old.token, result(read=1000))
    assert (completion.accepted, completion.last) == (False, False)
    assert not store.retry_later(rid, 0, old.token, "zombie", delay=1)
    assert not store.fail_chunk(rid, 0, old.token, "zombie")
    assert not store.release(rid, 0, old.token)

    after = store.get_run(rid)
    assert after == before  # counters, retries, state: all unchanged
    chunk = store.get_chunk(rid, 0)
    assert (chunk.state, chunk.attempts, chunk.worker, chunk.lease_until) == (
        "running",
        2,
        "w-new",
        fake_clock.now + 10,
    )

    # the holder of the latest token is unaffected
    fake_clock.advance(5)
    assert store.renew(rid, 0, new.token, 60) == "ok"
    assert store.get_chunk(rid, 0).lease_until == fake_clock.now + 60
    assert store.complete(rid, 0, new.token, result()).accepted
    assert store.get_run(rid).chunks_done == 1


def test_renew_extends_the_lease(store, fake_clock):
    rid = planned(store, 1)
    store.dispatch(rid, 1)
    token = take(store, rid, 0, lease=10).token
    fake_clock.advance(8)
    assert store.renew(rid, 0, token, 10) == "ok"
    fake_clock.advance(8)  # past the first lease, within the renewed one
    assert store.claim(rid, 0, "w2", 10) is None
    assert store.expired_leases() == []
    assert store.renew(rid, 0, token + 1, 10) == "lost"
    assert store.renew(rid, 5, token, 10) == "lost"


@pytest.mark.parametrize("how", ["cancel", "fail_run"])
def test_renew_says_stopped_when_the_run_was_stopped(store, how):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    token = take(store, rid, 0).token
    assert store.cancel(rid) if how == "cancel" else store.fail_run(rid, "boom")
    assert store.renew(rid, 0, token, 30) == "stopped"
    assert store.renew(rid, 0, token + 1, 30) == "lost"


def test_renew_after_complete_is_lost(store):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    token = take(store, rid, 0).token
    assert store.complete(rid, 0, token, result()).accepted
    assert store.renew(rid, 0, token, 30) == "lost"


# -- completing ----------------------------------------------------------------------------


def test_completions_add_up_and_exactly_one_is_last(store):
    n = 12
    rid = planned(store, n)
    assert store.dispatch(rid, n) == list(range(n))
    tokens = {i: take(store, rid, i, f"w{i % 3}").token for i in range(n)}
    order = list(range(n))
    random.Random(7).shuffle(order)
    lasts = []
    for index in order:
        completion = store.complete(rid, index, tokens[index], result(index, index + 1, index, 1, 0.25))
        assert completion.accepted
        lasts.append(completion.last)
    assert lasts.count(True) == 1
    assert lasts[-1] is True

    run = store.get_run(rid)
    assert (run.chunks_done, run.chunks_failed, run.state) == (n, 0, "active")  # finishing is separate
    assert run.rows_read == sum(i + 1 for i in range(n))
    assert run.rows_written == sum(range(n))
    assert run.rows_rejected == n
    for chunk in store.get_chunks(rid):
        assert (chunk.state, chunk.worker, chunk.lease_until, chunk.error) == ("done", None, None, None)
        assert (chunk.rows_read, chunk.rows_written, chunk.rows_rejected) == (chunk.index + 1, chunk.index, 1)
        assert chunk.seconds == 0.25

    # a second completion of a done chunk is refused and counts nothing
    again = store.complete(rid, order[0], tokens[order[0]], result())
    assert (again.accepted, again.last) == (False, False)
    assert store.get_run(rid) == run
    assert store.expired_leases() == []


def test_a_completion_after_the_run_stopped_is_never_last(store):
    """The chunk's rows were written, so they count; but a stopped run is not finalized."""
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    assert store.complete(rid, 0, take(store, rid, 0).token, result()).accepted
    token = take(store, rid, 1).token
    assert store.cancel(rid)
    completion = store.complete(rid, 1, token, result())
    assert (completion.accepted, completion.last) == (True, False)
    run = store.get_run(rid)
    assert (run.state, run.chunks_done) == ("cancelled", 2)
    assert not store.claim_finalize(rid, "w1", 30)
    assert not store.finish(rid)


def test_a_completion_queues_the_next_chunk_in_its_own_transaction(store, fake_clock):
    rid = planned(store, 6)
    assert store.dispatch(rid, 2) == [0, 1]
    first = store.complete(rid, 0, take(store, rid, 0).token, result(), hand_out=2)
    assert (first.accepted, first.queued, first.room) == (True, (2,), 0)  # one done, one queued instead
    assert [c.state for c in store.get_chunks(rid)] == ["done", "queued", "queued", "pending", "pending", "pending"]
    assert store.get_chunk(rid, 2).queued_at == fake_clock.now
    assert store.dispatch(rid, 2) == []  # two in flight: 1 and 2
    # The next of its class (1 + 4: 5), so that workers completing at once choose different
    # ones. The parallelism grew: room says by how much.
    grew = store.complete(rid, 1, take(store, rid, 1).token, result(), hand_out=4)
    assert (grew.queued, grew.room) == ((5,), 2)
    assert store.dispatch(rid, 4) == [3, 4]
    assert store.complete(rid, 2, take(store, rid, 2).token, result(), hand_out=4).queued == ()  # none pending
    assert store.complete(rid, 2, 1, result(), hand_out=4) == store.complete(rid, 2, 1, result())  # refused
    for index in (3, 4):
        assert store.complete(rid, index, take(store, rid, index).token, result(), hand_out=4).queued == ()
    assert store.complete(rid, 5, take(store, rid, 5).token, result(), hand_out=4).last

    stopped = planned(store, 3)
    store.dispatch(stopped, 1)
    token = take(store, stopped, 0).token
    assert store.cancel(stopped)
    completion = store.complete(stopped, 0, token, result(), hand_out=3)
    assert (completion.accepted, completion.queued) == (True, ())  # a stopped run's chunks stay pending
    assert [c.state for c in store.get_chunks(stopped)] == ["done", "pending", "pending"]


def test_a_completion_whose_next_chunk_was_handed_out_otherwise_queues_one_of_the_lowest(store):
    rid = planned(store, 10)
    assert store.dispatch(rid, 3) == [0, 1, 2]
    assert store.dispatch(rid, 4) == [3]  # the next of chunk 0's class (0 + 3), queued already
    completion = store.complete(rid, 0, take(store, rid, 0).token, result(), hand_out=3)
    assert (completion.queued, completion.room) == ((4,), 0)  # the first of [4, 5, 6]; 1, 2, 3, 4 in flight
    assert store.complete(rid, 2, take(store, rid, 2).token, result(), hand_out=3).queued == (5,)  # 2 + 3


def test_a_completion_adds_to_the_runs_counters_and_leaves_its_document_alone(store):
    """Completions of one run don't rewrite (or watch) its document, so they never conflict; the
    run's figures are its document's plus its counters', wherever it is read."""
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    document = store.kv.get(f"{store.prefix}:run:{rid}")
    completions = [store.complete(rid, i, take(store, rid, i).token, result(i, 10 + i, 9, 1)) for i in range(2)]
    assert store.kv.get(f"{store.prefix}:run:{rid}") == document
    assert [(c.run.chunks_done, c.run.rows_read) for c in completions] == [(1, 10), (2, 21)]
    for run in (store.get_run(rid), store.list_runs()[0], store.active_runs()[0]):
        assert figures(run) == ("active", 2, 21, 18, 2)
    assert store.cancel(rid)  # a transition that saves the document counts nothing twice
    assert figures(store.get_run(rid)) == ("cancelled", 2, 21, 18, 2)


def figures(run: RunRecord) -> tuple:
    return run.state, run.chunks_done, run.rows_read, run.rows_written, run.rows_rejected


def test_a_run_stored_with_its_figures_in_its_document_keeps_them(store):
    """A run stored by an earlier version (its figures in its document, no counters) goes on."""
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    assert store.complete(rid, 0, take(store, rid, 0).token, result(0, 10, 9, 1)).accepted
    key = f"{store.prefix}:run:{rid}"
    old = {**store.kv.get(key), "chunks_done": 1, "rows_read": 10, "rows_written": 9, "rows_rejected": 1}
    store.kv.delete_many([f"{store.prefix}:count:{rid}:{name}" for name in COUNTED], {})
    store.kv.atomic(lambda tx: tx.put(key, old), [key])
    assert store.complete(rid, 1, take(store, rid, 1).token, result(1, 10, 9, 1)).run.chunks_done == 2
    assert store.retry_later(rid, 2, take(store, rid, 2).token, "flaky", 0)  # saves the document
    last = store.complete(rid, 2, take(store, rid, 2).token, result(2, 10, 9, 1))
    assert last.last and (last.run.chunks_done, last.run.rows_read, last.run.retries) == (3, 30, 1)
    assert store.claim_finalize(rid, "w1", 30) and store.finish(rid, "w1")
    assert figures(store.get_run(rid)) == ("completed", 3, 30, 27, 3)


def test_claim_with_run_returns_the_run_it_read(store):
    rid = planned(store, 2)
    store.dispatch(rid, 1)
    claimed = store.claim_with_run(rid, 0, "w1", 30.0)
    assert claimed is not None
    run, chunk = claimed
    assert run == store.get_run(rid)
    assert (chunk.index, chunk.state, chunk.token, chunk.worker) == (0, "running", 1, "w1")
    assert store.claim_with_run(rid, 0, "w2", 30.0) is None
    assert store.claim_with_run(rid, 1, "w2", 30.0) is None  # pending


# -- retrying and failing chunks -----------------------------------------------------------


def test_retry_later_puts_the_chunk_aside_until_its_time(store, fake_clock):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    first = take(store, rid, 0)
    assert store.retry_later(rid, 0, first.token, "connection reset", delay=20)
    chunk = store.get_chunk(rid, 0)
    assert (chunk.state, chunk.worker, chunk.lease_until) == ("retrying", None, None)
    assert chunk.not_before == fake_clock.now + 20
    assert chunk.error == "connection reset"
    assert chunk.errors == ["attempt 1: connection reset"]
    assert store.get_run(rid).retries == 1
    assert store.renew(rid, 0, first.token, 30) == "lost"
    assert not store.retry_later(rid, 0, first.token, "again", delay=20)  # only once per attempt
    assert store.get_run(rid).retries == 1

    fake_clock.advance(20)
    second = store.claim(rid, 0, "w2", 30)
    assert second is not None
    assert (second.state, second.attempts, second.not_before, second.worker) == ("running", 2, None, "w2")
    assert store.complete(rid, 0, second.token, result()).accepted
    run = store.get_run(rid)
    assert (run.retries, run.chunks_done, run.state) == (1, 1, "active")


def test_fail_chunk_with_its_token_fails_the_run(store, fake_clock):
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    token = take(store, rid, 1).token
    assert not store.fail_chunk(rid, 1, token + 1, "not mine")
    fake_clock.advance(3)
    assert store.fail_chunk(rid, 1, token, "column v: not a number")
    chunk = store.get_chunk(rid, 1)
    assert (chunk.state, chunk.error, chunk.worker, chunk.lease_until) == (
        "failed",
        "column v: not a number",
        None,
        None,
    )
    assert chunk.errors == ["attempt 1: column v: not a number"]
    run = store.get_run(rid)
    assert (run.state, run.error, run.error_chunk, run.chunks_failed) == ("failed", "column v: not a number", 1, 1)
    assert run.finished_at == fake_clock.now
    assert ids(store.list_runs(state="failed")) == [rid]
    assert store.list_runs(state="active") == []
    assert not store.fail_chunk(rid, 1, token, "again")
    assert store.claim(rid, 0, "w2", 30) is None
    assert store.dispatch(rid, 10) == []


def test_fail_chunk_without_a_token_is_the_reapers_verdict(store):
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    token = take(store, rid, 0).token
    assert store.complete(rid, 0, token, result()).accepted
    assert not store.fail_chunk(rid, 0, None, "too late: it is done")
    assert store.get_run(rid).state == "active"

    assert store.fail_chunk(rid, 2, None, "it kills every worker")  # queued, held by nobody
    run = store.get_run(rid)
    assert (run.state, run.error, run.error_chunk, run.chunks_failed) == ("failed", "it kills every worker", 2, 1)
    assert store.get_chunk(rid, 2).state == "failed"
    assert not store.fail_chunk(rid, 2, None, "again")


# -- the reaper ----------------------------------------------------------------------------


def test_expired_leases_are_requeued_and_live_ones_skipped(store, fake_clock):
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    take(store, rid, 0, "w-dead", lease=10)
    take(store, rid, 1, "w-alive", lease=100)
    assert store.expired_leases() == []
    fake_clock.advance(11)
    assert store.expired_leases() == [(rid, 0)]

    assert store.reclaim(rid, 1, max_attempts=3) == "skip"  # its lease is still live
    assert store.get_chunk(rid, 1).state == "running"
    assert store.reclaim(rid, 0, max_attempts=3) == "requeued"
    chunk = store.get_chunk(rid, 0)
    assert (chunk.state, chunk.worker, chunk.lease_until, chunk.attempts) == ("queued", None, None, 1)
    assert chunk.queued_at == fake_clock.now
    assert "w-dead" in chunk.error
    assert "w-dead" in chunk.errors[-1]
    assert store.get_run(rid).retries == 1
    assert store.expired_leases() == []
    assert store.reclaim(rid, 0, max_attempts=3) == "skip"  # not running any more
    assert store.reclaim(rid, 2, max_attempts=3) == "skip"  # queued, never claimed
    assert store.reclaim("missing", 0, max_attempts=3) == "skip"
    assert take(store, rid, 0, "w-next").attempts == 2


def test_a_chunk_that_keeps_losing_its_worker_fails_the_run(store, fake_clock):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    outcomes = []
    for attempt in (1, 2, 3):
        assert take(store, rid, 0, f"w{attempt}", lease=10).attempts == attempt
        fake_clock.advance(11)
        assert store.expired_leases() == [(rid, 0)]
        outcomes.append(store.reclaim(rid, 0, max_attempts=3))
    assert outcomes == ["requeued", "requeued", "failed"]
    run = store.get_run(rid)
    assert (run.state, run.error_chunk, run.chunks_failed, run.retries) == ("failed", 0, 1, 2)
    assert "w3" in run.error
    assert "3 attempts" in run.error
    assert run.finished_at == fake_clock.now
    chunk = store.get_chunk(rid, 0)
    assert (chunk.state, chunk.attempts, chunk.worker) == ("failed", 3, None)
    assert len(chunk.errors) == 3
    assert store.expired_leases() == []


def test_an_expired_lease_of_a_stopped_run_leaves_the_reapers_list(store, fake_clock):
    rid = planned(store, 1)
    store.dispatch(rid, 1)
    take(store, rid, 0, lease=10)
    assert store.cancel(rid)
    fake_clock.advance(11)
    assert store.expired_leases() == [(rid, 0)]
    assert store.reclaim(rid, 0, max_attempts=3) == "skip"
    assert store.expired_leases() == []
    run = store.get_run(rid)
    assert (run.state, run.chunks_failed) == ("cancelled", 0)


def test_expired_leases_across_runs_and_limit(store, fake_clock):
    first, second = planned(store, 3), planned(store, 3)
    for rid in (first, second):
        store.dispatch(rid, 3)
        for index in range(3):
            take(store, rid, index, lease=10 + 5 * index)
    fake_clock.advance(16)  # the leases of chunks 0 and 1 ran out, chunk 2's did not
    assert sorted(store.expired_leases()) == sorted([(first, 0), (first, 1), (second, 0), (second, 1)])
    assert len(store.expired_leases(limit=3)) == 3


def test_waiting_chunks_and_touch(store, fake_clock):
    rid = planned(store, 3)
    assert store.dispatch(rid, 2) == [0, 1]
    assert store.waiting_chunks(older_than=60) == []
    fake_clock.advance(61)
    assert sorted(store.waiting_chunks(older_than=60)) == [(rid, 0), (rid, 1)]
    assert store.waiting_chunks(older_than=60, limit=1) in ([(rid, 0)], [(rid, 1)])

    store.touch(rid, 0)  # its message was sent again
    assert store.get_chunk(rid, 0).queued_at == fake_clock.now
    assert store.waiting_chunks(older_than=60) == [(rid, 1)]

    held = take(store, rid, 1)  # a claimed chunk is not waiting
    assert store.waiting_chunks(older_than=60) == []

    assert store.retry_later(rid, 1, held.token, "flaky", delay=30)
    fake_clock.advance(30 + 59)  # due for 59 s: not long enough
    assert (rid, 1) not in store.waiting_chunks(older_than=60)
    assert (rid, 0) in store.waiting_chunks(older_than=60)
    fake_clock.advance(2)
    assert (rid, 1) in store.waiting_chunks(older_than=60)

    store.touch(rid, 1)
    chunk = store.get_chunk(rid, 1)
    assert (chunk.state, chunk.not_before, chunk.queued_at) == ("queued", None, fake_clock.now)
    assert (rid, 1) not in store.waiting_chunks(older_than=60)

    # touching a chunk that is not waiting changes nothing
    token = take(store, rid, 1).token
    store.touch(rid, 1)
    assert store.get_chunk(rid, 1).state == "running"
    assert store.complete(rid, 1, token, result()).accepted
    store.touch(rid, 1)
    store.touch(rid, 2)  # pending
    assert [c.state for c in store.get_chunks(rid)] == ["queued", "done", "pending"]


def test_release_gives_a_held_chunk_back_at_once(store, fake_clock):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    held = take(store, rid, 0, "w-leaving", lease=300)
    assert not store.release(rid, 0, held.token + 1)
    assert store.get_chunk(rid, 0).state == "running"
    fake_clock.advance(1)
    assert store.release(rid, 0, held.token)
    chunk = store.get_chunk(rid, 0)
    assert (chunk.state, chunk.worker, chunk.lease_until, chunk.queued_at) == ("queued", None, None, fake_clock.now)
    assert "shut down" in chunk.errors[-1]
    assert store.expired_leases() == []
    assert not store.release(rid, 0, held.token)  # not held any more
    again = take(store, rid, 0, "w-other")  # without waiting for the 300 s lease
    assert again.attempts == held.attempts, "a chunk given back did not fail: its attempt is not used up"
    assert again.token == held.token + 1


# -- finalizing ----------------------------------------------------------------------------


def test_claim_finalize_renew_and_finish(store, fake_clock):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    assert store.complete(rid, 0, take(store, rid, 0).token, result()).accepted
    token = take(store, rid, 1).token
    assert not store.claim_finalize(rid, "w1", 30)  # chunk 1 is not done
    assert not store.finish(rid)
    assert not store.finish(rid, "w1")
    assert store.complete(rid, 1, token, result()).last

    assert store.claim_finalize(rid, "w1", 30)
    run = store.get_run(rid)
    assert (run.finalizer, run.finalize_until) == ("w1", fake_clock.now + 30)
    assert not store.claim_finalize(rid, "w2", 30)  # one finalizer at a time
    assert store.claim_finalize(rid, "w1", 30)  # a re-delivered message to the same worker

    fake_clock.advance(20)
    assert store.renew_finalize(rid, "w1", 30)
    assert store.get_run(rid).finalize_until == fake_clock.now + 30
    assert not store.renew_finalize(rid, "w2", 30)
    fake_clock.advance(29)
    assert not store.claim_finalize(rid, "w2", 30)
    assert store.expired_finalizers() == []

    fake_clock.advance(2)  # w1 stopped renewing
    assert store.expired_finalizers() == [rid]
    assert store.claim_finalize(rid, "w2", 30)
    assert store.expired_finalizers() == []
    assert not store.renew_finalize(rid, "w1", 30)
    assert not store.finish(rid, "w1")
    assert store.get_run(rid).state == "active"

    assert store.finish(rid, "w2")
    run = store.get_run(rid)
    assert (run.state, run.finished_at, run.finalizer, run.finalize_until, run.error) == (
        "completed",
        fake_clock.now,
        None,
        None,
        None,
    )
    assert run.finished
    assert ids(store.list_runs(state="completed")) == [rid]
    assert store.list_runs(state="active") == []
    assert not store.finish(rid, "w2")
    assert not store.claim_finalize(rid, "w2", 30)
    assert not store.renew_finalize(rid, "w2", 30)
    fake_clock.advance(100)
    assert store.expired_finalizers() == []


def test_finish_without_a_finalizer_and_not_before_every_chunk_is_done(store):
    waiting = new_run(store).id
    assert not store.finish(waiting)
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    assert store.complete(rid, 0, take(store, rid, 0).token, result()).accepted
    assert not store.finish(rid)
    assert store.complete(rid, 1, take(store, rid, 1).token, result()).last
    assert store.finish(rid)
    assert store.get_run(rid).state == "completed"
    assert not store.finish(rid)
    assert not store.finish("missing")


def _incremental(store: RunStore, high: int, *, job: str = "inc") -> str:
    """An incremental run of ``job`` with every chunk done, its window's upper bound ``high``."""
    run = new_run(store, job=job)
    window = {"cursor": "id", "low": None, "high": {"type": "integer", "value": high}}
    assert store.set_plan(run.id, rows=None, exact=True, chunks=chunks(1), shared={}, window=window)
    store.dispatch(run.id, 1)
    assert store.complete(run.id, 0, take(store, run.id, 0).token, result()).last
    return run.id


def _mark(store: RunStore, job: str = "inc"):
    found = store.get_mark(job)
    return None if found is None else (found["value"]["value"], found["run"])


def test_finish_moves_an_incremental_runs_mark_forward_only(store):
    first = _incremental(store, 5)
    assert store.finish(first).state == "completed"
    assert _mark(store) == (5, first)

    later = _incremental(store, 9)
    assert store.finish(later, job="inc")  # told the job: the mark is watched from the start
    assert _mark(store) == (9, later)

    behind = _incremental(store, 7)  # a run that started before `later` and finished after it
    assert store.finish(behind)
    assert store.get_run(behind).state == "completed"
    assert _mark(store) == (9, later)

    misled = _incremental(store, 12)
    assert store.finish(misled, job="other")  # a wrong job is no harm: the run's own job counts
    assert _mark(store) == (12, misled)
    assert store.get_mark("other") is None

    plain = planned(store, 1, job="inc")  # not incremental: the mark stays
    store.dispatch(plain, 1)
    assert store.complete(plain, 0, take(store, plain, 0).token, result()).last
    assert store.finish(plain, job="inc")
    assert _mark(store) == (12, misled)


class _MarkMovesMeanwhile(FakeClock):
    """A clock that, at the given call, lets another client move the job's mark further: a
    later run finishing between this transaction's read of the mark and its write."""

    def __init__(self, kv: RedisKV, key: str, at_call: int) -> None:
        super().__init__()
        self.kv, self.key, self.at_call, self.calls = kv, key, at_call, None

    def arm(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        if self.calls is not None:
            self.calls += 1
            if self.calls == self.at_call:
                doc = {"cursor": "id", "value": {"type": "integer", "value": 99}, "run": "later", "updated_at": 0}
                self.kv.client.set(self.key, json.dumps(doc))
        return super().__call__()


@pytest.mark.parametrize("backend", ["redis"])  # on SQLite a transaction holds the file: nothing can interleave
@pytest.mark.parametrize("job", [None, "inc"])
def test_finish_watches_the_mark_it_moves(kv, prefix, job):
    # The finishing transaction reads the run, stamps it finished (the clock's 1st call), reads
    # the mark and stamps it (the 2nd): there, another run moves the mark to 99.
    clock = _MarkMovesMeanwhile(kv, f"{prefix}:mark:inc", at_call=2)
    store = RunStore(kv, prefix=prefix, clock=clock)
    rid = _incremental(store, 5)
    clock.arm()
    assert store.finish(rid, job=job).state == "completed"
    assert clock.calls > 2  # the transaction started over, having seen the mark move
    assert _mark(store) == (99, "later")  # and left it where the later run put it


# -- what transitions return ----------------------------------------------------------------


def test_run_transitions_return_the_run_as_they_left_it(store, fake_clock):
    rid = new_run(store).id
    fake_clock.advance(5)
    run = store.set_plan(rid, rows=30, exact=False, chunks=chunks(3), shared={"k": 1})
    assert (run.id, run.state, run.planned, run.chunks_total, run.rows_total) == (rid, "active", True, 3, 30)
    assert (run.started_at, run.shared) == (fake_clock.now, {"k": 1})
    assert run == store.get_run(rid)
    assert store.set_plan(rid, rows=30, exact=False, chunks=chunks(3), shared={}) is None  # planned already

    fake_clock.advance(5)
    failed = store.fail_run(rid, "planning failed: boom", chunk=2)
    assert (failed.state, failed.error, failed.error_chunk, failed.finished_at) == (
        "failed",
        "planning failed: boom",
        2,
        fake_clock.now,
    )
    assert failed == store.get_run(rid)
    assert store.fail_run(rid, "again") is None  # finished: refused
    assert store.cancel(rid) is None
    assert store.get_run(rid).error == "planning failed: boom"

    dropped = store.cancel_failed(rid)
    assert (dropped.state, dropped.error) == ("cancelled", "planning failed: boom")
    assert dropped == store.get_run(rid)
    assert store.cancel_failed(rid) is None  # not failed any more

    cancelled = store.cancel(new_run(store, "r2").id)
    assert (cancelled.id, cancelled.state, cancelled.error) == ("r2", "cancelled", "cancelled")
    assert cancelled == store.get_run("r2")
    for refused in (store.set_plan("r2", rows=None, exact=True, chunks=chunks(1), shared={}), store.cancel("r2")):
        assert refused is None
    for missing in (store.fail_run("missing", "x"), store.cancel("missing"), store.cancel_failed("missing")):
        assert missing is None


def test_complete_holds_the_run_with_its_new_counters_and_the_chunk(store, fake_clock):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    first, second = take(store, rid, 0), take(store, rid, 1)
    fake_clock.advance(3)
    done = store.complete(rid, 0, first.token, result(0, read=10, written=8, rejected=2))
    assert (done.accepted, done.last) == (True, False)
    assert (done.run.rows_read, done.run.rows_written, done.run.rows_rejected, done.run.chunks_done) == (10, 8, 2, 1)
    assert done.run == store.get_run(rid)
    assert (done.chunk.index, done.chunk.state, done.chunk.rows_written, done.chunk.finished_at) == (
        0,
        "done",
        8,
        fake_clock.now,
    )
    assert done.chunk == store.get_chunk(rid, 0)

    last = store.complete(rid, 1, second.token, result(1, read=5, written=5, rejected=0))
    assert last.last and (last.run.rows_read, last.run.chunks_done) == (15, 2)
    refused = store.complete(rid, 1, second.token, result(1))  # recorded already
    assert (refused.accepted, refused.last, refused.run, refused.chunk) == (False, False, None, None)
    assert store.get_run(rid).rows_read == 15


def test_chunk_transitions_return_the_chunk_or_the_failed_run(store, fake_clock):
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    held = take(store, rid, 0)
    later = store.retry_later(rid, 0, held.token, "timeout", delay=30)
    assert (later.index, later.state, later.not_before, later.error) == (0, "retrying", fake_clock.now + 30, "timeout")
    assert later.errors == ["attempt 1: timeout"]
    assert later == store.get_chunk(rid, 0)
    assert store.get_run(rid).retries == 1
    assert store.retry_later(rid, 0, held.token, "timeout", delay=30) is None  # not running any more

    held = take(store, rid, 1)
    released = store.release(rid, 1, held.token)
    assert (released.state, released.attempts, released.worker, released.queued_at) == (
        "queued",
        0,
        None,
        fake_clock.now,
    )
    assert released == store.get_chunk(rid, 1)
    assert store.release(rid, 1, held.token) is None

    held = take(store, rid, 2)
    assert store.fail_chunk(rid, 2, held.token + 1, "bad") is None  # another attempt's token
    failed = store.fail_chunk(rid, 2, held.token, "bad row")
    assert (failed.id, failed.state, failed.chunks_failed, failed.error, failed.error_chunk) == (
        rid,
        "failed",
        1,
        "bad row",
        2,
    )
    assert failed == store.get_run(rid)
    assert store.get_chunk(rid, 2).state == "failed"
    assert store.fail_chunk(rid, 2, None, "again") is None  # failed already
    for missing in (
        store.retry_later(rid, 9, 1, "x", 1),
        store.release(rid, 9, 1),
        store.fail_chunk("missing", 0, None, "x"),
    ):
        assert missing is None


def test_finalize_transitions_return_the_run(store, fake_clock):
    rid = planned(store, 1)
    store.dispatch(rid, 1)
    assert store.claim_finalize(rid, "w1", 30) is None  # a chunk is not done
    assert store.complete(rid, 0, take(store, rid, 0).token, result()).last
    claimed = store.claim_finalize(rid, "w1", 30)
    assert (claimed.finalizer, claimed.finalize_until) == ("w1", fake_clock.now + 30)
    assert claimed == store.get_run(rid)
    assert store.claim_finalize(rid, "w2", 30) is None

    fake_clock.advance(10)
    renewed = store.renew_finalize(rid, "w1", 30)
    assert renewed.finalize_until == fake_clock.now + 30
    assert renewed == store.get_run(rid)
    assert store.renew_finalize(rid, "w2", 30) is None

    assert store.finish(rid, "w2") is None
    finished = store.finish(rid, "w1")
    assert (finished.state, finished.finished_at, finished.finalizer) == ("completed", fake_clock.now, None)
    assert finished == store.get_run(rid)
    assert store.finish(rid, "w1") is None
    assert store.renew_finalize(rid, "w1", 30) is None


# -- cancelling and retrying runs -----------------------------------------------------------


def test_cancel(store, fake_clock):
    waiting = new_run(store, "waiting").id
    fake_clock.advance(2)
    assert store.cancel(waiting)
    run = store.get_run(waiting)
    assert (run.state, run.error, run.finished_at) == ("cancelled", "cancelled", fake_clock.now)
    assert not store.cancel(waiting)

    active = planned(store, 2, run_id="active")
    assert store.cancel(active)
    assert store.get_run(active).state == "cancelled"

    completed = planned(store, 1, run_id="completed")
    run_through(store, completed, 1)
    assert not store.cancel(completed)
    failed = planned(store, 1, run_id="failed")
    assert store.fail_run(failed, "boom")
    assert not store.cancel(failed)
    assert store.get_run(failed).state == "failed"
    assert not store.cancel("missing")
    assert sorted(ids(store.list_runs(state="cancelled"))) == ["active", "waiting"]


def test_cancel_failed(store, fake_clock):
    failed = finished_run(store, "failed")
    fake_clock.advance(5)
    assert store.cancel_failed(failed)
    run = store.get_run(failed)
    assert (run.state, run.finished_at) == ("cancelled", fake_clock.now)
    assert store.list_runs(state="failed") == []
    assert ids(store.list_runs(state="cancelled")) == [failed]
    assert not store.cancel_failed(failed)
    active = planned(store, 1)
    assert not store.cancel_failed(active)
    assert not store.cancel_failed("missing")
    # it is cleaned as a cancelled run now
    assert store.clean("failed") == 0
    assert store.clean("cancelled") == 1
    assert store.get_run(failed) is None


def test_retry_failed_runs_the_failed_chunks_again(store, fake_clock):
    rid = planned(store, 5)
    store.dispatch(rid, 5)
    for index in (0, 1):
        assert store.complete(rid, index, take(store, rid, index).token, result(index)).accepted
    flaky = take(store, rid, 3)
    assert store.retry_later(rid, 3, flaky.token, "flaky", delay=0)
    assert store.fail_chunk(rid, 3, take(store, rid, 3).token, "bad row")
    assert store.fail_chunk(rid, 2, None, "kills workers")  # late: the run failed already
    done_before = {c.index: c for c in store.get_chunks(rid) if c.state == "done"}
    assert store.get_run(rid).state == "failed"

    fake_clock.advance(10)
    assert store.retry_failed(rid) == [2, 3, 4]
    run = store.get_run(rid)
    assert (run.state, run.chunks_done, run.chunks_failed, run.error, run.error_chunk, run.finished_at) == (
        "active",
        2,
        0,
        None,
        None,
        None,
    )
    assert ids(store.list_runs(state="active")) == [rid]
    assert store.list_runs(state="failed") == []
    for chunk in store.get_chunks(rid):
        if chunk.index in done_before:
            assert chunk == done_before[chunk.index]  # untouched
        else:
            assert (chunk.state, chunk.attempts, chunk.worker, chunk.error) == ("pending", 0, None, None)

    # and the run can complete now
    assert store.dispatch(rid, 10) == [2, 3, 4]
    lasts = [store.complete(rid, i, take(store, rid, i).token, result(i)).last for i in (4, 2, 3)]
    assert lasts == [False, False, True]
    assert store.finish(rid)
    assert store.retry_failed(rid) == []  # completed
    assert store.get_run(rid).state == "completed"


def test_retry_failed_takes_only_failed_runs(store):
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    assert store.complete(rid, 0, take(store, rid, 0).token, result()).accepted
    take(store, rid, 1)
    assert store.cancel(rid)
    assert store.retry_failed(rid) == []  # a cancelled run is final: what it staged was dropped
    assert store.get_run(rid).state == "cancelled"

    rid = planned(store, 3)
    store.dispatch(rid, 3)
    assert store.complete(rid, 0, take(store, rid, 0).token, result()).accepted
    assert store.fail_chunk(rid, 1, take(store, rid, 1).token, "bad row")
    assert store.retry_failed(rid) == [1, 2]
    run = store.get_run(rid)
    assert (run.state, run.error, run.chunks_done) == ("active", None, 1)
    assert [(c.state, c.attempts) for c in store.get_chunks(rid)] == [("done", 1), ("pending", 0), ("pending", 0)]
    assert store.expired_leases() == []

    assert store.retry_failed(rid) == []  # active
    assert store.get_run(rid).state == "active"
    assert store.retry_failed(new_run(store).id) == []  # waiting
    assert store.retry_failed("missing") == []

    unplanned = new_run(store).id  # failed while planning: waiting again, to be planned again
    assert store.fail_run(unplanned, "the source is unreachable")
    assert store.retry_failed(unplanned) == []
    assert store.get_run(unplanned).state == "waiting"
    assert store.set_plan(unplanned, rows=None, exact=True, chunks=chunks(1), shared={})


def test_retry_failed_never_hands_out_an_old_fencing_token_again(store):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    zombie = take(store, rid, 0, "w-stalled", lease=600)  # still working, its lease live
    assert store.fail_chunk(rid, 1, None, "boom")
    assert store.retry_failed(rid) == [0, 1]
    store.dispatch(rid, 2)
    fresh = take(store, rid, 0, "w-fresh")
    assert fresh.token > zombie.token
    assert not store.complete(rid, 0, zombie.token, result(read=999)).accepted
    assert store.complete(rid, 0, fresh.token, result()).accepted


# -- workers -------------------------------------------------------------------------------


def test_workers_heartbeat_list_forget_and_remove(store, fake_clock):
    a = WorkerInfo(id="host-a:11", host="host-a", pid=11, concurrency=4, started_at=T0, current=["r|1"], version="1")
    b = WorkerInfo(id="host-b:22", host="host-b", pid=22, started_at=T0)
    store.heartbeat(a)
    fake_clock.advance(10)
    store.heartbeat(b)
    live = {w.id: w for w in store.workers(ttl=15)}
    assert set(live) == {a.id, b.id}
    assert live[a.id] == WorkerInfo("host-a:11", "host-a", 11, 4, T0, T0, ["r|1"], "1")
    assert live[b.id].last_seen == fake_clock.now

    fake_clock.advance(6)  # a was last seen 16 s ago
    assert [w.id for w in store.workers(ttl=15)] == [b.id]
    assert [w.id for w in store.workers(ttl=1000)] == [b.id]  # a was forgotten
    fake_clock.advance(100)
    store.heartbeat(b)
    assert store.workers(ttl=15)[0].last_seen == fake_clock.now
    store.remove_worker(b.id)
    assert store.workers(ttl=1000) == []
    store.remove_worker("never-seen")


# -- clean-up ------------------------------------------------------------------------------


def _assert_gone(store: RunStore, run_id: str, n: int = 3) -> None:
    assert store.get_run(run_id) is None
    assert all(store.get_chunk(run_id, i) is None for i in range(n))
    assert store.get_chunks(run_id, n) == []
    for state in (None, "waiting", "active", "completed", "failed", "cancelled"):
        assert run_id not in ids(store.list_runs(state=state, limit=1000))
    assert run_id not in ids(store.list_runs(job="load", limit=1000))
    assert run_id not in {r for r, _ in store.expired_leases(limit=1000)}
    assert run_id not in {r for r, _ in store.waiting_chunks(0, limit=1000)}


def test_clean_deletes_old_finished_runs_of_one_state(store, fake_clock):
    old = {state: finished_run(store, state) for state in ("completed", "failed", "cancelled")}
    fake_clock.advance(3600)
    new_failed = finished_run(store, "failed")
    active = planned(store, 3)
    waiting = new_run(store).id
    fake_clock.advance(60)

    assert store.clean("failed", older_than=600) == 1
    _assert_gone(store, old["failed"])
    assert store.count_runs("failed") == 1
    for kept in (new_failed, old["completed"], old["cancelled"], active, waiting):
        assert store.get_run(kept) is not None
    assert len(store.get_chunks(new_failed)) == 3
    assert len(store.get_chunks(old["completed"])) == 3

    assert store.clean("completed", older_than=600) == 1
    assert store.clean("cancelled", older_than=600) == 1
    _assert_gone(store, old["completed"])
    _assert_gone(store, old["cancelled"])
    assert store.clean("failed", older_than=600) == 0  # too recent
    assert store.clean("failed", older_than=0) == 1
    _assert_gone(store, new_failed)
    assert store.clean("active") == 0  # unfinished runs never go
    assert store.clean("waiting") == 0
    assert sorted(ids(store.list_runs())) == sorted([waiting, active])
    assert [store.count_runs(s) for s in ("completed", "failed", "cancelled")] == [0, 0, 0]


def _traces(store: RunStore, backend: str, kv, tmp_path, run_id: str) -> list[str]:
    """Every key, and every sorted-set membership, that still mentions ``run_id``."""
    found: list[str] = []
    if backend == "redis":
        for raw in kv.client.scan_iter(match=f"{store.prefix}*", count=1000):
            key = raw.decode()
            if run_id in key:
                found.append(f"key {key}")
            elif kv.client.type(key) == b"zset":
                for member, _ in kv.client.zscan_iter(key):
                    if run_id in member.decode():
                        found.append(f"member {member.decode()} of {key}")
        return found
    with sqlite3.connect(tmp_path / "state.db") as con:
        found += [f"key {k}" for (k,) in con.execute("SELECT key FROM kv WHERE instr(key, ?) > 0", (run_id,))]
        found += [
            f"member {m} of {n}"
            for n, m in con.execute(
                "SELECT name, member FROM zset WHERE instr(name, ?) > 0 OR instr(member, ?) > 0", (run_id, run_id)
            )
        ]
    return found


def test_clean_leaves_no_trace_of_a_run(store, backend, kv, tmp_path, fake_clock, request):
    doomed = {state: finished_run(store, state, n=4) for state in ("completed", "failed", "cancelled")}
    fake_clock.advance(1)
    kept = finished_run(store, "failed", n=4)
    assert _traces(store, backend, kv, tmp_path, kept)  # the probe sees a run that is there
    fake_clock.advance(10)
    for state, run_id in doomed.items():
        assert store.clean(state, older_than=0, limit=1) == 1
        assert _traces(store, backend, kv, tmp_path, run_id) == [], state
        assert store.kv.zcard(f"{store.prefix}:z:pending:{run_id}") == 0


def test_clean_works_in_batches(store, fake_clock):
    for i in range(50):
        rid = planned(store, 2, run_id=f"r{i:02d}")
        store.dispatch(rid, 1)
        assert store.cancel(rid)
        fake_clock.advance(1)
    assert store.clean("cancelled", older_than=0, batch=7) == 50
    assert store.list_runs(limit=100) == []
    assert store.count_runs("cancelled") == 0
    assert all(store.get_run(f"r{i:02d}") is None for i in range(50))
    assert store.waiting_chunks(0, limit=1000) == []
    assert store.clean("cancelled", older_than=0, batch=7) == 0

    for i in range(10):
        assert store.cancel(new_run(store, f"s{i}").id)
        fake_clock.advance(1)
    assert store.clean("cancelled", batch=3, limit=4) == 4  # the first to finish go first
    assert ids(store.list_runs()) == [f"s{i}" for i in reversed(range(4, 10))]


def test_clean_gets_past_an_index_entry_without_its_run(store, kv):
    rid = finished_run(store, "cancelled")
    kv.delete_many([f"{store.prefix}:run:{rid}"], {})  # the document is gone, its index entries are not
    assert store.clean("cancelled", batch=1, limit=5) <= 1
    assert store.clean("cancelled", batch=1, limit=5) == 0


def test_enforce_retention_keeps_the_newest_finished_runs_per_state(store, fake_clock):
    for i in range(5):
        planned(store, 1, run_id=f"c{i}")
        store.dispatch(f"c{i}", 1)
        assert store.complete(f"c{i}", 0, take(store, f"c{i}", 0).token, result()).last
    for i in (3, 0, 4, 1, 2):  # finished in another order than created
        fake_clock.advance(1)
        assert store.finish(f"c{i}")
    for i in range(3):
        fake_clock.advance(1)
        assert store.fail_run(new_run(store, f"f{i}").id, "boom")
    assert store.cancel(new_run(store, "x0").id)
    active = planned(store, 1, run_id="active")
    waiting = new_run(store, "waiting").id

    assert store.enforce_retention(keep=2) == 3 + 1 + 0
    assert sorted(ids(store.list_runs(state="completed"))) == ["c1", "c2"]
    assert sorted(ids(store.list_runs(state="failed"))) == ["f1", "f2"]
    assert ids(store.list_runs(state="cancelled")) == ["x0"]
    for gone in ("c0", "c3", "c4", "f0"):
        assert store.get_run(gone) is None
        assert store.get_chunk(gone, 0) is None
    assert store.enforce_retention(keep=2) == 0

    assert store.enforce_retention(keep=0) == 5
    assert sorted(ids(store.list_runs())) == sorted([active, waiting])


# -- JSON ----------------------------------------------------------------------------------


def _parse(stamp: str) -> datetime:
    assert stamp.endswith("Z"), stamp
    return datetime.fromisoformat(stamp[:-1] + "+00:00")


def test_run_to_json(store, fake_clock):
    assert store.create_run(RunRecord(id="r1", job="load", job_text="secret: yaml\n")) is None
    fake_clock.advance(0.25)
    assert store.set_plan("r1", rows=400, exact=True, chunks=chunks(4), shared={"schema": "x"})
    store.dispatch("r1", 4)
    fake_clock.advance(10)
    assert store.complete("r1", 0, take(store, "r1", 0).token, result(read=100, written=100, rejected=0)).accepted

    data = store.get_run("r1").to_json(now=fake_clock.now)
    assert "job_text" not in data
    assert "shared" not in data
    assert data["created_at"] == "2023-11-14T22:13:20Z"
    assert _parse(data["started_at"]) == datetime.fromtimestamp(T0 + 0.25, UTC)
    assert (data["finished_at"], data["finalize_until"]) == (None, None)
    assert (data["seconds"], data["rows_per_second"]) == (10.0, 10.0)
    assert data["eta_seconds"] == 30.0  # 300 rows left at 10 rows/s
    assert (data["state"], data["chunks_done"], data["rows_read"]) == ("active", 1, 100)
    json.dumps(data)  # JSON-ready as it is

    # without a row count the pace is in chunks
    run = store.get_run("r1")
    run.rows_total = None
    assert run.eta(now=fake_clock.now) == pytest.approx(30.0)

    # a finished run: no eta, its figures frozen at its end
    for index in (1, 2, 3):
        assert store.complete("r1", index, take(store, "r1", index).token, result(read=100)).accepted
    fake_clock.advance(10)
    assert store.finish("r1")
    fake_clock.advance(1000)
    data = store.get_run("r1").to_json(now=fake_clock.now)
    assert data["state"] == "completed"
    assert _parse(data["finished_at"]) == datetime.fromtimestamp(T0 + 20.25, UTC)
    assert (data["seconds"], data["rows_per_second"], data["eta_seconds"]) == (20.0, 20.0, None)

    # a run not started yet
    data = new_run(store).to_json(now=fake_clock.now)
    assert (data["seconds"], data["rows_per_second"], data["eta_seconds"], data["started_at"]) == (0.0, 0.0, None, None)
    assert data["created_at"].endswith("Z")


def test_chunk_and_worker_to_json(store, fake_clock):
    rid = planned(store, 1)
    store.dispatch(rid, 1)
    data = take(store, rid, 0, lease=30).to_json()
    assert _parse(data["lease_until"]) == datetime.fromtimestamp(T0 + 30, UTC)
    assert _parse(data["queued_at"]) == datetime.fromtimestamp(T0, UTC)
    assert data["not_before"] is None
    worker = WorkerInfo(id="w", host="h", pid=1, started_at=T0)
    store.heartbeat(worker)
    data = store.workers(ttl=10)[0].to_json()
    assert data["started_at"] == data["last_seen"] == "2023-11-14T22:13:20Z"
    json.dumps(data)


# -- concurrency ---------------------------------------------------------------------------


def in_threads(threads: int, work, errors: list[BaseException]) -> None:
    """Run ``work(i)`` in ``threads`` threads at once; fail if one hangs or put an error in ``errors``."""
    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=180)
    assert not any(t.is_alive() for t in pool), "the workers did not finish in 180 s"
    assert errors == []


def test_eight_workers_share_one_run(store):
    """Eight threads dispatch, race to claim, and complete the chunks of one 200-chunk run."""
    n, threads = 200, 8
    rid = planned(store, n)
    lock = threading.Lock()
    dispatched: list[int] = []
    claims: Counter[int] = Counter()
    accepted: Counter[int] = Counter()
    lasts: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(worker: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            while True:
                got = store.dispatch(rid, 16)
                with lock:
                    dispatched.extend(got)
                    others = rng.sample(dispatched, min(3, len(dispatched)))
                if not got:
                    run = store.get_run(rid)
                    if run.chunks_done == n:
                        return
                    time.sleep(0.001)
                for index in [*got, *others]:  # our own chunks, and a few that others may hold
                    record = store.claim(rid, index, worker, 600)
                    if record is None:
                        continue
                    with lock:
                        claims[index] += 1
                    done = store.complete(rid, index, record.token, result(index, index + 1, index, 1, 0.01))
                    with lock:
                        accepted[index] += done.accepted
                        lasts.append(done.last)
        except BaseException as exc:  # reported below
            errors.append(exc)

    in_threads(threads, lambda i: work(f"w{i}", i), errors)

    assert sorted(dispatched) == list(range(n))  # each chunk dispatched once
    assert claims == Counter(range(n))  # and claimed once: no lease handed out twice
    assert accepted == Counter(range(n))
    assert lasts.count(True) == 1
    run = store.get_run(rid)
    assert (run.chunks_done, run.chunks_failed, run.retries) == (n, 0, 0)
    assert run.rows_read == sum(i + 1 for i in range(n))
    assert run.rows_written == sum(range(n))
    assert run.rows_rejected == n
    records = store.get_chunks(rid)
    assert [(c.index, c.state, c.attempts) for c in records] == [(i, "done", 1) for i in range(n)]
    assert sum(c.rows_read for c in records) == run.rows_read
    assert store.claim_finalize(rid, "w0", 30)
    assert store.finish(rid, "w0")


def test_workers_handing_out_chunks_as_they_complete_them_hand_each_out_once(store):
    """Eight threads work one 120-chunk run as workers do: each completion queues the chunk that
    follows (its message goes to a shared queue), and a completion that leaves room dispatches.
    Every chunk is handed out, claimed and counted once; a completion never queues more than
    the one chunk it frees a place for."""
    n, threads, limit = 120, 8, 5
    rid = planned(store, n)
    lock = threading.Lock()
    messages: list[int] = store.dispatch(rid, limit)
    handed: Counter[int] = Counter(messages)
    done: set[int] = set()
    lasts: list[bool] = []
    errors: list[BaseException] = []

    def work(worker: str) -> None:
        try:
            while True:
                with lock:
                    index = messages.pop(0) if messages else None
                    finished = len(done) == n
                if index is None:
                    if finished:
                        return
                    time.sleep(0.001)
                    continue
                record = store.claim(rid, index, worker, 600)
                assert record is not None, f"chunk {index} was handed out but could not be claimed"
                completion = store.complete(rid, index, record.token, result(index), hand_out=limit)
                assert completion.accepted and len(completion.queued) <= 1
                more = store.dispatch(rid, limit) if completion.room else []
                with lock:
                    done.add(index)
                    handed.update([*completion.queued, *more])
                    messages.extend([*completion.queued, *more])
                    lasts.append(completion.last)
        except BaseException as exc:  # reported below
            errors.append(exc)

    in_threads(threads, lambda i: work(f"w{i}"), errors)
    assert handed == Counter(range(n))  # each chunk handed out once
    assert lasts.count(True) == 1
    run = store.get_run(rid)
    assert (run.chunks_done, run.rows_read) == (n, 10 * n)


@pytest.mark.parametrize("how", ["fail", "cancel"])
def test_the_queued_chunks_of_a_stopped_run_are_parked_not_resent(store, fake_clock, how):
    rid = planned(store, 3)
    assert store.dispatch(rid, 2) == [0, 1]
    fake_clock.advance(60)
    assert sorted(store.waiting_chunks(30)) == [(rid, 0), (rid, 1)]
    assert not store.park(rid, 0)  # the run is still active: a waiting chunk may have lost its message
    store.fail_run(rid, "boom") if how == "fail" else store.cancel(rid)
    assert store.park(rid, 0) and store.park(rid, 1)
    assert store.waiting_chunks(0) == []
    assert [c.state for c in store.get_chunks(rid)] == ["pending"] * 3
    if how == "fail":
        assert store.retry_failed(rid) == [0, 1, 2]  # a retry runs them all again


# -- signatures, the queue's key and what views show ----------------------------------------


def test_set_plan_stores_the_signatures_of_the_plan_and_of_each_chunk(store):
    from etl.records import Signer

    signer = Signer("k3y")
    run = new_run(store)
    shared = {"schema": {"v": "int64"}, "columns": ("v",), 3: "keys become text"}
    planned_run = store.set_plan(
        run.id, rows=40, exact=True, chunks=chunks(4), shared=shared, sign=(signer.plan, signer.chunk)
    )
    stored = store.get_run(run.id)
    assert stored.plan_signature and stored.plan_signature == planned_run.plan_signature
    assert signer.check_plan(stored) is None, "what was signed is what the store gives back (JSON)"
    records = store.get_chunks(run.id)
    assert all(c.signature for c in records) and len({c.signature for c in records}) == 4
    assert all(signer.check_chunk(c) is None for c in records)
    # Any change, or another key, fails the check.
    assert Signer("another").check_plan(stored) is not None
    stored.shared = {**stored.shared, "columns": ["w"]}
    assert signer.check_plan(stored) == "the run's plan (its shared data, window or number of chunks)"
    records[1].args = {**records[1].args, "hi": 99}
    assert signer.check_chunk(records[1]) == "chunk 1's descriptor (what the source reads for it)"
    records[2].index = 3  # chunk 2's descriptor as chunk 3's
    assert signer.check_chunk(records[2]) is not None
    # Without a key nothing is signed, and nothing is checked.
    unsigned = new_run(store)
    store.set_plan(unsigned.id, rows=None, exact=True, chunks=chunks(1), shared={})
    assert (
        store.get_run(unsigned.id).plan_signature == "" and Signer(None).check_plan(store.get_run(unsigned.id)) is None
    )


def test_a_window_given_with_the_run_stays_when_it_is_planned(store):
    given = {"cursor": "id", "low": None, "high": {"type": "integer", "value": 5}}
    run = new_run(store, window=given)
    store.set_plan(run.id, rows=None, exact=True, chunks=chunks(1), shared={}, window={**given, "extra": 1})
    assert store.get_run(run.id).window == given


def test_complete_stores_the_completions_signature(store):
    rid = planned(store, 2)
    store.dispatch(rid, 2)
    record = take(store, rid, 0)
    assert store.complete(rid, 0, record.token, result(), "sig-0").accepted
    assert store.get_chunk(rid, 0).done_signature == "sig-0"
    assert store.get_chunk(rid, 1).done_signature == ""


def test_the_first_key_id_recorded_is_the_queues(store, fake_clock):
    assert store.key_marker() is None
    first = store.key_marker("aaaa")
    assert first["id"] == "aaaa" and first["at"] == fake_clock.now and ":" in first["by"]
    assert store.key_marker("bbbb")["id"] == "aaaa", "a second key does not replace the first"
    assert store.key_marker()["id"] == "aaaa"
    store.forget_key()
    assert store.key_marker() is None
    assert store.key_marker("bbbb")["id"] == "bbbb"


def test_key_refusal_refuses_a_process_without_the_key_or_with_another(store):
    from etl.records import key_id, key_refusal

    assert key_refusal(store, None) is None, "no key anywhere: nothing to refuse"
    assert key_refusal(store, "k3y") is None  # the first key used is recorded
    assert store.key_marker()["id"] == key_id("k3y") and key_id("k3y") != key_id("other")
    assert key_refusal(store, "k3y") is None
    assert "this process has none" in key_refusal(store, None)
    assert "keyed with another ETL_SECRET_KEY" in key_refusal(store, "other")
    assert "k3y" not in key_refusal(store, "other"), "the key itself is never shown"


def test_views_mask_secret_parameters_and_overrides_and_show_no_signature(store):
    sets = [
        'sink={type: postgres, dsn: "postgresql://etl:S3cret@db/sales", table: t}',
        "sink.password=Pw0rd",
        "sink.dsn=host=db password='a b' user=etl",
        "chunk_size=1000",
        "transforms[1].expr=value > 100",
        "x=&a [*a, *a, *a]",
    ]
    params = {"db_password": "Pw0rd", "api_token": "T0ken", "day": "2026-01-02", "url": "https://u:S3cret@h/x"}
    rid = planned(store, 2)
    run = store.get_run(rid)
    run.sets, run.params, run.signature = sets, params, "sig"
    shown = run.to_json()
    assert shown["sets"] == [
        'sink={"type": "postgres", "dsn": "postgresql://etl:***@db/sales", "table": "t"}',
        "sink.password=***",
        "sink.dsn=host=db password=*** user=etl",
        "chunk_size=1000",
        "transforms[1].expr=value > 100",
        "x=***",
    ]
    assert shown["params"] == {
        "db_password": "***",
        "api_token": "***",
        "day": "2026-01-02",
        "url": "https://u:***@h/x",
    }
    assert not {"signature", "plan_signature", "job_text", "shared"} & shown.keys()
    assert not {"signature", "done_signature"} & store.get_chunk(rid, 0).to_json().keys()
    assert run.sets == sets and run.params == params, "the record keeps what was given"
