"""Incremental loads: windows and marks, and a sequence of runs from PostgreSQL with rows arriving
during a run: no row skipped, none loaded twice; the mark moves only when a run completes."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

import etl
from etl import api
from etl.errors import ConfigErrors, JobFailed
from etl.incremental import Window, coerce, decode, encode, parse_value
from tests.contract.cases_postgres import DSN
from tests.plugins.test_postgres_source import execute

UTC = dt.UTC


# -- values and windows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("4.5", Decimal("4.5")),
        ("2026-01-31", dt.date(2026, 1, 31)),
        ("2026-01-31T06:00:00Z", dt.datetime(2026, 1, 31, 6, tzinfo=UTC)),
        ("2026-01-31 06:00", dt.datetime(2026, 1, 31, 6)),
    ],
)
def test_a_mark_given_as_text_reads_as_the_first_type_it_fits(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_text_that_is_no_cursor_value_says_what_would_be():
    with pytest.raises(ValueError, match="expected an integer, a number, a date"):
        parse_value("yesterday")


@pytest.mark.parametrize(
    "value",
    [7, Decimal("1.50"), 2.5, dt.date(2026, 2, 1), dt.datetime(2026, 2, 1, 3, tzinfo=UTC), dt.datetime(2026, 2, 1)],
)
def test_cursor_values_survive_json_with_their_type(value):
    back = decode(encode(value))
    assert back == value and type(back) is type(value)


def test_a_mark_is_coerced_to_the_type_of_the_sources_values():
    aware = dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert coerce(dt.date(2026, 1, 2), aware) == dt.datetime(2026, 1, 2, tzinfo=UTC)
    assert coerce(dt.datetime(2026, 1, 2, 1, tzinfo=UTC), dt.datetime(2026, 1, 1)) == dt.datetime(2026, 1, 2, 1)
    assert coerce(dt.datetime(2026, 1, 2, 23), dt.date(2026, 1, 1)) == dt.date(2026, 1, 2)
    assert coerce(Decimal(5), 3) == 5
    with pytest.raises(ValueError, match="is a date, and the cursor's values are numbers"):
        coerce(dt.date(2026, 1, 2), 3)


def test_a_window_holds_what_is_above_its_low_and_up_to_its_high():
    window = Window("id", low=10, low_inclusive=False, high=20)
    assert [v for v in (None, 9, 10, 11, 20, 21) if window.holds(v)] == [11, 20]
    first = Window("id", low=10, low_inclusive=True, high=20)
    assert first.holds(10)
    assert not Window("id", low=10, high=None).holds(15)
    assert Window.from_json(window.to_json()) == window


# -- the job file ------------------------------------------------------------------------------


def test_a_source_that_cant_read_incrementally_is_refused_naming_those_that_can(write):
    path = write(
        "job.yaml",
        """
        name: gen
        source: {type: generate, rows: 10}
        sink: {type: jsonl, path: out}
        incremental: {cursor: id}
        """,
    )
    with pytest.raises(ConfigErrors) as info:
        etl.load_job(path)
    text = str(info.value)
    assert "job.yaml:4" in text and "incremental" in text
    assert "the generate source can't read incrementally" in text and "postgres" in text


def test_a_bad_initial_is_a_config_error(write):
    path = write(
        "job.yaml",
        f"""
        name: pg
        source: {{type: postgres, dsn: "{DSN}", table: t}}
        sink: {{type: jsonl, path: out}}
        incremental: {{cursor: updated_at, initial: soon}}
        """,
    )
    with pytest.raises(ConfigErrors, match="incremental.initial.*'soon' is not a cursor value"):
        etl.load_job(path)


# -- runs from PostgreSQL ------------------------------------------------------------------------

ARRIVALS = '''
import os
import psycopg
import etl


@etl.hookimpl
def etl_before_job_run(job, run):
    """Rows that arrive while the run goes on (its window is fixed already)."""
    count = int(os.environ.get("ARRIVE", "0"))
    if count:
        with psycopg.connect(os.environ["SOURCE_DSN"], autocommit=True) as con:
            con.execute(
                f"INSERT INTO {os.environ['SOURCE_TABLE']} (updated_at) "
                "SELECT clock_timestamp() FROM generate_series(1, %s)",
                [count],
            )
'''


@pytest.fixture
def tables():
    schema = f"etl_inc_{uuid.uuid4().hex[:8]}"
    execute(f'CREATE SCHEMA "{schema}"')
    execute(f"CREATE TABLE {schema}.src (id serial PRIMARY KEY, updated_at timestamptz NOT NULL)")
    execute(f"CREATE TABLE {schema}.dst (id integer, updated_at timestamptz)")
    yield f"{schema}.src", f"{schema}.dst"
    execute(f'DROP SCHEMA "{schema}" CASCADE')


def add_rows(table: str, count: int, at: str = "clock_timestamp()") -> None:
    execute(f"INSERT INTO {table} (updated_at) SELECT {at} FROM generate_series(1, {count})")


@pytest.fixture
def incremental_job(write, tables, monkeypatch):
    src, dst = tables
    monkeypatch.setenv("SOURCE_DSN", DSN)
    monkeypatch.setenv("SOURCE_TABLE", src)
    write("arrivals.py", ARRIVALS)

    def make(name: str = "inc", lookback: str = "0", mode: str = "append", extra: str = "") -> str:
        path = write(
            f"{name}.yaml",
            f"""
            name: {name}
            plugins: [arrivals.py]
            source: {{type: postgres, dsn: "{DSN}", table: {src}}}
            sink: {{type: postgres, dsn: "{DSN}", table: {dst}, mode: {mode}{", key: [id]" if mode == "merge" else ""}}}
            incremental: {{cursor: updated_at, lookback: {lookback}}}
            chunk_size: 7
            {extra}
            """,
        )
        return str(path)

    return make


def loaded(dst: str) -> list[int]:
    return [row[0] for row in execute(f"SELECT id FROM {dst} ORDER BY id")]


def source_ids(src: str) -> list[int]:
    return [row[0] for row in execute(f"SELECT id FROM {src} ORDER BY id")]


def mark(job: str):
    found = api.open_store().get_mark(job)
    return None if found is None else decode(found["value"])


def test_a_sequence_of_runs_with_rows_arriving_during_each_skips_none_and_loads_none_twice(
    incremental_job, tables, monkeypatch
):
    src, dst = tables
    job = incremental_job()
    add_rows(src, 30, at="now() - interval '1 day'")
    add_rows(src, 20, at="now() - interval '2 hours'")
    monkeypatch.setenv("ARRIVE", "5")
    seen_before: list[int] = []
    for _ in range(4):
        before = source_ids(src)
        result = api.run(job)
        assert result.state == "completed"
        # This run read exactly what was there when it was planned; the rows that arrived
        # during it are left for the next run.
        assert loaded(dst) == before
        assert len(source_ids(src)) == len(before) + 5
        assert mark("inc") == execute(f"SELECT max(updated_at) FROM {src} WHERE id <= {max(before)}")[0][0]
        assert result.rows_written == len(before) - len(seen_before)
        seen_before = before
    monkeypatch.setenv("ARRIVE", "0")
    api.run(job)
    assert loaded(dst) == source_ids(src)  # every row, once
    again = api.run(job)
    assert again.rows_written == 0 and again.chunks_total == 0


def test_a_failed_run_leaves_the_mark_and_the_next_run_reads_its_rows(incremental_job, tables):
    src, dst = tables
    job = incremental_job()
    add_rows(src, 10)
    api.run(job)
    first = mark("inc")
    add_rows(src, 6)
    execute(f"ALTER TABLE {dst} ADD CONSTRAINT no_16 CHECK (id <> 16)")
    with pytest.raises(JobFailed):
        api.run(job)
    assert mark("inc") == first
    execute(f"ALTER TABLE {dst} DROP CONSTRAINT no_16")
    result = api.run(job)
    assert result.rows_written == 6
    assert loaded(dst) == list(range(1, 17))
    assert mark("inc") > first


def test_the_lookback_reads_late_rows_again_and_merge_keeps_one_copy(incremental_job, tables):
    src, dst = tables
    job = incremental_job(lookback="1h", mode="merge")
    execute(f"ALTER TABLE {dst} ADD PRIMARY KEY (id)")
    add_rows(src, 5)
    api.run(job)
    # A row committed late, with a cursor below the mark (but within the lookback).
    add_rows(src, 1, at="now() - interval '10 minutes'")
    late = source_ids(src)[-1]
    result = api.run(job)
    assert late in loaded(dst)
    assert result.rows_written >= 1
    assert loaded(dst) == source_ids(src)


def test_initial_starts_the_first_run_and_etl_state_shows_resets_and_sets_the_mark(incremental_job, tables, cli):
    src, dst = tables
    job = incremental_job()
    text = Path(job).read_text().replace("lookback: 0}", "lookback: 0, initial: 2026-06-01}")
    Path(job).write_text(text)
    add_rows(src, 3, at="'2026-05-01T00:00:00Z'")
    add_rows(src, 4, at="'2026-07-01T00:00:00Z'")
    assert api.run(job).rows_written == 4
    shown = cli("state", "inc")
    assert shown.returncode == 0
    assert "updated_at > 2026-07-01T00:00:00+00:00" in shown.stdout

    asked = cli("state", job, "--set", "2026-04-01", input="y\n")
    assert asked.returncode == 2 and "--yes" in asked.stderr  # without a terminal to ask on
    assert mark("inc") == dt.datetime(2026, 7, 1, tzinfo=UTC)
    assert cli("state", job, "--set", "2026-04-01", "--yes").returncode == 0
    assert mark("inc") == dt.datetime(2026, 4, 1, tzinfo=UTC)
    assert api.run(job).rows_written == 7  # the three May rows, and the July ones again
    assert cli("state", "inc", "--reset", "--yes").returncode == 0
    assert mark("inc") is None
    assert api.run(job).rows_written == 4  # from initial again
    bad = cli("state", "inc", "--set", "soon", "--yes")
    assert bad.returncode == 2 and "is not a cursor value" in bad.stderr and "Traceback" not in bad.stderr


def test_the_upper_bound_is_looked_for_above_the_mark_only(tables):
    from tests.plugins.test_postgres_source import source

    src, _ = tables
    add_rows(src, 3, at="'2026-05-01T00:00:00Z'")
    add_rows(src, 2, at="'2026-07-01T00:00:00Z'")
    stage = source({"table": src})
    try:
        july, may = dt.datetime(2026, 7, 1, tzinfo=UTC), dt.datetime(2026, 5, 1, tzinfo=UTC)
        assert stage.cursor_high("updated_at") == july
        assert stage.cursor_high("updated_at", above=may) == july
        assert stage.cursor_high("updated_at", above=july) is None  # nothing new: no scan below the mark
    finally:
        stage.close()
