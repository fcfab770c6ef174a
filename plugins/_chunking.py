"""``chunk_by`` for database sources: key ranges of a numeric column, slices of a date column.

Shared by the ``postgres`` and ``bigquery`` sources: the option's shape and validation, and
the chunk edges computed from a column's minimum, maximum and count. The first chunk is open
below and the last open above, so that every non-NULL value is in exactly one chunk; the
sources add a chunk for the NULLs.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from etl import parse_duration

__all__ = ["DAY", "HOUR", "SliceBy", "column_label", "every_seconds", "key_edges", "parse_chunk_by", "slice_edges"]

DAY, HOUR = 86_400, 3_600
_EVERY = re.compile(r"^\s*(\d+)\s*(days?|hours?|weeks?)\s*$", re.I)


def every_seconds(value: Any) -> int:
    """The width of a slice in seconds, from ``1 day``, ``7 days``, ``6 hours``, ``1d``, ``12h``."""
    text = str(value)
    words = _EVERY.match(text)
    if words:
        text = f"{words[1]}{words[2][0].lower()}"
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0 or seconds % HOUR:
        raise ValueError(f"{value!r} is not a whole number of days or hours; expected e.g. 1 day, 7 days, 6 hours")
    return int(seconds)


class SliceBy(BaseModel):
    """``chunk_by`` as a mapping: slices of a date or timestamp column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(min_length=1, description="a date, timestamp or timestamptz column")
    every: str = Field(description="the width of a slice: whole days or hours", examples=["1 day", "6 hours"])

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, value: Any) -> str:
        every_seconds(value)
        return str(value)

    @property
    def seconds(self) -> int:
        return every_seconds(self.every)


def parse_chunk_by(value: Any) -> Any:
    """Validate ``chunk_by`` (a pydantic ``before`` validator): a column name or a :class:`SliceBy`."""
    if value is None or isinstance(value, SliceBy):
        return value
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("is empty; expected a column name, or {column: ds, every: 1 day}")
        return value
    if isinstance(value, Mapping):
        try:
            return SliceBy.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'chunk_by'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            shape = any(e["type"] != "value_error" for e in exc.errors())
            raise ValueError(problems + (" (expected e.g. {column: ds, every: 1 day})" if shape else "")) from None
    raise ValueError(
        f"{value!r} is neither a column name nor a mapping; expected e.g. `chunk_by: id` or "
        "`chunk_by: {column: ds, every: 1 day}`"
    )


def key_edges(low: Any, high: Any, rows: int, chunk_size: int) -> list[int | None]:
    """Edges of equal-width integer key ranges covering ``low``..``high``, about ``rows /
    chunk_size`` of them: ``[None, b1, ..., None]`` (open at both ends).

    Raises:
        ValueError: ``low`` or ``high`` is not a finite number.
    """
    try:
        first, last = Decimal(str(low)), Decimal(str(high))
        lo, hi = math.floor(first), math.floor(last)
    except (InvalidOperation, ValueError, OverflowError):
        raise ValueError(f"{low} .. {high}") from None
    count = max(1, math.ceil(int(rows) / max(1, chunk_size)))
    width = max(1, math.ceil((hi - lo + 1) / count))
    bounds = [lo + width * i for i in range(1, count) if lo + width * i <= hi]
    return [None, *bounds, None]


def slice_edges(low: dt.date, high: dt.date, seconds: int) -> list[str | None]:
    """Edges of slices ``seconds`` wide from the start of ``low``'s day (or hour, for slices of
    hours) to past ``high``: ``[None, "2026-01-02", ..., None]`` in ISO 8601 (open at both ends).

    ``low`` and ``high`` are dates, or datetimes (naive, or aware: the edges keep the zone)."""
    step = dt.timedelta(seconds=seconds)
    if not isinstance(low, dt.datetime):
        start: dt.date = low
    elif seconds % DAY == 0:
        start = low.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = low.replace(minute=0, second=0, microsecond=0)
    bounds: list[str | None] = []
    edge = start + step
    while edge <= high:
        bounds.append(edge.isoformat())
        edge += step
    return [None, *bounds, None]


def column_label(args: Mapping[str, Any]) -> str:
    """A chunk of a column's range in words: ``ds [2026-01-01, 2026-01-02)``, ``id < 100``,
    ``ds IS NULL``."""
    if args.get("kind") == "null":
        return f"{args['column']} IS NULL"
    lo, hi = args.get("lo"), args.get("hi")
    if lo is None and hi is None:
        return f"{args['column']} (all)"
    if lo is None:
        return f"{args['column']} < {hi}"
    if hi is None:
        return f"{args['column']} >= {lo}"
    return f"{args['column']} [{lo}, {hi})"
