"""Durations and Arrow data types written as text in job files."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TYPE_NAMES", "format_duration", "parse_cron", "parse_duration", "parse_timezone", "parse_type"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> float:
    """Seconds from ``100ms``, ``1.5s``, ``5m``, ``2h``, ``7d``, ``1w`` or a number of seconds.

    Raises:
        ValueError: with the accepted forms, when ``value`` is none of them.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; expected e.g. 100ms, 30s, 5m, 2h, 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a duration is 0 or more")
        return _finite(value, value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(
            f"{str(value)!r} is not a duration; expected a number of seconds or a number "
            "with a unit: ms, s, m, h, d, w (e.g. 100ms, 30s, 5m, 2h, 7d)"
        )
    return _finite(float(match[1]) * _UNIT_SECONDS[match[2]], value)


def _finite(seconds: float, value: object) -> float:
    try:
        seconds = float(seconds)
    except OverflowError:  # an integer past the largest float
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"{str(value)[:40]!r} is not a duration of finite length; expected e.g. 30s, 5m, 7d")
    return seconds


def format_duration(seconds: float) -> str:
    """``0.2s``, ``42s``, ``3m05s``, ``1h02m``: short, for progress lines."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# Names accepted for Arrow types, with their usual aliases.
_SIMPLE = {
    "bool": "bool_",
    "boolean": "bool_",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "int": "int64",
    "integer": "int64",
    "bigint": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "float16": "float16",
    "float32": "float32",
    "float": "float64",
    "float64": "float64",
    "double": "float64",
    "string": "string",
    "str": "string",
    "text": "string",
    "large_string": "large_string",
    "binary": "binary",
    "bytes": "binary",
    "date": "date32",
    "date32": "date32",
    "time": "time64us",
    "json": "json",
}
TYPE_NAMES = sorted({*_SIMPLE, "timestamp", "timestamp(unit[, tz])", "decimal(p, s)", "list<type>"})

_PARAMETRIC = re.compile(r"^(?P<name>[a-z_0-9]+)\s*(?:\((?P<args>.*)\)|<(?P<inner>.*)>)?$")


_LIST_DEPTH = 32  # list<list<…>> nested deeper than this is no type anyone means


def parse_type(text: str, _depth: int = 0) -> pa.DataType:
    """An Arrow type from its name in a job file.

    Accepted: ``bool``, ``int8``..``int64`` (``int``), ``uint8``..``uint64``, ``float32``,
    ``float64`` (``float``, ``double``), ``string``, ``binary``, ``date``, ``time``,
    ``json``, ``timestamp`` (microseconds, no time zone), ``timestamp(ms)``,
    ``timestamp(us, UTC)``, ``decimal(18, 2)``, ``list<int64>``.

    Raises:
        ValueError: naming the accepted types, when ``text`` is none of them.
    """
    import pyarrow as pa

    cleaned = str(text).strip().lower()
    match = _PARAMETRIC.match(cleaned)
    if not match:
        raise ValueError(_unknown_type(text))
    name, args, inner = match["name"], match["args"], match["inner"]
    if inner is not None:
        if name != "list":
            raise ValueError(_unknown_type(text))
        if _depth >= _LIST_DEPTH:
            raise ValueError(f"lists nested more than {_LIST_DEPTH} deep; expected e.g. list<int64>")
        return pa.list_(parse_type(inner, _depth + 1))
    if args is None and name in _SIMPLE:
        simple = _SIMPLE[name]
        if simple == "time64us":
            return pa.time64("us")
        if simple == "json":
            return pa.json_(pa.string())
        return getattr(pa, simple)()
    parts = [p.strip() for p in (args or "").split(",") if p.strip()]
    if name == "timestamp":
        unit = parts[0] if parts else "us"
        if unit not in {"s", "ms", "us", "ns"}:
            raise ValueError(f"timestamp unit {unit!r} is not one of s, ms, us, ns")
        # Keep the time zone's own spelling (``Europe/Paris``), not the lowered one.
        tz = _original_arg(text, 1) if len(parts) > 1 else None
        return pa.timestamp(unit, tz=tz)
    if name in {"decimal", "numeric"}:
        try:
            precision, scale = (int(p) for p in (parts + ["0"])[:2]) if parts else (38, 9)
        except ValueError:
            raise ValueError(f"{text!r}: decimal takes integers, e.g. decimal(18, 2)") from None
        if not 1 <= precision <= 76 or not 0 <= scale <= precision:
            raise ValueError(f"{text!r}: need 1 <= precision <= 76 and 0 <= scale <= precision")
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    raise ValueError(_unknown_type(text))


def _original_arg(text: str, position: int) -> str:
    inside = text[text.index("(") + 1 : text.rindex(")")]
    return inside.split(",")[position].strip()


def _unknown_type(text: str) -> str:
    from etl.errors import did_you_mean

    hint = did_you_mean(str(text).strip().lower(), _SIMPLE)
    return f"{text!r} is not a known type{hint} (expected one of: {', '.join(TYPE_NAMES)})"


CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")


def parse_cron(text: str) -> str:
    """Check a cron expression; return it in five-field form (aliases such as ``@daily`` expanded).

    Raises:
        ValueError: naming the bad field and its position, when the expression is invalid.
    """
    from datetime import datetime

    from cronsim import CronSim, CronSimError

    expression = CRON_ALIASES.get(text.strip().lower(), text.strip())
    if expression.startswith("@"):
        raise ValueError(f"{text!r} is not a known cron alias; expected one of {', '.join(CRON_ALIASES)}")
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"{text!r} has {len(fields)} fields; a cron expression has 5 "
            "(minute hour day-of-month month day-of-week), e.g. '0 3 * * *', or an alias such as @daily"
        )
    for position, (name, value) in enumerate(zip(_CRON_FIELDS, fields, strict=True), start=1):
        probe = ["*"] * 5
        probe[position - 1] = value
        try:
            CronSim(" ".join(probe), datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"field {position} ({name}) {value!r} is invalid: {exc}") from None
    try:
        CronSim(expression, datetime(2026, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"{text!r} is invalid: {exc}") from None
    return expression


def parse_timezone(name: str) -> Any:
    """The :class:`zoneinfo.ZoneInfo` of an IANA time zone name (``UTC``, ``Europe/Paris``).

    Raises:
        ValueError: naming a close match, when there is no such zone.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file name
        from etl.errors import did_you_mean

        hint = did_you_mean(str(name), sorted(available_timezones()))
        raise ValueError(
            f"{name!r} is not a known time zone{hint}; expected an IANA name such as UTC or Europe/Paris"
        ) from None
