"""The sink contract: idempotent chunk writes, nothing left by a failed write, atomic replace."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from etl import Chunk
from tests.contract.cases import SINK_CASES
from tests.contract.framework import make_stage, reference_table


@pytest.fixture(params=SINK_CASES, ids=lambda case: case.name)
def case(request):
    return request.param


def chunks_of(table: pa.Table, size: int) -> list[tuple[Chunk, pa.Table]]:
    return [
        (Chunk(index=i, rows=min(size, table.num_rows - start)), table.slice(start, size))
        for i, start in enumerate(range(0, table.num_rows, size))
    ]


def sink_for(case, tmp_path, run_id, **options):
    return make_stage("sink", {**case.options(tmp_path), **options}, run_id=run_id)


def write_run(case, tmp_path, table, *, run_id="run-1", size=300, finalize=True, order=None, **options):
    """Prepare, write each chunk from a fresh sink instance (as separate workers would), finalize."""
    first = sink_for(case, tmp_path, run_id, **options)
    first.prepare()
    first.close()
    pieces = chunks_of(table, size)
    for position in order or range(len(pieces)):
        chunk, data = pieces[position]
        sink = sink_for(case, tmp_path, run_id, **options)
        assert sink.write(chunk, iter(data.to_batches(max_chunksize=128))) == data.num_rows
        sink.close()
    if finalize:
        last = sink_for(case, tmp_path, run_id, **options)
        last.finalize()
        last.close()


def target(case, tmp_path) -> pa.Table:
    return case.read(tmp_path, case.options(tmp_path))


def ids(table: pa.Table) -> list[int]:
    return sorted(table.column("id").to_pylist()) if table.num_rows else []


def test_every_row_arrives_once(case, tmp_path):
    table = reference_table()
    write_run(case, tmp_path, table, order=[3, 0, 2, 1])
    got = target(case, tmp_path)
    assert ids(got) == list(range(1, 1001))


def test_values_arrive_as_written(case, tmp_path):
    table = reference_table()
    write_run(case, tmp_path, table)
    got = target(case, tmp_path).sort_by("id")
    for name in ("id", "name", "amount", "day"):
        assert got.column(name).to_pylist() == table.column(name).to_pylist(), name
    at = got.column("at")
    if pa.types.is_timestamp(at.type):
        assert pc.equal(at.cast(pa.timestamp("us", tz="UTC")), table.column("at")).to_pylist() == [True] * 1000


def test_writing_a_chunk_twice_leaves_one_copy(case, tmp_path):
    table = reference_table()
    write_run(case, tmp_path, table, finalize=False)
    chunk, data = chunks_of(table, 300)[1]
    again = sink_for(case, tmp_path, "run-1")
    again.write(chunk, iter(data.to_batches()))
    again.finalize()
    again.close()
    assert ids(target(case, tmp_path)) == list(range(1, 1001))


def test_a_write_that_fails_half_way_leaves_nothing(case, tmp_path):
    table = reference_table()
    pieces = chunks_of(table, 500)
    sink = sink_for(case, tmp_path, "run-1")
    sink.prepare()

    def broken():
        yield pieces[0][1].to_batches(max_chunksize=100)[0]
        raise ConnectionError("the source went away")

    with pytest.raises(ConnectionError):
        sink.write(pieces[0][0], broken())
    sink.close()
    retry = sink_for(case, tmp_path, "run-1")
    for chunk, data in pieces:
        retry.write(chunk, iter(data.to_batches()))
    retry.finalize()
    retry.close()
    assert ids(target(case, tmp_path)) == list(range(1, 1001))


def test_append_runs_add_up(case, tmp_path):
    table = reference_table()
    write_run(case, tmp_path, table, run_id="run-1")
    write_run(case, tmp_path, table, run_id="run-2")
    assert ids(target(case, tmp_path)) == sorted(list(range(1, 1001)) * 2)


def test_replace_shows_the_old_rows_until_finalize(case, tmp_path):
    if "replace" not in case.modes:
        pytest.skip(f"{case.name} has no replace mode")
    old = reference_table().slice(0, 100)
    write_run(case, tmp_path, old, run_id="run-1", mode="replace")
    new = reference_table().slice(500, 300)
    write_run(case, tmp_path, new, run_id="run-2", mode="replace", finalize=False)
    assert ids(target(case, tmp_path)) == list(range(1, 101))
    last = sink_for(case, tmp_path, "run-2", mode="replace")
    last.finalize()
    last.close()
    assert ids(target(case, tmp_path)) == list(range(501, 801))


def test_an_aborted_replace_leaves_the_target_as_it_was(case, tmp_path):
    if "replace" not in case.modes:
        pytest.skip(f"{case.name} has no replace mode")
    write_run(case, tmp_path, reference_table().slice(0, 100), run_id="run-1", mode="replace")
    write_run(case, tmp_path, reference_table(), run_id="run-2", mode="replace", finalize=False)
    sink = sink_for(case, tmp_path, "run-2", mode="replace")
    sink.abort()
    sink.close()
    assert ids(target(case, tmp_path)) == list(range(1, 101))


def test_merge_upserts_on_the_key_and_the_last_duplicate_wins(case, tmp_path):
    if "merge" not in case.modes:
        pytest.skip(f"{case.name} has no merge mode")
    base = reference_table()
    write_run(case, tmp_path, base, run_id="run-1")
    update = reference_table(1_500).slice(500, 1_000)  # ids 501..1500: half old, half new
    update = update.set_column(2, "amount", pc.multiply(update.column("amount"), 10))
    # Key 600 again in the last chunk, with another amount: the later row must win.
    again = update.slice(99, 1).set_column(2, "amount", pa.array([-1.0]))
    merged_input = pa.concat_tables([update, again])
    write_run(case, tmp_path, merged_input, run_id="run-2", mode="merge", key=case.merge_key, size=400)
    got = target(case, tmp_path).sort_by("id")
    assert ids(got) == list(range(1, 1501))
    amounts = dict(zip(got.column("id").to_pylist(), got.column("amount").to_pylist(), strict=True))
    assert amounts[1] == 0.25
    assert amounts[501] == 501 * 0.25 * 10
    assert amounts[600] == -1.0
    assert amounts[1500] == 1500 * 0.25 * 10


def test_a_newer_attempt_that_began_meanwhile_wins_over_an_older_one(case, tmp_path):
    """Fencing: attempt 1 stalls mid-write (its worker lost the lease), attempt 2 writes the
    chunk meanwhile; when attempt 1 goes on, it must not commit."""
    from dataclasses import replace

    from etl import Interrupted

    table = reference_table()
    (chunk, data), (other, rest) = chunks_of(table, 500)
    batches = data.to_batches(max_chunksize=125)

    def stalling():
        yield batches[0]
        newer = sink_for(case, tmp_path, "run-1")
        assert newer.write(replace(chunk, attempt=2), iter(batches)) == 500
        newer.close()
        yield from batches[1:]

    older = sink_for(case, tmp_path, "run-1")
    older.prepare()
    older.write(other, iter(rest.to_batches()))  # the target exists, as it does mid-run
    with pytest.raises(Interrupted):
        older.write(replace(chunk, attempt=1), stalling())
    older.close()
    late = sink_for(case, tmp_path, "run-1")
    with pytest.raises(Interrupted):  # and an older attempt that starts late is refused at once
        late.write(replace(chunk, attempt=1), iter(batches))
    late.finalize()
    late.close()
    assert ids(target(case, tmp_path)) == list(range(1, 1001))


def test_finalizing_twice_changes_nothing(case, tmp_path):
    if "replace" not in case.modes:
        pytest.skip(f"{case.name} has no replace mode")
    write_run(case, tmp_path, reference_table().slice(0, 100), run_id="run-1", mode="replace")
    again = sink_for(case, tmp_path, "run-1", mode="replace")
    again.finalize()
    again.close()
    assert ids(target(case, tmp_path)) == list(range(1, 101))
