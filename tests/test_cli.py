"""The etl command as a user runs it: exit codes, output, no tracebacks for 1 and 2."""

from __future__ import annotations

import json

import duckdb
import pytest

JOB = """\
name: small
params:
  rows: {type: integer, default: 300}
source: {type: generate, rows: "{{ params.rows }}", seed: 1}
transforms:
  - {type: cast, columns: {forecast: "decimal(12, 2)"}}
sink:
  type: duckdb
  path: out/small.duckdb
  table: forecasts
chunk_size: 100
"""


def count_rows(path, table="forecasts") -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_run_succeeds_with_progress_lines(cli, write, tmp_path):
    job = write("job.yaml", JOB)
    result = cli("run", str(job))
    assert result.returncode == 0, result.stderr
    assert "3/3 chunks · 300/300 rows (100.0%)" in result.stderr
    assert "completed: 300 rows written" in result.stderr
    assert count_rows(tmp_path / "out/small.duckdb") == 300
    logs = list((tmp_path / ".etl/runs").glob("*/run.log"))
    assert len(logs) == 1 and "completed" in logs[0].read_text()


def test_params_and_overrides_reach_the_job(cli, write, tmp_path):
    job = write("job.yaml", JOB)
    result = cli("run", str(job), "-p", "rows=250", "--set", "sink.table=other", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "completed" and summary["rows_written"] == 250
    assert summary["started_at"].endswith("Z")
    assert count_rows(tmp_path / "out/small.duckdb", "other") == 250


def test_json_log_lines(cli, write):
    job = write("job.yaml", JOB)
    result = cli("run", str(job), "--log-format", "json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    chunk_lines = [line for line in lines if "chunk" in line]
    assert [line["chunk"] for line in chunk_lines] == [0, 1, 2]
    assert all(line["job"] == "small" and line["run"] for line in lines)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "missing.yaml"], "missing.yaml: no such job file"),
        (["run", "job.yaml", "-p", "rows=many"], "-p rows=many: params.rows: 'many' is not an integer"),
        (["run", "job.yaml", "-p", "rowz=5"], "unknown parameter 'rowz'; did you mean \"rows\"?"),
        (["run", "job.yaml", "-p", "rows"], "expected name=value"),
        (["run", "job.yaml", "--set", "sink.tabel=x"], 'did you mean "table"?'),
        (["run", "job.yaml", "--log-format", "xml"], "'xml' is not one of 'text', 'json'"),
        (["runn", "job.yaml"], "No such command 'runn'"),
        (["run", "job.yaml", "--set", "thresholds.max=10"], "holds 300 rows, more than the limit of 10"),
        (
            ["run", "job.yaml", "-p", "rows=" + "9" * 40, "--dry-run"],
            "would make 100,000,000,000,000,000,000,000,000,000,000,000,000 chunks, more than thresholds.max_chunks "
            "(100,000); raise chunk_size (e.g. --set chunk_size=100000000000000000000000000000000000)",
        ),
        (["run", "job.yaml", "--set", "thresholds.max_chunks=2"], "300 rows in chunks of 100 would make 3 chunks"),
    ],
)
def test_bad_config_or_usage_exits_2_without_a_traceback(cli, write, args, expected):
    write("job.yaml", JOB)
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_run_exits_1_without_a_traceback_and_keeps_it_in_the_log(cli, write, tmp_path):
    job = write("job.yaml", JOB.replace('"decimal(12, 2)"', '"decimal(3, 2)"'))
    result = cli("run", str(job))
    assert result.returncode == 1
    assert "failed at chunk 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert "details and traceback: " in result.stderr
    log = next((tmp_path / ".etl/runs").glob("*/run.log")).read_text()
    assert "Traceback" in log


def test_validate_reports_every_file(cli, write):
    good = write("good.yaml", JOB)
    bad = write(
        "bad.yaml", JOB.replace("table: forecasts", "tabel: forecasts").replace("chunk_size: 100", "chunk_size: 0")
    )
    result = cli("validate", str(good), str(bad))
    assert result.returncode == 2
    assert f"{good}: ok" in result.stdout
    assert f"{bad}:10: sink.tabel: unknown key" in result.stderr
    assert f"{bad}:11: chunk_size:" in result.stderr
    assert "1 of 2 job files invalid" in result.stderr


def test_validate_show_masks_secrets(cli, write):
    job = write("job.yaml", JOB.replace("out/small.duckdb", "${SECRET_DIR}/small.duckdb"))
    result = cli("validate", str(job), "--show", env={"SECRET_DIR": "hunter2"})
    assert result.returncode == 0, result.stderr
    assert "${SECRET_DIR}/small.duckdb" in result.stdout
    assert "hunter2" not in result.stdout
    assert "chunk_size: 100" in result.stdout


