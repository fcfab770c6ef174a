"""What someone who can write to the store (Redis) can and cannot make a worker do, and secrets
that never show: everything a worker acts on is signed with ETL_SECRET_KEY, a process without
the queue's key refuses to work it, ``--set`` and parameter secrets are masked in every view, and
a driver's error quoting a password is scrubbed before it is logged or stored.

Most cases drive an :class:`~etl.executor.Executor` in this process over a real Redis (the very
code a worker runs, one message at a time, with no consumer to race); a few run real `etl`
processes end to end.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import time
import uuid
from pathlib import Path

import pytest

from tests.background.conftest import queue, wait_finished, wait_for

KEY = "a-long-key-shared-by-the-tests-workers"


def keyed(secret: str | None = KEY):
    """A queue of this test's environment (its Redis and queue name) with ``secret`` as its
    ETL_SECRET_KEY: what a worker or submitter started with that key has."""
    from etl.queue import Queue
    from etl.settings import queue_settings

    env = {k: v for k, v in os.environ.items() if k != "ETL_SECRET_KEY"}
    return Queue(queue_settings({**env, **({"ETL_SECRET_KEY": secret} if secret else {})}))


def executor(q):
    from etl.executor import Executor

    return Executor(q, "test-worker:1:abcd", lease=30.0)


def redis_client():
    import redis

    return redis.Redis.from_url(os.environ["ETL_QUEUE_URL"])


def rewrite(q, key: str, **changes) -> None:
    """Change a stored document behind the store's back, as a writer to Redis can."""
    client = redis_client()
    doc = json.loads(client.get(key))
    doc.update(changes)
    client.set(key, json.dumps(doc))


