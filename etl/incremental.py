"""Incremental loads: each run reads only the rows whose cursor passed the last good run's mark.

A job with ``incremental: {cursor: updated_at, initial: "2026-01-01", lookback: 1h}`` keeps a
high-water mark per job in the run store. When a run is planned, its :class:`Window` is fixed:
from the mark (less the lookback) up to the highest cursor value the source holds *now*. Rows
that arrive while the run goes on are above that bound and left for the next run, never
skipped. The mark moves to the window's upper bound only when the run completes; a failed or
cancelled run leaves it where it was, so the next run reads the same rows again.

Cursor values are numbers, dates or timestamps. They are kept as JSON with their type, so that
a mark read back compares with the source's values as the same type.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

__all__ = ["Window", "coerce", "decode", "encode", "open_window", "parse_value", "shown"]


class CursorSpec(Protocol):
    """What :func:`open_window` reads of a job's ``incremental:`` (an
    :class:`~etl.models.IncrementalSpec`, which sits above this module and uses its parsing)."""

    @property
    def cursor(self) -> str: ...

    @property
    def initial(self) -> Any: ...

    @property
    def lookback(self) -> float: ...


def encode(value: Any) -> dict[str, Any] | None:
    """A cursor value as JSON, with its type."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, bool):
        raise TypeError("a boolean can't be a cursor")
    if isinstance(value, int):
        return {"type": "integer", "value": value}
    if isinstance(value, Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, float):
        return {"type": "number", "value": value}
    if isinstance(value, str):
        return {"type": "string", "value": value}
    raise TypeError(f"a {type(value).__name__} can't be a cursor; use a number, date or timestamp column")


def decode(doc: dict[str, Any] | None) -> Any:
    """A cursor value from :func:`encode`'s JSON."""
    if doc is None:
        return None
    kind, value = doc["type"], doc["value"]
    if kind == "datetime":
        return dt.datetime.fromisoformat(value)
    if kind == "date":
        return dt.date.fromisoformat(value)
    if kind == "decimal":
        return Decimal(value)
    return value


def shown(value: Any) -> str:
    """A cursor value for people: ISO 8601 for times."""
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def parse_value(text: Any) -> Any:
    """A mark given as text (``etl state --set``, ``initial:``): an integer, a number, a date,
    or a date and time (ISO 8601), whichever it reads as first.

    Raises:
        ValueError: it is none of them.
    """
    if isinstance(text, dt.date | int | float | Decimal) and not isinstance(text, bool):
        return text
    value = str(text).strip()
    for parse in (int, Decimal, dt.date.fromisoformat, lambda v: dt.datetime.fromisoformat(v.replace("Z", "+00:00"))):
        try:
            parsed = parse(value)
        except (ValueError, ArithmeticError):
            continue
        if isinstance(parsed, Decimal) and not parsed.is_finite():
            continue
        return parsed
    raise ValueError(
        f"{value!r} is not a cursor value; expected an integer, a number, a date (2026-01-31) "
        "or a date and time (2026-01-31T06:00:00Z)"
    )


def coerce(value: Any, like: Any) -> Any:
    """``value`` as the type of ``like`` (the source's own cursor value), so that the two compare.

    Raises:
        ValueError: the two can't be compared (a date against a number).
    """
    if value is None or like is None:
        return value
    if isinstance(like, dt.datetime):
        if isinstance(value, dt.datetime):
            moment = value
        elif isinstance(value, dt.date):
            moment = dt.datetime.combine(value, dt.time())
        else:
            raise ValueError(f"{shown(value)!r} is not a date or a time, and the cursor's values are times")
        if like.tzinfo is not None and moment.tzinfo is None:
            return moment.replace(tzinfo=dt.UTC)
        if like.tzinfo is None and moment.tzinfo is not None:
            return moment.astimezone(dt.UTC).replace(tzinfo=None)
        return moment
    if isinstance(like, dt.date):
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        raise ValueError(f"{shown(value)!r} is not a date, and the cursor's values are dates")
    if isinstance(like, int | float | Decimal):
        if isinstance(value, dt.date):
            raise ValueError(f"{shown(value)!r} is a date, and the cursor's values are numbers")
        if isinstance(like, int) and isinstance(value, int | Decimal) and value == int(value):
            return int(value)
        if isinstance(like, Decimal):
            return Decimal(str(value))
        return float(value) if isinstance(like, float) else value
    return value


def _minus(value: Any, lookback: float) -> Any:
    """``value`` moved back by the lookback: seconds for times, days (rounded up) for dates,
    the number itself for numeric cursors."""
    if not lookback:
        return value
    if isinstance(value, dt.datetime):
        return value - dt.timedelta(seconds=lookback)
    if isinstance(value, dt.date):
        return value - dt.timedelta(days=math.ceil(lookback / 86400))
    if isinstance(value, int):
        return value - math.ceil(lookback)
    if isinstance(value, Decimal):
        return value - Decimal(str(lookback))
    return value - lookback


@dataclass(frozen=True)
class Window:
    """The rows one incremental run reads: ``low < cursor <= high`` (``low <= cursor`` when the
    run starts from ``initial``, and no lower bound at all without one).

    ``high`` is fixed when the run is planned; ``None`` means the source holds no row above
    ``low``, and the run reads nothing.
    """

    cursor: str
    low: Any = None
    low_inclusive: bool = False
    high: Any = None

    @property
    def empty(self) -> bool:
        return self.high is None

    def holds(self, value: Any) -> bool:
        """Whether a cursor value is inside the window (``None``, a NULL cursor, never is)."""
        if value is None or self.high is None or value > self.high:
            return False
        if self.low is None:
            return True
        return value >= self.low if self.low_inclusive else value > self.low

    def describe(self) -> str:
        if self.empty:
            return f"{self.cursor}: nothing new" + (f" after {shown(self.low)}" if self.low is not None else "")
        if self.low is None:
            return f"{self.cursor} up to {shown(self.high)}"
        op = ">=" if self.low_inclusive else ">"
        return f"{self.cursor} {op} {shown(self.low)} and <= {shown(self.high)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "low": encode(self.low),
            "low_inclusive": self.low_inclusive,
            "high": encode(self.high),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Window:
        return cls(doc["cursor"], decode(doc.get("low")), bool(doc.get("low_inclusive")), decode(doc.get("high")))


def open_window(spec: CursorSpec, mark: Any, source: Any) -> Window:
    """The window of a run starting from ``mark`` (``None`` before the first good run): its
    lower bound from the mark less the lookback, or ``initial``; its upper bound the highest
    cursor value the source holds now.

    Raises:
        ValueError: ``initial`` or the mark can't be compared with the source's values.
    """
    if mark is not None:
        low, inclusive = mark, False
    elif spec.initial is not None:
        low, inclusive = parse_value(spec.initial), True
    else:
        low, inclusive = None, False
    # Only rows above the mark can raise it: the source need not look below (partitions,
    # index ranges). With none above, a lookback still reads the rows just below the mark.
    high = source.cursor_high(spec.cursor, above=mark)
    if high is None and mark is not None and spec.lookback:
        high = mark
    if high is None:
        return Window(spec.cursor, low, inclusive, None)
    low = coerce(low, high)
    if mark is not None:
        low = _minus(low, spec.lookback)
    window = Window(spec.cursor, low, inclusive, high)
    if low is not None and not (high >= low if inclusive else high > low):
        return Window(spec.cursor, low, inclusive, None)  # nothing above the mark
    return window
