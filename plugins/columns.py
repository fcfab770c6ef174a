"""Transforms on columns: ``rename``, ``select``, ``drop`` and ``cast``.

All four work on Arrow arrays directly (no copy for rename, select and drop). ``cast`` never
alters a value silently: a value that does not fit its new type is rejected (the run fails,
or with ``on_error: skip`` the row goes to the rejects file).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from etl import PermanentError, StageOptions, Transform, hookimpl, parse_type


def _require(batch: pa.RecordBatch, names: list[str], stage: str) -> None:
    missing = [n for n in names if n not in batch.schema.names]
    if missing:
        raise PermanentError(
            f"{stage}: no column {', '.join(map(repr, missing))}; the rows have: {', '.join(batch.schema.names)}"
        )


class RenameOptions(StageOptions):
    columns: dict[str, str] = Field(min_length=1, description="old name → new name", examples=[{"forecast": "value"}])


class Rename(Transform):
    """Rename columns."""

    name = "rename"
    Options = RenameOptions
    options: RenameOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        mapping = self.options.columns
        _require(batch, list(mapping), self.context.label)
        return batch.rename_columns([mapping.get(n, n) for n in batch.schema.names])


class SelectOptions(StageOptions):
    columns: list[str] = Field(min_length=1, description="the columns to keep, in this order")


class Select(Transform):
    """Keep only the listed columns, in the listed order."""

    name = "select"
    Options = SelectOptions
    options: SelectOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        _require(batch, self.options.columns, self.context.label)
        return batch.select(self.options.columns)


class DropOptions(StageOptions):
    columns: list[str] = Field(min_length=1, description="the columns to remove")
    missing_ok: bool = Field(False, description="don't fail when a listed column is absent")


class Drop(Transform):
    """Remove the listed columns."""

    name = "drop"
    Options = DropOptions
    options: DropOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self.options.missing_ok:
            _require(batch, self.options.columns, self.context.label)
        drop = set(self.options.columns)
        return batch.select([n for n in batch.schema.names if n not in drop])


class CastTo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = Field(description="the new type, e.g. int64, decimal(18, 2), timestamp(us, UTC)")
    format: str | None = Field(None, description="strptime format for text → date/timestamp, e.g. %d/%m/%Y")

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        parse_type(value)
        return value


class CastOptions(StageOptions):
    columns: dict[str, str | CastTo] = Field(
        min_length=1, description="column → type, or column → {type, format}", examples=[{"id": "int32"}]
    )

    @field_validator("columns")
    @classmethod
    def _types(cls, value: dict[str, str | CastTo]) -> dict[str, str | CastTo]:
        for column, target in value.items():
            if isinstance(target, str):
                try:
                    parse_type(target)
                except ValueError as exc:
                    raise ValueError(f"{column}: {exc}") from None
        return value


class Cast(Transform):
    """Change column types; values that don't fit are rejected, never altered."""

    name = "cast"
    Options = CastOptions
    options: CastOptions

    def __init__(self, options: CastOptions, context) -> None:
        super().__init__(options, context)
        self.targets: dict[str, tuple[pa.DataType, str | None]] = {}
        for column, target in options.columns.items():
            spec = CastTo(type=target) if isinstance(target, str) else target
            self.targets[column] = (parse_type(spec.type), spec.format)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        _require(batch, list(self.targets), self.context.label)
        # Where each current row was in the batch this stage received: rejects name that row,
        # and record it as it arrived (not with the columns already cast).
        received = batch
        positions = np.arange(batch.num_rows)
        for column, (target, fmt) in self.targets.items():
            convert = _converter(target, fmt)
            array = batch.column(column)
            try:
                converted = convert(array)
            except pa.ArrowNotImplementedError as exc:
                raise PermanentError(
                    f"{self.context.label}: cannot cast {column!r} from {array.type} to {target}: {exc}"
                ) from None
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OverflowError) as exc:
                bad = _failing_rows(array, convert)
                if not bad:
                    raise PermanentError(
                        f"{self.context.label}: casting {column!r} to {target} failed: {exc}"
                    ) from None
                reasons = [_reason(array, row, convert, target) for row in bad]
                self.context.reject(received.take(positions[bad]), positions[bad].tolist(), reasons, column=column)
                keep = np.ones(batch.num_rows, dtype=bool)
                keep[bad] = False
                batch = batch.filter(pa.array(keep))
                positions = positions[keep]
                converted = convert(batch.column(column))
            batch = batch.set_column(batch.schema.get_field_index(column), column, converted)
        return batch


def _converter(target: pa.DataType, fmt: str | None) -> Callable[[pa.Array], pa.Array]:
    if fmt is None:
        return lambda array: _cast(array, target)

    def parse(array: pa.Array) -> pa.Array:
        if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
            raise pa.ArrowNotImplementedError(f"`format` applies to text columns, not {array.type}")
        unit = target.unit if pa.types.is_timestamp(target) else "s"
        parsed = pc.strptime(array, format=fmt, unit=unit, error_is_null=False)
        return parsed.cast(target, safe=True)

    return parse


def _cast(array: pa.Array, target: pa.DataType) -> pa.Array:
    """``array.cast(target)``, refusing what Arrow's safe cast would still round.

    A float cast to a decimal is rounded to the decimal's scale (2.5612 → 2.56): that is a
    changed value, so it is an error here, like an integer overflow.
    """
    converted = array.cast(target, safe=True)
    if pa.types.is_floating(array.type) and pa.types.is_decimal(target):
        same = pc.equal(pc.round(array, ndigits=target.scale), array)
        if not pc.all(pc.fill_null(same, True)).as_py():
            first = pc.index(same, False).as_py()
            raise pa.ArrowInvalid(f"{array[first].as_py()!r} has more digits than {target} keeps")
    return converted


def _failing_rows(array: pa.Array, convert: Callable[[pa.Array], Any]) -> list[int]:
    """Positions whose values don't convert, found by bisection: O(k log n) conversions."""

    def search(start: int, stop: int) -> list[int]:
        try:
            convert(array.slice(start, stop - start))
            return []
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OverflowError):
            if stop - start == 1:
                return [start]
            middle = (start + stop) // 2
            return search(start, middle) + search(middle, stop)

    return search(0, len(array)) if len(array) else []


def _reason(array: pa.Array, row: int, convert: Callable[[pa.Array], Any], target: pa.DataType) -> str:
    try:
        convert(array.slice(row, 1))
    except Exception as exc:  # the message Arrow gives for this very value
        return f"cannot cast to {target}: {str(exc).splitlines()[0]}"
    return f"cannot cast to {target}"


@hookimpl
def etl_register_transforms() -> list[type[Transform]]:
    return [Rename, Select, Drop, Cast]
