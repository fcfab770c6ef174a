"""Incremental background runs with real workers: the window is fixed when the worker plans the
run, every chunk (on any worker) reads inside it, rows arriving during it wait for the next run,
and the mark moves with the run's completion."""

from __future__ import annotations

import textwrap

from etl.incremental import decode
from tests.background.conftest import queue, submit, wait_finished
from tests.contract.cases_postgres import DSN
from tests.test_incremental import ARRIVALS, add_rows, loaded, source_ids
from tests.test_incremental import tables as tables  # a fixture


def job(tmp_path, src: str, dst: str) -> str:
    (tmp_path / "arrivals.py").write_text(ARRIVALS)
    path = tmp_path / "inc.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            name: inc-bg
            plugins: [arrivals.py]
            source: {{type: postgres, dsn: "{DSN}", table: {src}, chunk_by: id}}
            sink: {{type: postgres, dsn: "{DSN}", table: {dst}}}
            incremental: {{cursor: updated_at}}
            chunk_size: 10
            thresholds: {{background: 1}}
        """)
    )
    return str(path)


def test_background_runs_read_each_row_once_with_rows_arriving_during_each(tables, workers, cli, tmp_path, monkeypatch):
    src, dst = tables
    monkeypatch.setenv("SOURCE_DSN", DSN)
    monkeypatch.setenv("SOURCE_TABLE", src)
    monkeypatch.setenv("ARRIVE", "7")
    path = job(tmp_path, src, dst)
    add_rows(src, 45)
    workers.start(2, ARRIVE="7", SOURCE_DSN=DSN, SOURCE_TABLE=src)
    store = queue().store
    for expected in (45, 52, 59):
        # The worker fixes the window when it plans (the CLI, with --background, doesn't count).
        run_id = submit(cli, path)
        done = wait_finished(run_id)
        assert done.state == "completed", done.error
        assert done.rows_written == (45 if expected == 45 else 7)
        assert loaded(dst) == list(range(1, expected + 1))  # the 7 that arrived during it wait
        mark = store.get_mark("inc-bg")
        assert mark["run"] == run_id
        assert decode(mark["value"]) == decode(done.window["high"])
    assert len(source_ids(src)) == 66
