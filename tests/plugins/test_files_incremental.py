"""File sources (csv, jsonl, parquet) read incrementally by the files' modification time: each
run reads the files modified since the last completed run, up to the newest one when it was
planned. Real files, real runs (``etl.api.run``) and the embedded run store in ``$ETL_HOME``."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etl_plugins._files import modified

import etl
from etl import ConfigErrors, Window
from tests.contract.framework import across_processes, make_stage

KINDS = ["csv", "jsonl", "parquet"]
SUFFIX = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}


@pytest.fixture(autouse=True)
def _embedded_store(monkeypatch):
    """Marks kept in the embedded store under the test's own ETL_HOME, never in a Redis."""
    monkeypatch.delenv("ETL_QUEUE_URL", raising=False)
    monkeypatch.delenv("REDIS_HOST", raising=False)


def at(day: int, hour: int = 0, ns: int = 0) -> int:
    """A modification time in January 2026 (UTC), in nanoseconds."""
    return int(dt.datetime(2026, 1, day, hour, tzinfo=dt.UTC).timestamp()) * 1_000_000_000 + ns


def put(kind: str, name: str, mtime_ns: int, rows: int = 2, directory: str = "landing") -> Path:
    """A file of ``rows`` rows, each naming the file, modified at ``mtime_ns``."""
    path = Path(directory) / f"{name}{SUFFIX[kind]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"id": i, "f": name} for i in range(rows)]
    if kind == "csv":
        path.write_text("id,f\n" + "".join(f"{r['id']},{r['f']}\n" for r in records))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def job(write, kind: str, incremental: str = "{cursor: mtime, initial: 2026-01-01}", path: str = "landing/") -> Path:
    return write(
        f"{kind}.yaml",
        f"""
        name: files-{kind}
        source: {{type: {kind}, path: {path}}}
        incremental: {incremental}
        sink: {{type: parquet, path: out, mode: append}}
        """,
    )


def files_read(result: etl.RunResult) -> set[str]:
    """The files whose rows a run wrote (the sink's parts of that run)."""
    parts = sorted(Path("out").glob(f"part-{result.run_id}-*.parquet"))
    return {name for part in parts for name in pq.read_table(part).column("f").to_pylist()}


def run(path: Path, **kwargs) -> tuple[etl.RunResult, set[str]]:
    result = etl.api.run(path, **kwargs)
    assert result.state == "completed", result.error
    return result, files_read(result)


def mark(name: str):
    stored = etl.api.open_store().get_mark(name)
    return None if stored is None else dt.datetime.fromisoformat(stored["value"]["value"])