def csv_job(tmp_path: Path, name: str = "sec", rows: int = 6) -> Path:
    """A CSV → JSONL job whose source holds ``rows`` rows, in chunks of two."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "in.csv").write_text("id,v\n" + "".join(f"{i},{i * 10}\n" for i in range(rows)))
    job = tmp_path / f"{name}.yaml"
    job.write_text(
        f"name: {name}\nsource: {{type: csv, path: {data}/in.csv}}\nsink: {{type: jsonl, path: out/{name}}}\n"
        "chunk_size: 2\nthresholds: {background: 1}\nretry: {attempts: 2, backoff: 0s}\n"
    )
    return job


def secret_file(tmp_path: Path) -> Path:
    """A file elsewhere on the worker that no job reads."""
    path = tmp_path / "elsewhere" / "secret.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("id,v\n" + "".join(f"{900 + i},{i}\n" for i in range(7)))
    return path


def written_ids(directory: Path) -> list[int]:
    ids = []
    for part in sorted(directory.rglob("*.jsonl")) if directory.exists() else []:
        ids += [json.loads(line)["id"] for line in part.read_text().splitlines() if line]
    return ids


def submitted(q, job: Path) -> str:
    """Submit ``job`` as `etl run --background` does (counted and planned by the submitter)."""
    from etl import api

    return api.submit(api.plan(job), queue=q).id


def work(ex, run_id: str) -> None:
    """Take the run's messages as a worker would: plan, then every chunk (the last one
    finalizes), until the run has finished."""
    ex.plan(run_id)
    for _ in range(20):
        run = ex.store.get_run(run_id)
        if run.finished:
            return
        for chunk in ex.store.get_chunks(run_id, run.chunks_total):
            if chunk.state in ("pending", "queued", "retrying"):
                if chunk.state == "pending":
                    ex.store.dispatch(run_id, run.chunks_total)
                ex.chunk(run_id, chunk.index)
    raise AssertionError(f"run {run_id} did not finish")


# -- 1. everything a worker acts on is signed ------------------------------------------------


def test_a_signed_run_completes_with_exactly_its_rows(queue_env, tmp_path):
    q = keyed()
    run_id = submitted(q, csv_job(tmp_path))
    work(executor(q), run_id)
    run = q.store.get_run(run_id)
    assert run.state == "completed", run.error
    assert sorted(written_ids(tmp_path / "out/sec")) == list(range(6))
    chunks = q.store.get_chunks(run_id)
    assert run.plan_signature and all(c.signature and c.done_signature for c in chunks)


def test_a_chunk_rewritten_to_read_another_file_is_refused_before_anything_is_read(queue_env, tmp_path):
    q = keyed()
    run_id = submitted(q, csv_job(tmp_path))
    secret = secret_file(tmp_path)
    chunk = q.store.get_chunk(run_id, 0)
    rewrite(q, q.store._chunk_key(run_id, 0), args={**chunk.args, "path": str(secret), "start": 5, "end": 10_000})
    work(executor(q), run_id)
    run = q.store.get_run(run_id)
    assert run.state == "failed" and run.error_chunk == 0
    assert "chunk 0's descriptor" in run.error and "not signed with this worker's ETL_SECRET_KEY" in run.error
    assert "nothing was read or written" in run.error
    assert not any(i >= 900 for i in written_ids(tmp_path / "out/sec")), "the other file was never read"
    assert q.store.get_chunk(run_id, 0).attempts == 1, "refused, not retried"


def test_a_signed_chunk_copied_from_another_run_is_refused(queue_env, tmp_path):
    q = keyed()
    job = csv_job(tmp_path)
    first, second = submitted(q, job), submitted(q, job)
    client = redis_client()
    # The second run's chunk 1 replaced with the first run's chunk 1, signature and all.
    doc = json.loads(client.get(q.store._chunk_key(first, 1)))
    client.set(q.store._chunk_key(second, 1), json.dumps({**doc, "run_id": second}))
    work(executor(q), second)
    run = q.store.get_run(second)
    assert run.state == "failed" and run.error_chunk == 1
    assert "chunk 1's descriptor" in run.error


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shared", {"schema": "AAAA", "columns": ["id"]}),
        ("window", {"cursor": "id", "low": None, "high": {"type": "int", "value": 2}}),
        ("chunks_total", 1),
    ],
)
def test_a_rewritten_plan_fails_the_run_before_any_chunk_is_read(queue_env, tmp_path, field, value):
    q = keyed()
    run_id = submitted(q, csv_job(tmp_path))
    rewrite(q, q.store._run_key(run_id), **{field: value})
    work(executor(q), run_id)
    run = q.store.get_run(run_id)
    assert run.state == "failed" and "is not signed with this worker's ETL_SECRET_KEY" in run.error
    # A window where the run had none fails the record's check first (it covers a given window).
    what = "the run's record" if field == "window" else "the run's plan (its shared data, window or number of chunks)"
    assert what in run.error
    assert written_ids(tmp_path / "out/sec") == []


def test_a_window_given_with_a_run_is_part_of_its_signature(queue_env, tmp_path):
    from etl import api

    q = keyed()
    record = api.submit(csv_job(tmp_path), queue=q, window={"cursor": "id", "low": None, "high": None})
    rewrite(q, q.store._run_key(record.id), window={"cursor": "id", "low": None, "high": {"type": "int", "value": 1}})
    executor(q).plan(record.id)
    run = q.store.get_run(record.id)
    assert run.state == "failed" and "the run's record" in run.error


def test_chunks_marked_done_without_being_written_are_not_finalized(queue_env, tmp_path):
    q = keyed()
    run_id = submitted(q, csv_job(tmp_path))
    ex = executor(q)
    ex.plan(run_id)
    ex.chunk(run_id, 0)  # one chunk really written
    client = redis_client()
    total = q.store.get_run(run_id).chunks_total
    assert total >= 2
    for index in range(1, total):  # the others marked done in the store, as if written
        key = q.store._chunk_key(run_id, index)
        client.set(key, json.dumps({**json.loads(client.get(key)), "state": "done", "rows_written": 2}))
    client.set(q.store._count_key(run_id, "chunks_done"), total)  # the run's count of chunks done
    ex.finalize(run_id)
    run = q.store.get_run(run_id)
    assert run.state == "failed"
    assert "finalizing refused" in run.error and "chunk 1's completion" in run.error
    written = written_ids(tmp_path / "out/sec")
    assert len(written) in (0, q.store.get_chunk(run_id, 0).rows_written), "nothing beyond chunk 0 is there"


def test_without_a_key_nothing_is_checked(queue_env, tmp_path):
    """What the key buys: the same rewrite, on a queue without one, reads the other file."""
    q = keyed(None)
    run_id = submitted(q, csv_job(tmp_path))
    secret = secret_file(tmp_path)
    chunk = q.store.get_chunk(run_id, 0)
    rewrite(q, q.store._chunk_key(run_id, 0), args={**chunk.args, "path": str(secret), "start": 5, "end": 10_000})
    work(executor(q), run_id)
    assert any(i >= 900 for i in written_ids(tmp_path / "out/sec"))


def test_a_keyed_worker_refuses_a_chunk_pointed_at_another_file(cli, workers, queue_env, tmp_path):
    """The probe's case end to end: `etl run --background` with the key, a queued chunk's args
    rewritten in Redis to a file elsewhere on the worker, a real worker with the key."""
    job = csv_job(tmp_path)
    result = cli("run", str(job), "--background", env={"ETL_SECRET_KEY": KEY})
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1]
    q = keyed()
    chunk = q.store.get_chunk(run_id, 0)
    rewrite(q, q.store._chunk_key(run_id, 0), args={**chunk.args, "path": str(secret_file(tmp_path)), "end": 10_000})
    workers.start(1, ETL_SECRET_KEY=KEY)
    run = wait_finished(run_id, timeout=60)
    assert run.state == "failed" and "chunk 0's descriptor" in run.error
    assert not any(i >= 900 for i in written_ids(tmp_path / "out/sec"))


# -- 4. a process without the queue's key refuses to work it ---------------------------------


def test_a_worker_without_the_key_refuses_to_start_on_a_keyed_queue(cli, workers, queue_env, tmp_path):
    keyed().check_key()  # a process with the key used the queue: its key's id is recorded
    plain, other = workers.start(1)[0], workers.start(1, ETL_SECRET_KEY="another-key")[0]
    assert plain.wait(30) == 2 and other.wait(30) == 2
    assert "has none. Set the same ETL_SECRET_KEY here" in workers.log(plain)
    assert "keyed with another ETL_SECRET_KEY" in workers.log(other)
    assert "Traceback" not in workers.log(plain) + workers.log(other)
    # A submitter without the key is refused too, before it records anything.
    result = cli("run", str(csv_job(tmp_path)), "--background")
    assert result.returncode == 2 and "ETL_SECRET_KEY" in result.stderr
    assert queue().store.list_runs() == []
    result = cli("retry", "20261128-203731-be808a")  # refused before it looks the run up
    assert result.returncode == 2 and "this process has none" in result.stderr


def test_a_worker_without_the_key_stops_when_the_queue_becomes_keyed(workers, queue_env):
    plain = workers.start(1)[0]
    wait_for(lambda: queue().store.workers(ttl=10), 30, "the worker to register")
    keyed().check_key()
    assert plain.wait(30) == 2
    assert "stopping: queue" in workers.log(plain)


def test_an_in_process_run_without_the_key_is_refused_on_a_keyed_store(cli, tmp_path, monkeypatch):
    for name in ("ETL_QUEUE_URL", "REDIS_HOST"):
        monkeypatch.delenv(name, raising=False)
    job = csv_job(tmp_path)
    assert cli("run", str(job), "--sync", env={"ETL_SECRET_KEY": KEY}).returncode == 0
    result = cli("run", str(job), "--sync")
    assert result.returncode == 2, result.stderr
    assert "is keyed" in result.stderr and "Traceback" not in result.stderr


class _Payload:
    """A pickle that runs code when it is loaded: what a forged queue message can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_with_a_secret_key_a_forged_message_is_never_unpickled(workers, queue_env, tmp_path):
    client = redis_client()
    key = f"huey.redis.{queue_env['ETL_QUEUE_NAME']}"
    signed = workers.start(1, ETL_SECRET_KEY=KEY)[0]
    wait_for(lambda: queue().store.workers(ttl=10), 30, "the worker to register")
    client.lpush(key, pickle.dumps(_Payload(tmp_path / "ran-with-key")))
    wait_for(lambda: client.llen(key) == 0, 20, "a worker to take the message")
    time.sleep(1)
    assert not (tmp_path / "ran-with-key").exists()
    assert "Signature" in workers.log(signed) or "Separator" in workers.log(signed)
    signed.terminate()
    signed.wait(20)
    # A worker without the key would unpickle it: it refuses to start on this queue instead.
    client.lpush(key, pickle.dumps(_Payload(tmp_path / "ran-without-key")))
    assert workers.start(1)[0].wait(30) == 2
    assert not (tmp_path / "ran-without-key").exists()


