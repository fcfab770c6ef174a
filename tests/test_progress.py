"""One computation of a run's progress, and the formatters every display uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from etl.progress import RunProgress, chunk_line, runs_header, runs_row, status_line
from etl.runs import ChunkResult
from etl.store import ChunkRecord, RunRecord

NOW = 1_800_000_100.0


def run(**fields) -> RunRecord:
    base = {"id": "r1", "job": "orders", "state": "active", "created_at": NOW - 200, "started_at": NOW - 100}
    return RunRecord(**{**base, **fields})


def chunks(*states: str) -> list[ChunkRecord]:
    return [ChunkRecord("r1", i, state=s) for i, s in enumerate(states)]  # type: ignore[arg-type]


def test_a_known_total_counts_rows_read():
    record = run(rows_total=1000, rows_read=250, rows_written=240, chunks_total=8, chunks_done=1)
    progress = RunProgress.of(record, now=NOW)
    assert progress.fraction == 0.25  # from rows (250/1000), not chunks (1/8)
    assert (progress.seconds, progress.rows_per_second) == (100.0, 2.5)
    assert progress.eta_seconds == pytest.approx(300.0)  # 750 rows left at 2.5 rows/s
    line = status_line(progress)
    assert line.startswith("active    [#######.......................]  25.0% · 250/1,000 rows · 2 rows/s · ETA 5m00s")
    assert "chunks 1/8" in line and "240 written" in line


def test_an_unknown_total_counts_chunks():
    record = run(rows_total=None, rows_read=500, rows_written=500, chunks_total=8, chunks_done=2)
    progress = RunProgress.of(record, now=NOW)
    assert progress.fraction == 0.25
    assert progress.eta_seconds == pytest.approx(300.0)
    assert progress.rows() == "500 rows"
    assert "written" not in status_line(progress)  # only when it differs from rows read


def test_an_estimated_total_is_marked_and_the_share_never_passes_one():
    progress = RunProgress.of(run(rows_total=1000, rows_exact=False, rows_read=1200, chunks_total=4), now=NOW)
    assert progress.rows() == "1,200/~1,000 rows"
    assert progress.fraction == 1.0 and progress.eta_seconds is None


def test_zero_elapsed_has_no_pace_and_no_eta():
    record = run(started_at=NOW, rows_total=1000, rows_read=100, chunks_total=10, chunks_done=1)
    progress = RunProgress.of(record, now=NOW)
    assert (progress.seconds, progress.rows_per_second, progress.eta_seconds) == (0.0, 0.0, None)
    assert "ETA" not in status_line(progress)
    # a clock a little behind the store's: still no negative time
    assert RunProgress.of(record, now=NOW - 5).seconds == 0.0


def test_a_waiting_run_is_at_zero():
    progress = RunProgress.of(run(state="waiting", started_at=None), now=NOW)
    assert (progress.fraction, progress.seconds, progress.eta_seconds) == (0.0, 0.0, None)
    assert progress.display()["eta"] == "–" and progress.display()["rows_total"] == ""


def test_finished_runs_have_no_eta_and_figures_frozen_at_their_end():
    # completed: all done, even when the source's estimate was higher than what it gave
    done = run(state="completed", finished_at=NOW - 80, rows_total=1000, rows_exact=False, rows_read=900)
    progress = RunProgress.of(done, now=NOW)
    assert (progress.fraction, progress.eta_seconds) == (1.0, None)
    assert (progress.seconds, progress.rows_per_second) == (20.0, 45.0)
    assert RunProgress.of(done, now=NOW + 3600).to_json() == progress.to_json()
    for state in ("failed", "cancelled"):
        stopped = run(state=state, finished_at=NOW - 50, rows_total=1000, rows_read=500, chunks_total=4, chunks_done=2)
        progress = RunProgress.of(stopped, now=NOW)
        assert (progress.fraction, progress.seconds, progress.eta_seconds) == (0.5, 50.0, None)
        assert "ETA" not in status_line(progress)


def test_a_run_with_retries_counts_its_chunks_by_state():
    record = run(rows_total=400, rows_read=100, rows_written=100, chunks_total=4, chunks_done=1, retries=3)
    progress = RunProgress.of(record, chunks("done", "running", "retrying", "queued"), now=NOW)
    assert progress.chunk_states == {"pending": 0, "queued": 1, "running": 1, "retrying": 1, "done": 1, "failed": 0}
    assert status_line(progress).endswith("chunks 1/4, 1 running, 1 retrying · 3 retries")
    data = progress.to_json()
    assert (data["retries"], data["chunks_running"], data["chunks_retrying"], data["chunks_queued"]) == (3, 1, 1, 1)
    # without the chunks' records: no counts by state, and the JSON does not pretend to have them
    bare = RunProgress.of(record, now=NOW)
    assert bare.chunk_states is None and "chunks_running" not in bare.to_json()
    assert status_line(bare).endswith("chunks 1/4 · 3 retries")


def test_the_json_and_the_text_show_the_same_figures():
    record = run(rows_total=1_000_000, rows_read=200_000, rows_written=200_000, chunks_total=20, chunks_done=4)
    progress = RunProgress.of(record, chunks(*["done"] * 4, *["running"] * 4, *["pending"] * 12), now=NOW)
    data, shown = progress.to_json(), progress.display()
    assert (data["fraction"], data["rows_per_second"], data["eta_seconds"]) == (0.2, 2000.0, 400.0)
    assert (shown["percent"], shown["rows"], shown["rows_total"]) == ("20.0%", "200,000", "1,000,000")
    assert (shown["rate"], shown["eta"], shown["chunks"]) == ("2,000", "6m40s", "4/20")
    line = "active     20.0% · 200,000/1,000,000 rows · 2,000 rows/s · ETA 6m40s · chunks 4/20, 4 running"
    assert shown["line"] == line
    assert status_line(progress) == shown["line"].replace(" 20.0%", "[######........................]  20.0%", 1)


def test_the_runs_row_shows_rows_read_and_written_as_the_status_line_does():
    record = run(state="completed", finished_at=NOW, rows_total=300, rows_read=300, rows_written=120, chunks_total=3)
    record.chunks_done = 3
    progress = RunProgress.of(record, now=NOW)
    header, row = runs_header(), runs_row(progress, record.created_at)
    assert header.split() == ["run", "job", "state", "done", "rows", "written", "chunks", "created"]
    assert row.split() == ["r1", "orders", "completed", "100.0%", "300", "120", "3/3", "2027-01-15", "07:58:20Z"]
    assert "300/300 rows" in status_line(progress) and "120 written" in status_line(progress)


def test_the_chunk_line_is_one_for_both_drivers():
    record = run(rows_total=1000, rows_read=400, rows_written=392, rows_rejected=8, chunks_total=10, chunks_done=4)
    clean = ChunkResult(7, rows_read=100, rows_written=100, rows_rejected=0, seconds=0.25, attempt=1)
    assert chunk_line(record, 7, clean, now=NOW) == (
        "chunk 7 done in 0.2s: 100 rows · 4/10 chunks · 400/1,000 rows (40.0%) · 4 rows/s · ETA 2m30s"
    )
    messy = ChunkResult(3, rows_read=100, rows_written=92, rows_rejected=8, seconds=2, attempt=2)
    line = chunk_line(record, 3, messy, now=NOW)
    assert line.startswith("chunk 3 done in 2.0s: 100 rows, 92 written, 8 rejected · 4/10 chunks")
    assert line.endswith(" · attempt 2")
    # the last chunk: the run is done, so no ETA
    last = run(rows_total=1000, rows_read=1000, rows_written=1000, chunks_total=10, chunks_done=10)
    assert "ETA" not in chunk_line(last, 9, clean, now=NOW)


def test_progress_does_not_import_the_store():
    code = "import sys, etl.progress; print('etl.store' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
