"""The headline sync, end to end from the command line: configs/forecast-sync.yaml, BigQuery (the
emulator) → PostgreSQL, in the foreground and in the background with 2 workers and progress."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest

from tests.background.conftest import wait_finished
from tests.conftest import ROOT
from tests.contract.cases_postgres import DSN

EXAMPLE = ROOT / "configs" / "forecast-sync.yaml"
ROWS = 12_000
SCHEMA = "etl_bq_sync"


def pg(sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as con:
        cur = con.execute(sql)
        return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def forecasts(bq_emulator):
    """``forecasts.daily`` in the emulator, as the example job expects it."""
    from tests import bq_emulator as emulators

    client = emulators.client(bq_emulator)
    client.create_dataset("forecasts", exists_ok=True)
    client.query(
        f"""
        CREATE OR REPLACE TABLE forecasts.daily AS
        SELECT x AS id,
               CONCAT('ds-', CAST(MOD(x, 3) AS STRING)) AS dataset_id,
               IF(MOD(x, 4) = 0, 'staging', 'production') AS environment,
               IF(MOD(x, 5) = 0, 'outbound', 'inbound') AS volume_type,
               DATE_ADD(DATE '2026-01-01', INTERVAL MOD(x, 90) DAY) AS ds,
               x * 1.25 AS forecast,
               x * 1.0 AS lower_bound,
               x * 1.5 AS upper_bound,
               TIMESTAMP '2026-11-01 12:00:00+00' AS updated_at
        FROM UNNEST(GENERATE_ARRAY(1, {ROWS})) AS x
        """
    ).result()
    pg(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    yield client
    pg(f"DROP SCHEMA {SCHEMA} CASCADE")
    client.delete_dataset("forecasts", delete_contents=True)
    client.close()


def expected(client, dataset_id: str, start: str, end: str) -> tuple[list[int], int]:
    """The ids the sync must load, and the days they span (one chunk each)."""
    rows = client.query(
        f"SELECT id, ds FROM forecasts.daily WHERE dataset_id = '{dataset_id}' AND environment = 'production' "
        f"AND volume_type = 'inbound' AND ds BETWEEN DATE '{start}' AND DATE '{end}' ORDER BY id"
    ).result()
    ids, days = zip(*[(r[0], r[1]) for r in rows], strict=True)
    return list(ids), (max(days) - min(days)).days + 1


def test_the_forecast_sync_runs_in_the_foreground(cli, bigquery, forecasts):
    table = f"{SCHEMA}.fg_{uuid.uuid4().hex[:8]}"
    args = ["run", str(EXAMPLE), "-p", "dataset_id=ds-1", "-p", "start_date=2026-02-01", "-p", "end_date=2026-02-20"]
    args += ["--set", f"sink.table={table}", "--set", "thresholds.background=1000000", "--json"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    want, days = expected(forecasts, "ds-1", "2026-02-01", "2026-02-20")
    assert summary["state"] == "completed"
    assert summary["chunks_total"] == days  # one a day
    assert summary["rows_written"] == len(want) > 0
    assert [r[0] for r in pg(f"SELECT id FROM {table} ORDER BY id")] == want
    types = dict(
        pg(f"SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{table.split('.')[1]}'")
    )
    assert types["ds"] == "date" and types["updated_at"] == "timestamp with time zone"
    first = pg(f"SELECT ds, forecast, updated_at FROM {table} ORDER BY id LIMIT 1")[0]
    assert first[0] >= dt.date(2026, 2, 1)
    assert first[2] == dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    # The bytes processed of the queries are in the log; running it again merges: no duplicates.
    assert "processed" in result.stderr
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert pg(f"SELECT count(*) FROM {table}")[0][0] == len(want)


def test_the_forecast_sync_runs_in_the_background_with_progress(cli, bigquery, forecasts, workers, queue_env):
    table = f"{SCHEMA}.bg_{uuid.uuid4().hex[:8]}"
    workers.start(2)
    result = cli(
        "run",
        str(EXAMPLE),
        "-p",
        "dataset_id=ds-2",
        "-p",
        "start_date=2026-01-01",
        "-p",
        "end_date=2026-03-31",
        "--set",
        f"sink.table={table}",
        "--set",
        "thresholds.background=100",
        "--wait",
    )
    assert result.returncode == 0, result.stderr + workers.all_logs()
    run_id = re.search(r"queued run (\S+)", result.stderr)[1]
    run = wait_finished(run_id)
    want, days = expected(forecasts, "ds-2", "2026-01-01", "2026-03-31")
    assert run.state == "completed" and run.rows_written == len(want) > 0
    assert run.chunks_total == days
    assert [r[0] for r in pg(f"SELECT id FROM {table} ORDER BY id")] == want
    # Progress was shown as it went: chunk counts and rows, to the end.
    lines = [line for line in result.stderr.splitlines() if "chunks" in line]
    assert lines[-1].startswith("completed") and f"chunks {days}/{days}" in lines[-1]
    assert f"{len(want):,}/{len(want):,} rows" in lines[-1]
    # Both workers took chunks.
    assert all(run_id in workers.log(proc) for proc in workers.procs)


def test_a_query_counted_by_the_cli_is_not_run_again_by_the_run(cli, bigquery, forecasts, tmp_path):
    job = tmp_path / "query.yaml"
    job.write_text(
        "name: query-once\n"
        "source: {type: bigquery, project: test-project, query: 'SELECT id FROM forecasts.daily WHERE id <= 500'}\n"
        "sink: {type: parquet, path: out/q}\n"
    )
    bigquery.create_dataset("_etl_staging", exists_ok=True)
    before = {t.table_id for t in bigquery.list_tables("_etl_staging")}
    result = cli("run", str(job), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows_written"] == 500
    assert len({t.table_id for t in bigquery.list_tables("_etl_staging")} - before) == 1
