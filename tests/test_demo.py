"""The demo job, end to end through the CLI, as `make demo` runs it."""

from __future__ import annotations

import decimal
from pathlib import Path

import duckdb

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_the_demo_loads_a_million_rows_into_duckdb(cli, tmp_path):
    # A million rows is above thresholds.background: the run is queued on the embedded queue
    # (no server) and this very process works it, with progress.
    result = cli("run", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert "planned demo: 1,000,000 rows in 20 chunks of up to 50,000" in result.stderr
    assert "completed [##############################] 100.0% · 1,000,000/1,000,000 rows" in result.stderr
    with duckdb.connect(str(tmp_path / "out/demo.duckdb"), read_only=True) as con:
        count, bad_spread, min_value = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE abs(relative_spread - spread / value) > 0.0001), min(value) "
            "FROM forecasts"
        ).fetchone()
        columns = [r[0] for r in con.execute("DESCRIBE forecasts").fetchall()]
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'forecasts'"
            ).fetchall()
        )
    # Only rows with value > 0 pass the filter: nearly all of a million.
    assert 999_000 < count <= 1_000_000
    assert bad_spread == 0
    assert min_value > decimal.Decimal(0)
    assert "lower" not in columns and {"value", "spread", "relative_spread"} <= set(columns)
    assert types["value"] == "DECIMAL(12,2)"


def test_running_the_demo_again_replaces_the_table(cli, tmp_path):
    counts = []
    for _ in range(2):
        result = cli("run", str(DEMO), "-p", "rows=120000")
        assert result.returncode == 0, result.stderr
        with duckdb.connect(str(tmp_path / "out/demo.duckdb"), read_only=True) as con:
            counts.append(con.execute("SELECT count(*), count(DISTINCT id) FROM forecasts").fetchone())
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert counts[0] == counts[1], "a second run replaces the rows instead of adding to them"
    assert counts[0][0] == counts[0][1] and 119_000 < counts[0][0] <= 120_000
    assert not [t for t in tables if t.startswith("_etl_stage")], "no staging table is left behind"
