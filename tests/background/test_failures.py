"""Workers that die, stall, spin or lose Redis: no chunk is lost, none is loaded twice."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from tests.background.conftest import (
    free_port,
    queue,
    redis_up,
    run_record,
    submit,
    target_ids,
    wait_finished,
    wait_for,
)


def holder_of(run_id: str, procs) -> tuple[int, object]:
    """A chunk being worked on now, and the worker process holding it."""
    pids = {p.pid: p for p in procs if p.poll() is None}
    for chunk in queue().store.get_chunks(run_id):
        if chunk.state == "running" and chunk.worker:
            pid = int(chunk.worker.split(":")[1])
            if pid in pids:
                return chunk.index, pids[pid]
    return None  # type: ignore[return-value]


def test_a_worker_killed_mid_chunk_costs_a_retry_never_a_chunk(cli, workers, job_file, tmp_path):
    procs = workers.start(2)
    run_id = submit(cli, job_file(200_000, 10_000, "[{type: sleepy, seconds: 0.8}]"))
    wait_for(lambda: run_record(run_id).chunks_done >= 3, 60, "three chunks done")
    index, victim = wait_for(lambda: holder_of(run_id, procs), 20, "a chunk in hand")
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    restarted = wait_for(
        lambda: (c := queue().store.get_chunk(run_id, index)).attempts >= 2 and c, 30, "the killed chunk to restart"
    )
    assert time.monotonic() - killed_at < 30
    assert any("stopped renewing the lease" in e for e in restarted.errors)
    run = wait_finished(run_id)
    assert run.state == "completed", run.error
    ids = target_ids(tmp_path / "out/bg")
    assert len(ids) == 200_000 and len(set(ids)) == 200_000


def test_a_worker_killed_mid_chunk_loads_postgres_exactly_once(cli, workers, job_file, tmp_path):
    import uuid

    import psycopg

    from tests.contract.cases_postgres import DSN

    table = f"bg_{uuid.uuid4().hex[:8]}"
    sink = f'{{type: postgres, dsn: "{DSN}", table: "etl_background.{table}"}}'
    procs = workers.start(2)
    run_id = submit(cli, job_file(200_000, 10_000, "[{type: sleepy, seconds: 0.8}]", sink=sink))
    try:
        wait_for(lambda: run_record(run_id).chunks_done >= 2, 60, "two chunks done")
        index, victim = wait_for(lambda: holder_of(run_id, procs), 20, "a chunk in hand")
        victim.send_signal(signal.SIGKILL)
        run = wait_finished(run_id)
        assert run.state == "completed", run.error
        assert queue().store.get_chunk(run_id, index).attempts >= 2
        with psycopg.connect(DSN) as con:
            count, distinct = con.execute(f"SELECT count(*), count(DISTINCT id) FROM etl_background.{table}").fetchone()
        assert (count, distinct) == (200_000, 200_000)
    finally:
        with psycopg.connect(DSN, autocommit=True) as con:
            con.execute(f"DROP TABLE IF EXISTS etl_background.{table}")


def test_a_zombie_that_lost_its_lease_cannot_commit(cli, workers, job_file, tmp_path):
    procs = workers.start(2)
    run_id = submit(cli, job_file(60_000, 10_000, "[{type: sleepy, seconds: 1.5}]"))
    index, zombie = wait_for(lambda: holder_of(run_id, procs), 30, "a chunk in hand")
    zombie.send_signal(signal.SIGSTOP)  # paused longer than the 3 s lease
    wait_for(lambda: queue().store.get_chunk(run_id, index).attempts >= 2, 30, "another worker to take the chunk over")
    wait_for(lambda: queue().store.get_chunk(run_id, index).state == "done", 30, "the newer attempt to finish")
    zombie.send_signal(signal.SIGCONT)
    run = wait_finished(run_id)
    assert run.state == "completed", run.error
    chunk = queue().store.get_chunk(run_id, index)
    assert chunk.state == "done" and chunk.attempts == 2
    time.sleep(2)  # let the zombie wake up and try
    log = workers.log(zombie)
    assert "another worker took the chunk over" in log or "took it over meanwhile" in log
    assert run_record(run_id).chunks_done == 6, "the zombie's result was not counted"
    ids = target_ids(tmp_path / "out/bg")
    assert len(ids) == 60_000 and len(set(ids)) == 60_000


def test_a_chunk_ten_times_longer_than_the_lease_runs_once(cli, workers, job_file):
    workers.start(1, ETL_LEASE_SECONDS="1")
    run_id = submit(cli, job_file(1_000, 1_000, "[{type: spin, seconds: 10}]"))
    run = wait_finished(run_id, timeout=60)
    assert run.state == "completed", run.error
    assert queue().store.get_chunk(run_id, 0).attempts == 1
    assert run.retries == 0


def test_a_poison_chunk_fails_after_its_attempts_without_a_crash_loop(cli, workers, job_file, tmp_path):
    crashes = tmp_path / "crashes.log"
    workers.start(2, ETL_LEASE_SECONDS="2")
    run_id = submit(cli, job_file(30_000, 5_000, f'[{{type: crash, on_id: 12345, log: "{crashes}"}}]'))
    deadline = time.monotonic() + 90
    while not run_record(run_id).finished and time.monotonic() < deadline:
        for proc in list(workers.procs):  # a supervisor (systemd, Kubernetes) restarts dead workers
            if proc.poll() is not None and proc not in getattr(workers, "_restarted", set()):
                workers.__dict__.setdefault("_restarted", set()).add(proc)
                workers.start(1, ETL_LEASE_SECONDS="2")
        time.sleep(0.2)
    run = run_record(run_id)
    assert run.state == "failed"
    chunk = queue().store.get_chunk(run_id, 2)
    assert chunk.state == "failed" and chunk.attempts == 3
    assert "gave up after 3 attempts" in run.error
    assert len(crashes.read_text().split()) == 3
    time.sleep(4)
    assert len(crashes.read_text().split()) == 3, "nothing takes the failed chunk again"
    assert len(workers.alive()) >= 2


def test_workers_ride_out_a_redis_restart(cli, job_file, tmp_path, monkeypatch):
    from tests.background.conftest import Workers, quick_queue

    server = shutil.which("redis-server")
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    command = [server, "--port", str(port), "--dir", str(data), "--appendonly", "yes", "--save", ""]
    redis_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis_up(url), 10, "a Redis of our own")
    env = quick_queue(url, "restart", tmp_path, monkeypatch)
    pool = Workers(env, tmp_path)
    try:
        pool.start(2)
        run_id = submit(cli, job_file(100_000, 5_000, "[{type: sleepy, seconds: 0.3}]"))
        wait_for(lambda: run_record(run_id).chunks_done >= 4, 60, "four chunks done")
        redis_proc.terminate()
        redis_proc.wait(10)
        time.sleep(3)
        redis_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(lambda: redis_up(url), 10, "Redis back")
        run = wait_finished(run_id, timeout=120)
        assert run.state == "completed", run.error
        ids = target_ids(tmp_path / "out/bg")
        assert len(ids) == 100_000 and len(set(ids)) == 100_000
        assert all(p.poll() is None for p in pool.procs), "the workers survived the outage"
    finally:
        pool.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


def test_sigterm_lets_the_chunk_in_hand_finish(cli, workers, job_file, tmp_path):
    procs = workers.start(1)
    run_id = submit(cli, job_file(20_000, 10_000, "[{type: sleepy, seconds: 2}]"))
    index, proc = wait_for(lambda: holder_of(run_id, procs), 30, "a chunk in hand")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert "finishing the chunks in hand" in workers.log(proc)
    chunk = queue().store.get_chunk(run_id, index)
    assert chunk.state == "done" and chunk.attempts == 1
    assert not queue().store.workers(ttl=60), "the worker deregistered"
    workers.start(1)
    assert wait_finished(run_id).state == "completed"
    assert sorted(target_ids(tmp_path / "out/bg")) == list(range(1, 20_001))


def test_a_lost_message_is_sent_again(cli, workers, job_file, queue_env):
    import etl
    from etl.store import RunRecord

    store = queue().store
    job = etl.load_job(job_file(10_000, 5_000))
    store.create_run(RunRecord(id="lost-1", job=job.name, job_text=job.text, job_file=job.file))
    # Planned and queued, but the messages went down with a worker that died holding them.
    from etl.stages import Chunk

    store.set_plan(
        "lost-1",
        rows=10_000,
        exact=True,
        chunks=[Chunk(0, 5_000, {"start": 0, "stop": 5_000}), Chunk(1, 5_000, {"start": 5_000, "stop": 10_000})],
        shared={},
    )
    assert store.dispatch("lost-1", 2) == [0, 1]
    workers.start(1)
    run = wait_finished("lost-1", timeout=60)
    assert run.state == "completed", run.error
    assert "its message was lost; sent again" in workers.all_logs()


@pytest.mark.parametrize("runs", [100_000])
def test_cleaning_many_runs_never_blocks_redis(queue_env, runs):
    import redis

    store = queue().store
    client = redis.Redis.from_url(queue_env["ETL_QUEUE_URL"])
    now = time.time() - 86_400
    with client.pipeline(transaction=False) as pipe:
        for i in range(runs):
            run_id = f"old-{i:06d}"
            doc = {"id": run_id, "job": "old", "state": "completed", "created_at": now, "finished_at": now}
            pipe.set(store._run_key(run_id), json.dumps(doc))
            for name in ("runs", "state:completed", "job:old"):
                pipe.zadd(store._z(name), {run_id: now})
            pipe.zadd(store._z("finished:completed"), {run_id: now})
            if i % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()
    slowlog = int(client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"])
    client.config_set("slowlog-log-slower-than", 20_000)  # 20 ms
    client.slowlog_reset()
    try:
        started = time.monotonic()
        assert store.clean("completed", older_than=3600) == runs
        print(f"cleaned {runs:,} runs in {time.monotonic() - started:.1f}s")
        slow = client.slowlog_get(128)
        assert not slow, f"commands that blocked Redis for over 20 ms: {[e['command'][:80] for e in slow]}"
    finally:
        client.config_set("slowlog-log-slower-than", slowlog)
    assert store.get_run("old-000000") is None
    assert not list(client.scan_iter(match=f"{queue_env['ETL_QUEUE_NAME']}:run:old-*", count=5000))
