"""Casting columns without ever altering a value: what cannot be cast is rejected, row by row.

Shared by the ``cast`` transform and by sinks that convert rows to their target's types (the
``postgres`` sink). Not a plugin itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import PermanentError, StageContext


def cast_batch(
    batch: pa.RecordBatch,
    targets: Mapping[str, tuple[pa.DataType, str | None]],
    context: StageContext,
    *,
    received: pa.RecordBatch | None = None,
    positions: np.ndarray | None = None,
) -> pa.RecordBatch:
    """``batch`` with each named column cast to its type (``(type, strptime format or None)``).

    Rows whose value doesn't fit are handed to ``context.reject`` (the run fails, or with
    ``on_error: skip`` they go to the rejects file, as the rows that arrived) and left out.
    When ``batch`` is what is left of the batch the stage ``received`` after other rows were
    rejected, ``positions`` says where each of its rows was in it.
    """
    # Where each current row was in the batch this stage received: rejects name that row,
    # and record it as it arrived (not with the columns already cast).
    received = batch if received is None else received
    positions = np.arange(batch.num_rows) if positions is None else positions
    for column, (target, fmt) in targets.items():
        array = batch.column(column)
        if array.type == target and fmt is None:
            continue
        convert = converter(target, fmt)
        try:
            converted = convert(array)
        except pa.ArrowNotImplementedError as exc:
            raise PermanentError(
                f"{context.label}: cannot cast {column!r} from {array.type} to {target}: {exc}"
            ) from None
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OverflowError) as exc:
            bad = failing_rows(array, convert)
            if not bad:
                raise PermanentError(f"{context.label}: casting {column!r} to {target} failed: {exc}") from None
            reasons = [reason(array, row, convert, target) for row in bad]
            context.reject(received.take(positions[bad]), positions[bad].tolist(), reasons, column=column)
            keep = np.ones(batch.num_rows, dtype=bool)
            keep[bad] = False
            batch = batch.filter(pa.array(keep))
            positions = positions[keep]
            converted = convert(batch.column(column))
        batch = batch.set_column(batch.schema.get_field_index(column), column, converted)
    return batch


def converter(target: pa.DataType, fmt: str | None) -> Callable[[pa.Array], pa.Array]:
    if fmt is None:
        return lambda array: lossless_cast(array, target)

    def parse(array: pa.Array) -> pa.Array:
        if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
            raise pa.ArrowNotImplementedError(f"`format` applies to text columns, not {array.type}")
        unit = target.unit if pa.types.is_timestamp(target) else "s"
        parsed = pc.strptime(array, format=fmt, unit=unit, error_is_null=False)
        return parsed.cast(target, safe=True)

    return parse


def lossless_cast(array: pa.Array, target: pa.DataType) -> pa.Array:
    """``array.cast(target)``, refusing what Arrow's safe cast would still change.

    Arrow's safe cast refuses overflow and truncation of integers, but rounds a float cast to a
    decimal (2.5612 → 2.56), turns a float too big for a narrower float into infinity, loses an
    int64's low digits in a float64 above 2**53, and drops a timestamp's time of day in a date.
    Each is a changed value, so each is an error here. (A float64 rounded to the nearest float32
    is what a float32 is, and allowed.)
    """
    if pa.types.is_integer(array.type) and pa.types.is_decimal(target):
        # Arrow refuses int64 → decimal(10, 0) outright, whatever the values: go through a
        # decimal wide enough for any integer, then narrow it value by value.
        wide = pa.decimal128(min(38, 20 + target.scale), target.scale)
        return array.cast(wide, safe=True).cast(target, safe=True)
    converted = array.cast(target, safe=True)
    if not len(array):
        return converted
    if pa.types.is_floating(array.type) and pa.types.is_floating(target):
        same = pc.or_(pc.invert(pc.is_finite(array)), pc.is_finite(converted))
    elif pa.types.is_floating(array.type) and pa.types.is_decimal(target):
        same = pc.equal(pc.round(array, ndigits=target.scale), array)
    elif pa.types.is_timestamp(array.type) and (pa.types.is_date(target) or pa.types.is_time(target)):
        same = pc.equal(converted.cast(array.type, safe=False), array)
    else:
        return converted
    same = pc.fill_null(same, True)
    if not pc.all(same).as_py():
        first = pc.index(same, False).as_py()
        raise pa.ArrowInvalid(f"{array[first].as_py()!r} would not be kept exactly as {target}")
    return converted


def failing_rows(array: pa.Array, convert: Callable[[pa.Array], Any]) -> list[int]:
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


def reason(array: pa.Array, row: int, convert: Callable[[pa.Array], Any], target: pa.DataType) -> str:
    try:
        convert(array.slice(row, 1))
    except Exception as exc:  # the message Arrow gives for this very value
        return f"cannot cast to {target}: {str(exc).splitlines()[0]}"
    return f"cannot cast to {target}"