def test_with_a_secret_key_a_run_record_written_by_someone_else_is_not_executed(workers, job_file, tmp_path):
    import etl
    from etl.store import RunRecord

    job = etl.load_job(job_file(1_000, 500, '[{type: crash, on_id: 1, log: "' + str(tmp_path / "ran.log") + '"}]'))
    queue().store.create_run(RunRecord(id="forged-1", job=job.name, job_text=job.text, job_file=job.file))
    queue().send("etl.plan", "forged-1")
    workers.start(1, ETL_SECRET_KEY=KEY)
    run = wait_finished("forged-1", timeout=30)
    assert run.state == "failed"
    assert "not signed with this worker's ETL_SECRET_KEY" in run.error
    assert not (tmp_path / "ran.log").exists()


# -- 2. --set and parameter secrets are masked in every view ----------------------------------


def test_set_and_param_secrets_are_masked_in_every_view(cli, tmp_path, monkeypatch):
    import httpx

    from etl import api
    from etl.web.app import create_app

    for name in ("ETL_QUEUE_URL", "REDIS_HOST"):
        monkeypatch.delenv(name, raising=False)
    table = f"sec_{uuid.uuid4().hex[:8]}"
    job = tmp_path / "masked.yaml"
    job.write_text(
        "name: masked\nparams: {db_password: {type: string}, day: {type: string}}\n"
        "source: {type: generate, rows: 10}\nsink: {type: jsonl, path: out/masked}\n"
    )
    dsn = "postgresql://postgres:S3cretPw77@127.0.0.1:5432/test"
    sink = f'sink={{type: postgres, dsn: "{dsn}", table: public.{table}, mode: replace}}'
    result = cli("run", str(job), "--sync", "--set", sink, "-p", "db_password=PaRam55Pw", "-p", "day=2026-01-02")
    assert result.returncode == 0, result.stderr
    run_id = api.list_runs(job="masked")[0].id
    try:
        shown = {
            "etl runs --json": cli("runs", "--json").stdout,
            "etl status --json": cli("status", run_id, "--json").stdout,
        }
        app = create_app(api.open_queue())

        async def get(*paths: str) -> list[str]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                return [(await client.get(path)).text for path in paths]

        shown["/api/runs"], shown["/api/runs/{id}"] = asyncio.run(get("/api/runs", f"/api/runs/{run_id}"))
        for where, text in shown.items():
            assert "S3cretPw77" not in text and "PaRam55Pw" not in text, where
            data = json.loads(text)
            run = next(r for r in data if r["id"] == run_id) if isinstance(data, list) else data
            assert run["params"] == {"db_password": "***", "day": "2026-01-02"}, where
            assert run["sets"] == [
                f'sink={{"type": "postgres", "dsn": "postgresql://postgres:***@127.0.0.1:5432/test", '
                f'"table": "public.{table}", "mode": "replace"}}'
            ], where
    finally:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as con:
            con.execute(f"DROP TABLE IF EXISTS public.{table}")


