"""Wall-clock times of a time zone and instants, both ways, exactly.

Arrow's zone rules stop in 2037 (it reads the system's time zone files, which from then on
hold only a rule that Arrow doesn't apply): 2050-07-01 12:00 in Europe/Paris would be 11:00
UTC, not 10:00. Times from 2038 on are therefore converted one by one with Python's
``zoneinfo``, which applies the rule. Not a plugin itself: :mod:`._casting` and
:mod:`._timeformat` use it.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: 2038-01-01 in seconds from the epoch, less a day: from there on, Python says.
_LATE = 2_145_916_800 - 86_400
_PER = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_EPOCH = dt.datetime(1970, 1, 1)


def assume_zone(naive: pa.Array, tz: str) -> tuple[pa.Array, np.ndarray]:
    """Wall-clock times of the zone ``tz`` as instants, and which of them are no single instant:
    skipped when the clocks go forward, or seen twice when they go back."""
    earliest = pc.assume_timezone(naive, tz, ambiguous="earliest", nonexistent="earliest")
    latest = pc.assume_timezone(naive, tz, ambiguous="latest", nonexistent="latest")
    unclear = pc.fill_null(pc.not_equal(earliest, latest), False).to_numpy(zero_copy_only=False)
    late = _late(naive, tz)
    if not late.any():
        return earliest, unclear
    zone, per = _zone(tz), _PER[naive.type.unit]
    values = earliest.cast(pa.int64()).to_numpy(zero_copy_only=False).copy()
    walls = naive.cast(pa.int64()).to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(late):
        seconds, part = divmod(int(walls[row]), per)
        try:
            wall = _EPOCH + dt.timedelta(seconds=seconds)
        except OverflowError:  # beyond year 9999: no rules to apply
            unclear[row] = True
            continue
        first, second = wall.replace(tzinfo=zone, fold=0).utcoffset(), wall.replace(tzinfo=zone, fold=1).utcoffset()
        unclear[row] = first != second
        values[row] = (seconds - int(first.total_seconds())) * per + part
    mask = ~naive.is_valid().to_numpy(zero_copy_only=False)
    return pa.array(values, pa.int64(), mask=mask).cast(earliest.type), unclear


def wall_clock(zoned: pa.Array) -> pa.Array:
    """The wall-clock time of each instant in its own zone, without the zone."""
    local = pc.local_timestamp(zoned)
    late = _late(zoned, zoned.type.tz)
    if not late.any():
        return local
    zone, per = _zone(zoned.type.tz), _PER[zoned.type.unit]
    values = local.cast(pa.int64()).to_numpy(zero_copy_only=False).copy()
    instants = zoned.cast(pa.int64()).to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(late):
        seconds, part = divmod(int(instants[row]), per)
        try:
            moment = (_EPOCH + dt.timedelta(seconds=seconds)).replace(tzinfo=dt.UTC)
            offset = moment.astimezone(zone).utcoffset()
        except OverflowError:
            continue  # beyond year 9999: Arrow's answer, the last rule it knows
        values[row] = (seconds + int(offset.total_seconds())) * per + part
    mask = ~zoned.is_valid().to_numpy(zero_copy_only=False)
    return pa.array(values, pa.int64(), mask=mask).cast(local.type)


def _late(times: pa.Array, tz: str) -> np.ndarray:
    if tz == "UTC" or re.fullmatch(r"[+-]\d\d:\d\d", tz):
        return np.zeros(len(times), dtype=bool)
    limit = _LATE * _PER[times.type.unit]
    return pc.fill_null(pc.greater_equal(times.cast(pa.int64()), limit), False).to_numpy(zero_copy_only=False)


def _zone(tz: str):
    import zoneinfo

    return zoneinfo.ZoneInfo(tz)


def zone_trouble(naive: pa.Array, row: int, tz: str) -> str:
    """Why the wall-clock time ``naive[row]`` of ``tz`` is no single instant (for a reason)."""
    shown = shown_value(naive, row)
    try:
        wall_clock = naive.slice(row, 1).cast(pa.timestamp("us"), safe=False)[0].as_py()
    except (ValueError, OverflowError):  # beyond Python's years
        return f"{shown} is no single instant in {tz}"
    zone = _zone(tz)
    instant = wall_clock.replace(tzinfo=zone).astimezone(dt.UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall_clock:
        return f"{shown} happens twice in {tz} (the clocks go back): write it with its UTC offset"
    return f"{shown} doesn't exist in {tz} (the clocks go forward then)"


def shown_value(array: pa.Array, row: int) -> str:
    """``array[row]`` as a reason shows it: text quoted, anything else as Arrow writes it
    (which, unlike Python, holds nanoseconds and every year)."""
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return repr(array[row].as_py())
    try:
        return str(array.slice(row, 1).cast(pa.string())[0].as_py())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return str(array[row])
