"""Redis fails over and nothing is lost: a primary, a replica and three sentinels on loopback
ports (tests/sentinel.py), real `etl worker` processes loading PostgreSQL, and the primary
SIGKILLed mid-run.

* With the defaults (each change of the run store confirmed by the replica, ``WAIT``), the
  run completes with exactly its rows and the scheduler fires each slot once across the
  failover.
* With ``ETL_REDIS_WAIT_REPLICAS=0`` and replication cut just before the kill, the failover
  really does undo changes the workers acted on (chunk completions, claims that raised fencing
  tokens, popped messages): the chunks run again, and the sink's ledger keeps the target exact.
* Two attempts carrying the same fencing token (a claim the failover undid, claimed again)
  write the chunk once, and neither fails.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
import uuid

import psycopg
import pyarrow as pa
import pytest

from etl import Chunk
from tests.background.conftest import Workers, queue, quick_queue, run_record, submit, wait_finished, wait_for
from tests.contract.cases_postgres import DSN
from tests.contract.framework import make_stage
from tests.sentinel import RedisHA

ROWS, CHUNK = 240_000, 10_000
CHUNKS = ROWS // CHUNK


@pytest.fixture
def ha(tmp_path):
    with RedisHA(tmp_path / "ha") as servers:
        yield servers


@pytest.fixture
def ha_workers(ha, tmp_path, monkeypatch):
    env = quick_queue(ha.url(db=0), f"t{uuid.uuid4().hex[:10]}", tmp_path, monkeypatch)
    pool = Workers(env, tmp_path)
    yield pool
    pool.stop()


@pytest.fixture
def table():
    """A table of this test's own in the schema ``etl_failover``; dropped afterwards."""
    name = f"etl_failover.t{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(f"DROP TABLE IF EXISTS {name}")
        con.execute("DELETE FROM _etl.ledger WHERE target = %s", [name])
        con.execute("DELETE FROM _etl.fence WHERE target = %s", [name])


def _sink(table: str) -> str:
    return f'{{type: postgres, dsn: "{DSN}", table: "{table}"}}'


def _rows(table: str) -> tuple[int, int]:
    with psycopg.connect(DSN) as con:
        return con.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchone()


def _pg_now() -> float:
    with psycopg.connect(DSN) as con:
        return con.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0]


def _scheduled(tmp_path, name: str) -> str:
    directory = tmp_path / "configs"
    directory.mkdir()
    text = f"""\
        name: {name}
        schedule: "* * * * *"
        source: {{type: generate, rows: 5, columns: {{id: {{kind: sequence}}}}}}
        sink: {{type: parquet, path: out/{name}}}
        thresholds: {{background: 1}}
    """
    (directory / f"{name}.yaml").write_text(textwrap.dedent(text))
    return str(directory)


def _fired(job: str) -> list:
    return sorted(queue().store.list_runs(job=job, limit=1000), key=lambda r: r.scheduled_for or 0)


def test_a_run_completes_exactly_and_each_slot_fires_once_across_a_failover(
    ha, ha_workers, job_file, table, tmp_path, cli
):
    configs = _scheduled(tmp_path, "tick")
    # One real second is 20 scheduler seconds: a slot every 3 s.
    schedule = {"ETL_SCHEDULER_CLOCK": f"{time.time():.3f},20", "ETL_SCHEDULER_LEASE_SECONDS": "2"}
    ha_workers.start(2, concurrency=2, args=("--configs", configs), **schedule)
    run_id = submit(cli, job_file(ROWS, CHUNK, "[{type: sleepy, seconds: 0.8}]", sink=_sink(table)))
    wait_for(lambda: run_record(run_id).chunks_done >= 4 and _fired("tick"), 90, "four chunks done and a slot fired")
    assert run_record(run_id).chunks_done < CHUNKS - 4  # well before the end
    assert "not confirmed by" not in ha_workers.all_logs()  # every change so far is on the replica

    old = ha.kill_primary()
    fired_before = len(_fired("tick"))
    listed = cli("runs", "--limit", "1")  # a command started mid-failover waits it out
    assert listed.returncode == 0, listed.stderr
    ha.wait_failover(old)

    run = wait_finished(run_id, timeout=120)
    assert run.state == "completed", run.error
    assert (run.chunks_done, run.rows_written) == (CHUNKS, ROWS)
    assert _rows(table) == (ROWS, ROWS)
    wait_for(lambda: len(_fired("tick")) >= fired_before + 2, 60, "two slots fired after the failover")
    slots = [r.scheduled_for for r in _fired("tick")]
    assert len(slots) == len(set(slots)), slots  # no slot fired twice, across the failover
    assert all(s % 60 == 0 for s in slots)
    for fired in _fired("tick")[:-1]:
        assert wait_finished(fired.id, timeout=60).state == "completed"
    logs = ha_workers.all_logs()
    assert f"Redis at {ha.url(db=0)}: attempt 1 failed" in logs  # calls in flight rode the failover out


