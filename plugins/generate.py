"""Source ``generate``: deterministic synthetic rows, any number of them.

Every value is a function of the seed, the column and the row number alone (a SplitMix64 hash,
vectorized with NumPy), so a chunk gives the same rows whichever process reads it and however
the rows are chunked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from etl import Chunk, Plan, RowCount, Source, StageOptions, hookimpl

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(n) for n in (30, 27, 31, 11))


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a well-spread 64-bit hash of each element."""
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


class _Kind(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    null_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of rows that are NULL")


class SequenceColumn(_Kind):
    kind: Literal["sequence"]
    start: int = Field(1, description="the first row's value")
    step: int = Field(1, description="the difference between consecutive rows")


class IntColumn(_Kind):
    kind: Literal["int"]
    min: int = 0
    max: int = 1_000_000


class FloatColumn(_Kind):
    kind: Literal["float"]
    min: float = 0.0
    max: float = 1.0
    decimals: int | None = Field(None, ge=0, le=12, description="round to this many decimals")


class ChoiceColumn(_Kind):
    kind: Literal["choice"]
    values: list[str | int | float | bool] = Field(min_length=1)


class DateColumn(_Kind):
    kind: Literal["date"]
    start: dt.date = dt.date(2026, 1, 1)
    end: dt.date = dt.date(2026, 12, 31)


class TimestampColumn(_Kind):
    kind: Literal["timestamp"]
    start: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    end: dt.datetime = dt.datetime(2026, 12, 31, tzinfo=dt.UTC)


class StringColumn(_Kind):
    kind: Literal["string"]
    prefix: str = Field("", description="text before the row number")


Column = Annotated[
    SequenceColumn | IntColumn | FloatColumn | ChoiceColumn | DateColumn | TimestampColumn | StringColumn,
    Field(discriminator="kind"),
]


class GenerateOptions(StageOptions):
    rows: int = Field(1_000, ge=0, description="how many rows to generate")
    seed: int = Field(0, ge=0, description="the same seed gives the same rows")
    preset: Literal["forecast"] | None = Field(
        None, description="a ready-made schema; `forecast` is the default when `columns` is not given"
    )
    columns: dict[str, Column] | None = Field(None, description="column name → generator (kind and its options)")

    @model_validator(mode="after")
    def _one_schema(self) -> GenerateOptions:
        if self.preset and self.columns:
            raise ValueError("give `preset` or `columns`, not both")
        return self


_DATASETS = [f"ds-{i:03d}" for i in range(1, 21)]
_ENVIRONMENTS = ["production", "staging", "development"]
_VOLUME_TYPES = ["inbound", "outbound", "returns", "transfers"]


class Generate(Source):
    """Deterministic synthetic rows (forecast-like by default), seedable, any count."""

    name = "generate"
    Options = GenerateOptions
    options: GenerateOptions

    def count(self) -> RowCount:
        return RowCount(self.options.rows, exact=True)

    def plan(self, chunk_size: int) -> Plan:
        rows = self.options.rows
        chunks = [
            Chunk(
                index=i,
                rows=min(chunk_size, rows - start),
                args={"start": start, "stop": min(start + chunk_size, rows)},
                label=f"rows {start:,}-{min(start + chunk_size, rows) - 1:,}",
            )
            for i, start in enumerate(range(0, rows, chunk_size))
        ]
        return Plan(chunks)

    def output_schema(self) -> pa.Schema:
        """The columns of a batch of no rows: the same code as every batch, so the same types."""
        return self._batch(np.arange(0, dtype=np.uint64)).schema

    def read(self, chunk: Chunk, shared: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
        start, stop = int(chunk.args["start"]), int(chunk.args["stop"])
        step = self.context.batch_size
        for offset in range(start, stop, step):
            ids = np.arange(offset, min(offset + step, stop), dtype=np.uint64)
            yield self._batch(ids)

    def _batch(self, ids: np.ndarray) -> pa.RecordBatch:
        return self._columns(ids) if self.options.columns else self._forecast(ids)

    # -- hashing helpers -----------------------------------------------------------------

    def _uniform(self, ids: np.ndarray, salt: int) -> np.ndarray:
        key = _mix(np.array([self.options.seed * 1_000_003 + salt], dtype=np.uint64))[0]
        return (_mix(ids ^ key) >> _S11).astype(np.float64) * (1.0 / (1 << 53))

    def _pick(self, ids: np.ndarray, salt: int, n: int) -> np.ndarray:
        return np.minimum((self._uniform(ids, salt) * n).astype(np.int64), n - 1)

    def _nulls(self, ids: np.ndarray, salt: int, fraction: float) -> np.ndarray | None:
        return self._uniform(ids, salt + 7_919) < fraction if fraction else None

    # -- the forecast preset -------------------------------------------------------------

    def _forecast(self, ids: np.ndarray) -> pa.RecordBatch:
        forecast = np.round(self._uniform(ids, 4) * 10_000.0, 2)
        lower = np.round(forecast * (0.80 + 0.15 * self._uniform(ids, 5)), 2)
        upper = np.round(forecast * (1.05 + 0.15 * self._uniform(ids, 6)), 2)
        day0 = np.datetime64("2026-01-01", "D")
        ds = day0 + self._pick(ids, 3, 365).astype("timedelta64[D]")
        seconds = self._pick(ids, 7, 86_400 * 7)
        updated = ds.astype("datetime64[s]") + np.timedelta64(86_400, "s") + seconds.astype("timedelta64[s]")
        return pa.record_batch(
            {
                "id": pa.array(ids.astype(np.int64) + 1),
                "dataset_id": _dictionary(_DATASETS, self._pick(ids, 0, len(_DATASETS))),
                "environment": _dictionary(_ENVIRONMENTS, self._pick(ids, 1, len(_ENVIRONMENTS))),
                "volume_type": _dictionary(_VOLUME_TYPES, self._pick(ids, 2, len(_VOLUME_TYPES))),
                "ds": pa.array(ds, pa.date32()),
                "forecast": pa.array(forecast),
                "lower": pa.array(lower),
                "upper": pa.array(upper),
                "updated_at": pa.array(updated.astype("datetime64[us]"), pa.timestamp("us", tz="UTC")),
            }
        )

    # -- declared columns ----------------------------------------------------------------

    def _columns(self, ids: np.ndarray) -> pa.RecordBatch:
        arrays = {}
        for salt, (name, spec) in enumerate((self.options.columns or {}).items()):
            arrays[name] = self._column(ids, salt * 101, spec)
        return pa.record_batch(arrays)

    def _column(self, ids: np.ndarray, salt: int, spec: Any) -> pa.Array:
        values = self._values(ids, salt, spec)
        mask = self._nulls(ids, salt, spec.null_fraction)
        if mask is None:
            return values
        return pc.if_else(pa.array(mask), pa.scalar(None, values.type), values)

    def _values(self, ids: np.ndarray, salt: int, spec: Any) -> pa.Array:
        if isinstance(spec, SequenceColumn):
            return pa.array(spec.start + ids.astype(np.int64) * spec.step)
        if isinstance(spec, IntColumn):
            return pa.array(spec.min + self._pick(ids, salt, spec.max - spec.min + 1))
        if isinstance(spec, FloatColumn):
            values = spec.min + self._uniform(ids, salt) * (spec.max - spec.min)
            return pa.array(np.round(values, spec.decimals) if spec.decimals is not None else values)
        if isinstance(spec, ChoiceColumn):
            return pa.array(spec.values).take(pa.array(self._pick(ids, salt, len(spec.values))))
        if isinstance(spec, DateColumn):
            days = (spec.end - spec.start).days + 1
            values = np.datetime64(spec.start, "D") + self._pick(ids, salt, days).astype("timedelta64[D]")
            return pa.array(values, pa.date32())
        if isinstance(spec, TimestampColumn):
            start = spec.start if spec.start.tzinfo else spec.start.replace(tzinfo=dt.UTC)
            end = spec.end if spec.end.tzinfo else spec.end.replace(tzinfo=dt.UTC)
            span = int((end - start).total_seconds() * 1_000_000) + 1
            micros = int(start.timestamp() * 1_000_000) + (self._uniform(ids, salt) * span).astype(np.int64)
            return pa.array(micros, pa.timestamp("us", tz="UTC"))
        text = pa.array(ids.astype(np.int64) + 1).cast(pa.string())
        return pc.binary_join_element_wise(spec.prefix, text, "") if spec.prefix else text


def _dictionary(values: list[str], indices: np.ndarray) -> pa.Array:
    """Plain strings, built from indices into a small list (fast: no Python loop per row)."""
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)), pa.array(values)).cast(pa.string())


@hookimpl
def etl_register_sources() -> list[type[Source]]:
    return [Generate]