# -- 3. a driver's error that quotes a password is scrubbed ----------------------------------


@pytest.mark.parametrize("password", ["Bad%zzEnvPw96", "Bad EnvPw96", "Bad@EnvPw96"])
def test_a_malformed_password_never_reaches_a_log_a_record_or_a_view(cli, tmp_path, monkeypatch, password):
    from etl import api

    for name in ("ETL_QUEUE_URL", "REDIS_HOST"):
        monkeypatch.delenv(name, raising=False)
    job = tmp_path / "pg.yaml"
    job.write_text(
        "name: pg\nsource: {type: generate, rows: 10}\n"
        "sink: {type: postgres, dsn: 'postgresql://postgres:${PGPASS}@127.0.0.1:5432/test', table: public.never}\n"
    )
    result = cli("run", str(job), "--sync", env={"PGPASS": password})
    assert result.returncode == 1, result.stderr
    run = api.list_runs(job="pg")[0]
    log = (tmp_path / ".etl" / "runs" / run.id / "run.log").read_text()
    status = cli("status", run.id, "--json").stdout
    pieces = [password, *(p for p in password.replace("%", " ").replace("@", " ").split() if len(p) > 4)]
    for where, text in {"stderr": result.stderr, "run.log": log, "the record": run.error, "status": status}.items():
        for piece in pieces:
            assert piece not in text, f"{where} shows {piece!r}: {text}"
    assert "dsn" in run.error or "***" in run.error, run.error  # said, without the password
    assert "Traceback" in log, "the run log keeps its traceback, scrubbed"


def test_a_jobs_secrets_are_scrubbed_from_every_error_and_log_line(write):
    """The rule, in this process: what :func:`etl.logsetup.hide_job_secrets` finds in a job."""
    import io

    from loguru import logger

    from etl import logsetup
    from etl.errors import TransientError, describe
    from etl.jobs import load_job

    job = load_job(
        write(
            "scrub.yaml",
            """
            name: scrub
            params: {api_token: {type: string}, day: {type: string}}
            source: {type: generate, rows: 1}
            sink: {type: postgres, dsn: "host=db password=${KWPW} user=etl", table: public.t}
            notify:
              - {type: webhook, url: "https://hooks.example/x", headers: {Authorization: "${HOOKAUTH}"}}
              - {type: webhook, url: "https://u:Ur1Passw0rd@hooks.example/y"}
            """,
        ),
        params={"api_token": "Par4mTok3n", "day": "Monday-is-no-secret"},
        env={"KWPW": "Kw0rdPass", "HOOKAUTH": "Bearer Hd4eR7oken"},
    )
    logsetup.hide_job_secrets(job)
    secrets = ["Kw0rdPass", "host=db password=Kw0rdPass user=etl", "Bearer Hd4eR7oken", "Par4mTok3n", "Ur1Passw0rd"]
    text = "connecting failed: " + " | ".join(secrets) + " on Monday-is-no-secret"
    stream = io.StringIO()
    logsetup.configure(stream=stream)
    try:
        logger.bind(run="r1").opt(exception=RuntimeError(text)).error("{}", text)
    finally:
        logger.remove()
    for shown in (describe(RuntimeError(text)), str(TransientError(text)), stream.getvalue()):
        assert not any(secret in shown for secret in secrets), shown
        assert "***" in shown and "Monday-is-no-secret" in shown