def test_dry_run_shows_the_plan_and_writes_nothing(cli, write, tmp_path):
    job = write("job.yaml", JOB)
    result = cli("run", str(job), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "300 rows in 3 chunks of up to 100" in result.stdout
    assert "rows 200-299" in result.stdout
    assert not (tmp_path / "out").exists()
    plan = json.loads(cli("run", str(job), "--dry-run", "--json").stdout)
    assert [c["rows"] for c in plan["chunks"]] == [100, 100, 100]
    assert plan["config"]["sink"]["table"] == "forecasts"


def test_plugins_lists_every_built_in_stage(cli):
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    stages = {(s["kind"], s["type"]): s for s in json.loads(result.stdout)}
    expected = (
        {("source", t) for t in ("generate", "csv", "jsonl", "parquet")}
        | {("transform", t) for t in ("rename", "select", "drop", "cast", "filter", "derive", "sql", "python")}
        | {("sink", t) for t in ("duckdb", "parquet", "csv", "jsonl")}
    )
    assert expected <= set(stages)
    duckdb_sink = stages[("sink", "duckdb")]
    assert duckdb_sink["plugin"] == "duckdb" and duckdb_sink["version"]
    assert {o["name"] for o in duckdb_sink["options"]} == {"path", "table", "mode", "key"}
    assert stages[("job_key", "notify")]["plugin"] == "notify"
    text = cli("plugins").stdout
    assert "generate" in text and "table" in text
    assert "job keys\n  notify " in text


def test_schema_prints_the_json_schema(cli):
    result = cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].endswith("2020-12/schema")
    assert "duckdb" in schema["properties"]["sink"]["discriminator"]["mapping"]


def test_version_and_help(cli):
    assert cli("--version").stdout.startswith("etl, version ")
    assert "run" in cli("--help").stdout


def test_runs_status_and_the_api_show_the_same_progress_for_one_run(cli, write):
    """``etl runs`` showed rows written where ``etl status`` showed rows read: both (and the
    dashboard's API) now show the same figures, rows read as "rows" and rows written as such."""
    job = write("job.yaml", JOB.replace("transforms:\n", 'transforms:\n  - {type: filter, expr: "id % 3 = 0"}\n'))
    result = cli("run", str(job), "--background")  # with no server: queued here, and worked by this command
    assert result.returncode == 0, result.stderr
    from_runs = json.loads(cli("runs", "--json").stdout)
    assert len(from_runs) == 1
    run_id = from_runs[0]["id"]

    status = cli("status", run_id)
    assert status.returncode == 0, status.stderr
    line = status.stdout.splitlines()[1]
    assert line.startswith("completed [##############################] 100.0% · 300/300 rows")
    assert "· 100 written" in line and "chunks 3/3" in line and "ETA" not in line
    listed = cli("runs")
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:7] == ["run", "job", "state", "done", "rows", "written", "chunks"]
    assert row.split()[:7] == [run_id, "small", "completed", "100.0%", "300", "100", "3/3"]

    figures = ("state", "fraction", "rows_total", "rows_read", "rows_written", "seconds", "rows_per_second")
    figures += ("eta_seconds", "chunks_done", "chunks_total", "retries")
    from_status = json.loads(cli("status", run_id, "--json").stdout)
    from_runs = from_runs[0]
    assert {k: from_status[k] for k in figures} == {k: from_runs[k] for k in figures}
    assert (from_status["fraction"], from_status["rows_read"], from_status["rows_written"]) == (1.0, 300, 100)

    import asyncio

    import httpx

    from etl import api
    from etl.web.app import create_app

    async def dashboard() -> tuple[dict, dict, str]:
        transport = httpx.ASGITransport(create_app(api.open_queue()))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            one = (await client.get(f"/api/runs/{run_id}")).json()
            listed = (await client.get("/api/runs")).json()[0]
            return one, listed, (await client.get(f"/runs/{run_id}")).text

    one, listed_api, page = asyncio.run(dashboard())
    assert {k: one[k] for k in figures} == {k: from_status[k] for k in figures} == {k: listed_api[k] for k in figures}
    assert one["display"]["line"] == line.replace("[##############################] ", "", 1)
    assert [(c["rows_read"], c["rows_written"]) for c in one["chunks"]] == [(100, 33), (100, 33), (100, 34)]
    assert '<span id="rows">300</span>' in page and '<span id="written">100</span>' in page
