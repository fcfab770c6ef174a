"""Leases: one thread renews the lease of every chunk a worker process holds."""

from __future__ import annotations

import threading
import time

from etl.kv import SqliteKV
from etl.lifecycle import Leases
from etl.store import RunStore
from tests.test_store import planned, take


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_thread_renews_every_chunk_in_hand_and_tells_each_when_it_is_lost(tmp_path):
    store = RunStore(SqliteKV(tmp_path / "state.db"))
    rid = planned(store, 3)
    store.dispatch(rid, 3)
    held = {i: take(store, rid, i, lease=0.5) for i in range(3)}
    leases = Leases(lambda run_id, index, token: store.renew(run_id, index, token, 0.5), interval=0.05)
    before = {i: c.lease_until for i, c in held.items()}
    threads = threading.active_count()
    with leases.hold(rid, 0, held[0].token) as first, leases.hold(rid, 1, held[1].token) as second:
        assert threading.active_count() == threads + 1  # one thread for both
        wait_for(lambda: all(store.get_chunk(rid, i).lease_until > before[i] + 0.2 for i in (0, 1)))
        assert store.release(rid, 0, held[0].token)  # another process took chunk 0 away
        wait_for(first.is_set)
        assert (first.reason, second.is_set()) == ("lost", False)
        with leases.hold(rid, 2, held[2].token) as third:
            assert store.cancel(rid)
            wait_for(lambda: second.is_set() and third.is_set())
            assert second.reason == third.reason == "stopped"
    leases.close()
    assert threading.active_count() == threads


def test_a_chunk_let_go_is_renewed_no_more(tmp_path):
    store = RunStore(SqliteKV(tmp_path / "state.db"))
    rid = planned(store, 1)
    store.dispatch(rid, 1)
    chunk = take(store, rid, 0, lease=60)
    renewed: list[int] = []

    def renew(run_id, index, token):
        renewed.append(index)
        return store.renew(run_id, index, token, 60)

    leases = Leases(renew, interval=0.02)
    with leases.hold(rid, 0, chunk.token) as stopped:
        wait_for(lambda: len(renewed) >= 2)
    count = len(renewed)
    time.sleep(0.1)
    assert len(renewed) <= count + 1  # one renewal may have been under way
    assert not stopped.is_set()
    leases.close()
