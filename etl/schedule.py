"""Cron arithmetic for scheduled jobs: due slots, intervals, next fire times.

A *slot* is one moment a cron expression names (03:00 on 2026-11-28, in the job's time zone).
A run fired for a slot covers the *interval* from the slot before it up to the slot itself, so
that a daily job fired at midnight loads the day that just ended:
``{{ run.interval_start }}`` and ``{{ run.interval_end }}`` in a parameter's default.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from itertools import islice
from typing import Any

from etl.units import parse_timezone

__all__ = ["Interval", "due_slots", "interval_for", "latest_slot", "next_slots"]

Interval = tuple[dt.datetime, dt.datetime]


def _cron(expression: str, start: dt.datetime, reverse: bool = False) -> Iterator[dt.datetime]:
    from cronsim import CronSim

    return iter(CronSim(expression, start, reverse=reverse))


def _at(ts: float, timezone: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, parse_timezone(timezone))


def latest_slot(expression: str, timezone: str, now: float) -> dt.datetime | None:
    """The last slot at or before ``now`` (a Unix time)."""
    # cronsim steps strictly before its start and counts whole seconds: start just after now.
    start = _at(now, timezone).replace(microsecond=0) + dt.timedelta(seconds=1)
    return next(_cron(expression, start, reverse=True), None)


def due_slots(expression: str, timezone: str, after: float, now: float, limit: int = 1000) -> list[dt.datetime]:
    """The slots after ``after`` and at or before ``now``, oldest first: the newest ``limit`` of
    them when there are more (counted back from ``now``, so a long outage costs no more)."""
    found: list[dt.datetime] = []
    start = _at(now, timezone).replace(microsecond=0) + dt.timedelta(seconds=1)
    for slot in _cron(expression, start, reverse=True):
        if slot.timestamp() <= after or len(found) >= limit:
            break
        found.append(slot)
    return found[::-1]


def next_slots(expression: str, timezone: str, now: float, count: int = 3) -> list[dt.datetime]:
    """The next ``count`` slots after ``now``."""
    return list(islice(_cron(expression, _at(now, timezone)), count))


def interval_for(expression: str, slot: dt.datetime) -> Interval:
    """The interval a run fired for ``slot`` covers: from the slot before it to the slot."""
    before = next(_cron(expression, slot, reverse=True), slot)
    return before, slot


def run_context(schedule: str | None, timezone: str, now: float, interval: Any = None) -> dict[str, Any] | None:
    """What ``{{ run.* }}`` templates see: the interval a scheduled run was fired for, or, for
    a run started by hand, the latest interval that has ended. ``None`` without a schedule."""
    if interval is not None:
        return {
            "interval_start": dt.datetime.fromisoformat(interval["start"]),
            "interval_end": dt.datetime.fromisoformat(interval["end"]),
        }
    if schedule is None:
        return None
    slot = latest_slot(schedule, timezone, now)
    if slot is None:
        return None
    start, end = interval_for(schedule, slot)
    return {"interval_start": start, "interval_end": end}
