"""In-process runs are recorded like queued ones: `etl runs`, `etl status`, the dashboard's API and
`/metrics` show them, `concurrency:` counts them, and a store that can't be reached is one clear
line (on the embedded store of each test's own ETL_HOME, and a Redis nobody listens on)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from etl import api

JOB = """\
name: recorded
source: {type: generate, rows: 3000, columns: {id: {kind: sequence}}}
sink: {type: jsonl, path: out/recorded}
chunk_size: 1000
"""


def write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "recorded.yaml"
    path.write_text(JOB + extra)
    return path


def test_a_run_in_process_is_listed_and_its_chunks_recorded(cli, tmp_path):
    result = cli("run", str(write(tmp_path)), "--sync", "--json")
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    listed = json.loads(cli("runs", "--json").stdout)
    assert [(r["id"], r["state"], r["driver"], r["rows_written"]) for r in listed] == [
        (run_id, "completed", "process", 3000)
    ]
    status = json.loads(cli("status", run_id, "--json").stdout)
    assert [(c["index"], c["state"], c["rows_written"], c["attempts"]) for c in status["chunks"]] == [
        (0, "done", 1000, 1),
        (1, "done", 1000, 1),
        (2, "done", 1000, 1),
    ]
    assert "chunk 2 done" in result.stderr and f"run={run_id}" in result.stderr


def test_the_dashboard_and_the_metrics_see_a_run_in_process(cli, tmp_path):
    from etl.web.app import create_app

    result = cli("run", str(write(tmp_path)), "--sync", "--json")
    run_id = json.loads(result.stdout)["run_id"]

    async def dashboard() -> tuple[list, str]:
        transport = httpx.ASGITransport(create_app(api.open_queue()))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            runs = (await client.get("/api/runs")).json()
            return runs, (await client.get("/metrics")).text

    runs, metrics = asyncio.run(dashboard())
    assert [(r["id"], r["state"], r["fraction"]) for r in runs] == [(run_id, "completed", 1.0)]
    assert 'etl_runs{state="completed"} 1.0' in metrics


def test_concurrency_counts_runs_in_process(cli, tmp_path):
    job = write(tmp_path, "concurrency: 1\n")
    queued = api.submit(job)  # waiting: no worker takes it up here
    result = cli("run", str(job), "--sync")
    assert result.returncode == 2
    assert f"allows 1 unfinished run(s) at a time (concurrency: 1) and {queued.id} is still unfinished" in result.stderr
    assert "Traceback" not in result.stderr
    assert [r.id for r in api.list_runs(job="recorded")] == [queued.id], "the refused run is not recorded"


def test_a_run_store_that_cant_be_reached_is_one_line_and_exit_1(cli, tmp_path):
    result = cli("run", str(write(tmp_path)), "--sync", env={"ETL_QUEUE_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 1
    assert "the run store (redis://127.0.0.1:1/0) can't be reached, and in-process runs are recorded there too" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out/recorded").exists(), "the run did not start"


MERGE = """\
name: merged
source: {type: generate, rows: 40000, columns: {id: {kind: sequence}}}
transforms: [{type: cast, columns: {id: int16}}]
sink: {type: duckdb, path: out/target.duckdb, table: items, mode: merge, key: [id]}
chunk_size: 10000
"""


def duckdb_tables(path: Path) -> set[str]:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def failed_merge(cli, tmp_path: Path) -> str:
    """A merge run that fails at chunk 3 (id 32768 is no int16), keeping its staging table."""
    job = tmp_path / "merged.yaml"
    job.write_text(MERGE)
    result = cli("run", str(job), "--sync")
    assert result.returncode == 1, result.stderr
    run = api.list_runs(job="merged")[0]
    assert run.state == "failed" and run.error_chunk == 3
    assert f"`etl retry {run.id}`" in result.stderr and f"`etl cancel {run.id}` drops it" in result.stderr
    staged = {t for t in duckdb_tables(tmp_path / "out/target.duckdb") if t.startswith("_etl_stage_items")}
    assert len(staged) == 1, "the failed run kept its staging table, for etl retry"
    assert f'it keeps what its sink staged (the table "main"."{staged.pop()}" in out/target.duckdb)' in result.stderr
    return run.id


def test_etl_clean_drops_what_a_failed_run_kept_before_deleting_it(cli, tmp_path):
    run_id = failed_merge(cli, tmp_path)
    result = cli("clean", "--state", "failed")
    assert result.returncode == 0, result.stderr
    assert "deleted 1 failed run(s)" in result.stdout
    assert not any(t.startswith("_etl_stage_items") for t in duckdb_tables(tmp_path / "out/target.duckdb"))
    assert "items" not in duckdb_tables(tmp_path / "out/target.duckdb"), "the target was never created"
    assert api.list_runs(job="merged") == [], f"{run_id} is gone"


def test_retention_cancels_a_failed_run_beyond_the_kept_ones_so_its_staging_is_dropped(cli, tmp_path):
    from etl.executor import Executor

    run_id = failed_merge(cli, tmp_path)
    queue = api.open_queue()
    Executor(queue, "test-worker", keep_runs=0)._retain()
    assert not any(t.startswith("_etl_stage_items") for t in duckdb_tables(tmp_path / "out/target.duckdb"))
    assert queue.store.get_run(run_id) is None, "cancelled, its staging dropped, then deleted"