def test_changes_a_failover_loses_run_again_and_the_ledger_keeps_the_target_exact(
    ha, ha_workers, job_file, table, cli, monkeypatch
):
    """Replication is cut, the primary acknowledges more completions, and dies: the promoted
    replica has the run as it was at the cut. Those chunks (and any claimed since) run again;
    their rows are in PostgreSQL already, so the ledger makes each new attempt write nothing."""
    monkeypatch.setenv("ETL_REDIS_WAIT_REPLICAS", "0")
    ha_workers.start(2, concurrency=2, ETL_REDIS_WAIT_REPLICAS="0")
    run_id = submit(cli, job_file(ROWS, CHUNK, "[{type: sleepy, seconds: 0.8}]", sink=_sink(table)))
    wait_for(lambda: run_record(run_id).chunks_done >= 3, 90, "three chunks done")

    primary = ha.cut_replication()
    at_cut = run_record(run_id).chunks_done
    wait_for(lambda: run_record(run_id).chunks_done >= at_cut + 3, 60, "three more chunks done on the primary alone")
    at_kill = _done_on(ha, primary, run_id)
    ha.kill_primary()
    killed_at = _pg_now()
    ha.wait_failover(primary)

    after = run_record(run_id).chunks_done
    assert after < at_kill, "the failover lost no completion: nothing was provoked"
    with psycopg.connect(DSN) as con:
        (in_ledger,) = con.execute(
            "SELECT count(*) FROM _etl.ledger WHERE run_id = %s AND target = %s AND written_at <= to_timestamp(%s)",
            [run_id, table, killed_at],
        ).fetchone()
    assert in_ledger > after  # PostgreSQL holds chunks the store has forgotten were done

    run = wait_finished(run_id, timeout=120)
    assert run.state == "completed", run.error
    assert (run.chunks_done, run.rows_written) == (CHUNKS, ROWS)  # each chunk counted once
    assert _rows(table) == (ROWS, ROWS)
    with psycopg.connect(DSN) as con:
        (ledger,) = con.execute(
            "SELECT count(*) FROM _etl.ledger WHERE run_id = %s AND target = %s", [run_id, table]
        ).fetchone()
    assert ledger == CHUNKS


def _done_on(ha: RedisHA, port: int, run_id: str) -> int:
    """The run's chunks done as the Redis on ``port`` has them: its record's figure plus its
    counter's (etl/store/base.py, COUNTED)."""
    client, prefix = ha.client(port), os.environ["ETL_QUEUE_NAME"]
    record = json.loads(client.get(f"{prefix}:run:{run_id}"))
    return record["chunks_done"] + int(client.get(f"{prefix}:count:{run_id}:chunks_done") or 0)


def test_two_attempts_with_the_same_fencing_token_write_the_chunk_once(table):
    """A failover can undo a claim, and the chunk be claimed again with the same token while
    the first attempt still runs. The fence can't tell them apart; the ledger's key can."""
    batch = pa.record_batch({"id": pa.array(range(1_000), pa.int64())})
    first_copying, second_done = threading.Event(), threading.Event()

    def held_back():  # the first half, then a pause in the middle of the COPY
        yield batch.slice(0, 500)
        first_copying.set()
        assert second_done.wait(30)
        yield batch.slice(500)

    def sink():
        stage = make_stage("sink", {"type": "postgres", "dsn": DSN, "table": table}, run_id="run-ft")
        stage.prepare()
        return stage

    first, second = sink(), sink()
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(first.write(Chunk(0, attempt=2), held_back())))
    try:
        thread.start()
        assert first_copying.wait(30)  # the first attempt found no ledger row, and is copying
        assert second.write(Chunk(0, attempt=2), iter([batch])) == 1_000
        second_done.set()
        thread.join(30)
        assert outcome == [1_000]  # the first found the chunk written, and rolled its copy back
        assert _rows(table) == (1_000, 1_000)
    finally:
        second_done.set()
        first.close()
        second.close()


def test_a_tls_sentinel_set_carries_the_run_store_and_the_queue(tmp_path):
    """``rediss+sentinel://``: TLS to the sentinels and to the primary, checked against the CA
    that ``?ssl_ca_certs=`` names; without it, the certificate is refused, and the error says so."""
    from etl.errors import TransientError
    from etl.kv import RedisKV
    from etl.queue import Queue
    from etl.settings import queue_settings

    with RedisHA(tmp_path / "tls", tls=True, sentinels=1) as ha:
        settings = queue_settings({"ETL_QUEUE_URL": ha.url(db=2), "ETL_QUEUE_NAME": "tlsq"})
        queue = Queue(settings)
        queue.store.kv.atomic(lambda tx: tx.put("tlsq:probe", {"ok": True}), ["tlsq:probe"])
        assert queue.store.kv.get("tlsq:probe") == {"ok": True}
        queue.send("etl.plan", "run-tls")
        assert queue.huey.deserialize_task(queue.huey.storage.dequeue()).args == ("run-tls",)
        queue.close()

        unchecked = ha.url(db=2).split("?")[0]  # the system's CAs don't know this one
        kv = RedisKV(queue_settings({"ETL_QUEUE_URL": unchecked, "ETL_REDIS_RETRY_SECONDS": "0"}))
        with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
            kv.get("tlsq:probe")
        kv.close()
