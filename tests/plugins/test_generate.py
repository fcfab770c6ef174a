"""Source generate: deterministic whatever the chunking, seedable, declared columns."""

from __future__ import annotations

import pyarrow as pa

from tests.contract.framework import make_stage


def read(options, chunk_size, **context) -> pa.Table:
    source = make_stage("source", {"type": "generate", **options}, **context)
    plan = source.plan(chunk_size)
    return pa.Table.from_batches([b for c in plan.chunks for b in source.read(c, plan.shared)])


def test_the_same_rows_whatever_the_chunk_and_batch_sizes():
    a = read({"rows": 5_000, "seed": 3}, 1_000)
    b = read({"rows": 5_000, "seed": 3}, 333, batch_size=50)
    assert a.equals(b)


def test_another_seed_gives_other_values_but_the_same_ids():
    a = read({"rows": 100, "seed": 1}, 100)
    b = read({"rows": 100, "seed": 2}, 100)
    assert a.column("id").equals(b.column("id"))
    assert not a.column("forecast").equals(b.column("forecast"))


def test_the_forecast_preset_is_forecast_like():
    table = read({"rows": 20_000}, 5_000)
    assert table.schema.names == [
        "id",
        "dataset_id",
        "environment",
        "volume_type",
        "ds",
        "forecast",
        "lower",
        "upper",
        "updated_at",
    ]
    rows = table.to_pylist()
    assert all(r["lower"] <= r["forecast"] <= r["upper"] for r in rows)
    assert {r["environment"] for r in rows} == {"production", "staging", "development"}
    assert len({r["dataset_id"] for r in rows}) == 20
    assert table.schema.field("updated_at").type == pa.timestamp("us", tz="UTC")


def test_declared_columns_with_nulls_and_ranges():
    columns = {
        "id": {"kind": "sequence", "start": 100, "step": 10},
        "n": {"kind": "int", "min": 5, "max": 7, "null_fraction": 0.5},
        "label": {"kind": "string", "prefix": "item-"},
        "pick": {"kind": "choice", "values": ["a", "b"]},
    }
    table = read({"rows": 2_000, "columns": columns}, 500)
    assert table.column("id").to_pylist()[:3] == [100, 110, 120]
    values = table.column("n").to_pylist()
    nulls = values.count(None)
    assert 800 < nulls < 1200
    assert {v for v in values if v is not None} == {5, 6, 7}
    assert table.column("label").to_pylist()[:2] == ["item-1", "item-2"]
    assert set(table.column("pick").to_pylist()) == {"a", "b"}