@pytest.mark.parametrize("kind", KINDS)
def test_each_run_reads_the_files_modified_since_the_last(write, kind):
    put(kind, "old", at(1) - 1)  # before `initial`
    put(kind, "b", at(2))
    put(kind, "c", at(3))
    path = job(write, kind)
    result, read = run(path)
    assert read == {"b", "c"} and result.rows_read == 4
    assert mark(f"files-{kind}") == dt.datetime(2026, 1, 3, tzinfo=dt.UTC)

    put(kind, "d", at(4))
    _, read = run(path)
    assert read == {"d"}

    # Nothing new: the run reads nothing, completes, and the mark stays.
    result, read = run(path)
    assert (read, result.rows_read, result.chunks_total) == (set(), 0, 0)
    assert mark(f"files-{kind}") == dt.datetime(2026, 1, 4, tzinfo=dt.UTC)


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_added_after_the_window_was_fixed_is_read_by_the_next_run(write, kind):
    put(kind, "a", at(2))
    path = job(write, kind)
    loaded = etl.load_job(path)
    planned = etl.api.plan(loaded)  # as `etl run` does: count and plan, then run that window
    assert planned.info.rows == 2 and len(planned.plan.chunks) == 1
    put(kind, "late", at(5))
    result, read = run(planned)
    assert read == {"a"}
    assert mark(f"files-{kind}") == dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    _, read = run(path)
    assert read == {"late"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_planned_file_modified_before_its_chunk_is_read_is_left_for_the_next_run(write, kind):
    from loguru import logger

    put(kind, "a", at(2))
    put(kind, "b", at(3))
    path = job(write, kind)
    planned = etl.api.plan(etl.load_job(path))
    planned.close()  # its chunks are read below as workers read them
    info, plan = planned.info, planned.plan
    assert len(plan.chunks) == 2
    put(kind, "b", at(6), rows=3)  # rewritten after the plan: its planned chunk would read it half-changed
    # Each chunk read as a worker reads it: a fresh source, given the run's window as JSON.
    window = Window.from_json(json.loads(json.dumps(info.window)))
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING")
    logger.enable("etl_plugins")
    try:
        got = {}
        for chunk in plan.chunks:
            moved, shared = across_processes(chunk, plan)
            stage = make_stage("source", {"type": kind, "path": "landing/"}, window=window)
            got[Path(moved.args["path"]).stem] = sum(b.num_rows for b in stage.read(moved, shared))
    finally:
        logger.remove(handler)
    assert got == {"a": 2, "b": 0}
    assert any(f"b{SUFFIX[kind]} was modified" in line and "left for the next run" in line for line in lines)
    # The next run (from the first run's mark) reads it whole.
    etl.api.open_store().advance_mark(f"files-{kind}", info.window, info.id)
    result, read = run(path)
    assert read == {"b"} and result.rows_read == 3


@pytest.mark.parametrize("kind", KINDS)
def test_lookback_reads_again_the_files_just_below_the_mark(write, kind):
    put(kind, "a", at(2))
    put(kind, "b", at(4))
    path = job(write, kind, "{cursor: mtime, initial: 2026-01-01, lookback: 1d}")
    _, read = run(path)
    assert read == {"a", "b"}
    put(kind, "c", at(5))
    put(kind, "late", at(3, hour=12))  # arrived late, with an older time: within the lookback
    _, read = run(path)
    assert read == {"b", "c", "late"}  # mark (Jan 4) less a day: after Jan 3, 00:00


def test_without_initial_the_first_run_reads_every_file(write):
    put("jsonl", "a", at(1))
    put("jsonl", "b", at(2))
    _, read = run(job(write, "jsonl", "{cursor: mtime}"))
    assert read == {"a", "b"}


def test_modification_times_are_cut_to_whole_microseconds_and_compare_exactly(write):
    # Nanoseconds that a float can't hold: read once, and never again for rounding.
    put("parquet", "a", at(2, ns=123_456_789))
    path = job(write, "parquet")
    _, read = run(path)
    assert read == {"a"}
    assert modified("landing/a.parquet") == dt.datetime(2026, 1, 2, 0, 0, 0, 123_456, tzinfo=dt.UTC)
    assert mark("files-parquet") == modified("landing/a.parquet")
    _, read = run(path)
    assert read == set()
    put("parquet", "b", at(2, ns=123_457_000))  # one microsecond later
    _, read = run(path)
    assert read == {"b"}


def test_an_empty_directory_is_nothing_new_and_a_missing_one_an_error(write):
    Path("landing").mkdir()
    path = job(write, "csv")
    result, read = run(path)
    assert (read, result.rows_read) == (set(), 0)
    assert etl.api.open_store().get_mark("files-csv") is None
    put("csv", "a", at(2))
    assert run(path)[1] == {"a"}

    glob = job(write, "csv", path="'landing/2026-*.csv'")  # a glob that matches nothing yet
    assert run(glob)[1] == set()

    missing = job(write, "csv", path="nowhere/")  # a typo is not "nothing new"
    with pytest.raises(etl.JobFailed, match="no file matches 'nowhere/'"):
        etl.api.run(missing)


@pytest.mark.parametrize("kind", KINDS)
def test_a_cursor_other_than_mtime_is_a_config_error(write, cli, kind):
    path = job(write, kind, "{cursor: updated_at}")
    with pytest.raises(ConfigErrors) as info:
        etl.load_job(path)
    message = str(info.value)
    assert "incremental.cursor" in message
    assert "file sources follow the files' modification time" in message and "write `cursor: mtime`" in message
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert f"{kind}.yaml:3: incremental.cursor: " in result.stderr
    assert "Traceback" not in result.stderr
