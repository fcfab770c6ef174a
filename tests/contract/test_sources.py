"""The source contract: count, plan, and read one chunk anywhere, the same every time."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.contract.cases import SOURCE_CASES
from tests.contract.framework import REFERENCE_ROWS, across_processes, make_stage, reference_table


@pytest.fixture(params=SOURCE_CASES, ids=lambda case: case.name)
def case(request):
    return request.param


def read_all(source, plan) -> pa.Table:
    batches = [b for chunk in plan.chunks for b in source.read(chunk, plan.shared)]
    return pa.Table.from_batches(batches) if batches else pa.table({})


def test_count_is_the_number_of_rows(case, tmp_path):
    source = make_stage("source", case.store(tmp_path, reference_table()))
    count = source.count()
    if case.exact_count:
        assert count.exact and count.rows == REFERENCE_ROWS
    else:
        assert count.rows is None or count.rows > 0


@pytest.mark.parametrize("chunk_size", [7, 128, 1_000, 50_000])
def test_plan_covers_every_row_exactly_once(case, tmp_path, chunk_size):
    source = make_stage("source", case.store(tmp_path, reference_table()))
    plan = source.plan(chunk_size)
    assert [c.index for c in plan.chunks] == list(range(len(plan.chunks)))
    ids = []
    for chunk in plan.chunks:
        rows = sum(b.num_rows for b in source.read(chunk, plan.shared))
        if chunk.rows is not None:
            assert rows == chunk.rows, f"chunk {chunk.index} promised {chunk.rows} rows, read {rows}"
        ids += [i for b in source.read(chunk, plan.shared) for i in b.column("id").to_pylist()]
    assert sorted(ids) == list(range(1, REFERENCE_ROWS + 1))


def test_chunks_are_about_chunk_size(case, tmp_path):
    source = make_stage("source", case.store(tmp_path, reference_table()))
    plan = source.plan(100)
    assert len(plan.chunks) >= 5, "a 1,000-row source in chunks of 100 should give several chunks"


def test_reading_a_chunk_twice_gives_the_same_rows(case, tmp_path):
    source = make_stage("source", case.store(tmp_path, reference_table()))
    plan = source.plan(300)
    chunk = plan.chunks[-1]
    first = pa.Table.from_batches(list(source.read(chunk, plan.shared)))
    second = pa.Table.from_batches(list(source.read(chunk, plan.shared)))
    assert first.equals(second)


def test_a_chunk_planned_in_one_process_reads_the_same_in_another(case, tmp_path):
    options = case.store(tmp_path, reference_table())
    planner = make_stage("source", options)
    plan = planner.plan(250)
    chunk = plan.chunks[1]
    here = pa.Table.from_batches(list(planner.read(chunk, plan.shared)))
    moved, shared = across_processes(chunk, plan)
    elsewhere = make_stage("source", options)  # a fresh instance, as in another worker
    there = pa.Table.from_batches(list(elsewhere.read(moved, shared)))
    assert here.equals(there)


def test_batches_are_no_larger_than_the_batch_size(case, tmp_path):
    source = make_stage("source", case.store(tmp_path, reference_table()), batch_size=64)
    plan = source.plan(500)
    sizes = [b.num_rows for chunk in plan.chunks for b in source.read(chunk, plan.shared)]
    assert sizes and max(sizes) <= 64


def test_values_come_back_as_stored(case, tmp_path):
    table = reference_table()
    source = make_stage("source", case.store(tmp_path, table))
    got = read_all(source, source.plan(333)).sort_by("id")
    for name in case.exact_columns:
        column = got.column(name)
        expected = table.column(name)
        if column.type != expected.type:
            column = column.cast(expected.type)
        assert column.to_pylist() == expected.to_pylist(), name


def test_an_empty_source_plans_nothing_to_read(case, tmp_path):
    source = make_stage("source", case.store(tmp_path, reference_table(0)))
    plan = source.plan(100)
    assert sum(b.num_rows for c in plan.chunks for b in source.read(c, plan.shared)) == 0
    count = source.count()
    assert count.rows in (0, None)
