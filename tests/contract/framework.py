"""The shared contract that every source and every sink passes.

A *case* says how to set a stage up for the suite: for a source, how to store a reference table
in its format and which options read it back; for a sink, which options write into a fresh
target and how to read the target back. The suite (``test_sources.py``, ``test_sinks.py``)
runs the same checks over every case.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from etl import Chunk, Plan, StageContext
from etl.manager import StageRegistry, get_plugin_manager

# Columns every source and sink must carry through: integer key, text (with a NULL and
# non-ASCII text), float, date, and a timestamp in UTC.
REFERENCE_ROWS = 1_000


def reference_table(rows: int = REFERENCE_ROWS) -> pa.Table:
    ids = list(range(1, rows + 1))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([None if i % 97 == 0 else f'name-{i} é,"q"' for i in ids], pa.string()),
            "amount": pa.array([i * 0.25 for i in ids], pa.float64()),
            "day": pa.array([dt.date(2026, 1, 1) + dt.timedelta(days=i % 365) for i in ids], pa.date32()),
            "at": pa.array(
                [dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i) for i in ids],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )


@dataclass
class SourceCase:
    """How to put ``table`` where the source reads it; returns the source's options (with type)."""

    name: str
    store: Callable[[Path, pa.Table], dict[str, Any]]
    #: Whether ``count()`` is exact for this source.
    exact_count: bool = True
    #: Columns whose values come back exactly (the rest are compared as text).
    exact_columns: tuple[str, ...] = ("id", "name", "amount", "day", "at")


@dataclass
class SinkCase:
    """A fresh target for the sink: its options, and how to read back what it holds."""

    name: str
    options: Callable[[Path], dict[str, Any]]
    read: Callable[[Path, dict[str, Any]], pa.Table]
    modes: tuple[str, ...] = ("append", "replace")
    #: For ``merge``: the key option.
    merge_key: list[str] = field(default_factory=lambda: ["id"])


def registry() -> StageRegistry:
    return StageRegistry(get_plugin_manager())


def make_stage(kind: str, options: dict[str, Any], run_id: str = "run-1", **context: Any):
    """A stage instance from options with ``type``, as the runner would make it."""
    options = dict(options)
    stage_type = registry().get(kind, options.pop("type"))  # type: ignore[arg-type]
    assert stage_type is not None
    validated = stage_type.cls.Options.model_validate(options)
    ctx = StageContext(job="contract", run_id=run_id, label=kind, **context)
    return stage_type.cls(validated, ctx)


def across_processes(chunk: Chunk, plan: Plan) -> tuple[Chunk, dict[str, Any]]:
    """The chunk and shared plan facts after a trip through JSON, as between processes."""
    data = json.loads(json.dumps({"chunk": chunk.__dict__, "shared": dict(plan.shared)}))
    return Chunk(**data["chunk"]), data["shared"]


def read_all(options: dict[str, Any], chunk_size: int = 1_000, **context: Any) -> tuple[Plan, pa.Table]:
    """A source's plan, and every chunk's rows: planned by one stage, each chunk read by another
    after a trip through JSON (as in a worker)."""
    from etl_plugins._files import schema_from_shared

    planner = make_stage("source", options, **context)
    try:
        plan = planner.plan(chunk_size)
    finally:
        planner.close()
    reader = make_stage("source", options, **context)
    try:
        batches = []
        for chunk in plan.chunks:
            moved, shared = across_processes(chunk, plan)
            batches += list(reader.read(moved, shared))
    finally:
        reader.close()
    return plan, pa.Table.from_batches(batches, schema=schema_from_shared(plan.shared))


def sort_by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("id")
