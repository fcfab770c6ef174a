"""GoogleSQL conditions the bigquery source writes from values, never from a job's text: a
chunk's bounds on its ``chunk_by`` column, an incremental window's on its cursor (as the typed
query parameters ``@_etl_low`` and ``@_etl_high``, or as literals of the cursor's type for the
Storage Read API's row restriction, which takes no parameters)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from etl import PermanentError, Window

from ._client import decimal_type

#: The query parameters that hold an incremental run's bounds.
_LOW, _HIGH = "_etl_low", "_etl_high"


def _literal(value: Any, kind: str) -> str:
    """A chunk's bound as GoogleSQL: an integer, or a date/time re-read from ISO 8601 (never user text)."""
    if kind == "DATE":
        return f"DATE '{dt.date.fromisoformat(str(value)).isoformat()}'"
    if kind == "DATETIME":
        return f"DATETIME '{dt.datetime.fromisoformat(str(value)).replace(tzinfo=None).isoformat(sep=' ')}'"
    if kind == "TIMESTAMP":
        stamp = dt.datetime.fromisoformat(str(value))
        stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
        return f"TIMESTAMP '{stamp.astimezone(dt.UTC).isoformat(sep=' ')}'"
    return str(int(value))


def _window_conditions(window: Window, *, literal: bool) -> list[str]:
    """An incremental run's bounds on its cursor: as query parameters (``@_etl_low``,
    ``@_etl_high``, bound typed), or, for the Storage Read API's row restriction, which takes
    none, as literals written from the values' types (never text taken from a job)."""
    column = f"`{window.cursor}`"
    high = _typed(window.high) if literal else f"@{_HIGH}"
    found = [f"{column} <= {high}"]
    if window.low is not None:
        low = _typed(window.low) if literal else f"@{_LOW}"
        found.append(f"{column} {'>=' if window.low_inclusive else '>'} {low}")
    return found


def _typed(value: Any) -> str:
    """A cursor value as a GoogleSQL literal of its type: TIMESTAMP (a datetime with a zone),
    DATETIME, DATE, INT64, NUMERIC or BIGNUMERIC, FLOAT64."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return f"DATETIME '{value.isoformat(sep=' ')}'"
        return f"TIMESTAMP '{value.astimezone(dt.UTC).isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, bool):
        raise PermanentError("a BOOL column can't be an incremental cursor")
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal) and value.is_finite():
        return f"{decimal_type(value)} '{value:f}'"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise PermanentError(f"{value!r} can't bound an incremental cursor; a cursor is a number, date or timestamp")


def _condition(args: Mapping[str, Any]) -> str:
    column = f"`{args['column']}`"
    if args["kind"] == "null":
        return f"{column} IS NULL"
    kind = str(args.get("type", ""))
    parts = []
    if args.get("lo") is not None:
        parts.append(f"{column} >= {_literal(args['lo'], kind)}")
    if args.get("hi") is not None:
        parts.append(f"{column} < {_literal(args['hi'], kind)}")
    return " AND ".join(parts) if parts else f"{column} IS NOT NULL"
