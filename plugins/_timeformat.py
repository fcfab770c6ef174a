"""Text → dates, times and timestamps by a ``strptime`` format, exactly.

Arrow's ``strptime`` normalizes what it can't hold (``2026-02-30`` becomes ``2026-03-02``,
``23:59:60`` the next minute, day 366 of 2026 a day of 2027) and ignores what it doesn't
check (a weekday that contradicts the date, a zone name). Here one regular expression made from
the format reads the fields of every value at once (Arrow's, vectorized); each value is built
from its fields, then formatted back into fields and kept only if they are the ones written.
Anything else is rejected with the reason: a value is the one written, or its row is refused.

Not a plugin itself: the ``cast`` transform uses it through :func:`._casting.converter`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._zones import assume_zone, zone_trouble

MONTHS = ["January", "February", "March", "April", "May", "June"]
MONTHS += ["July", "August", "September", "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]  # Arrow's day_of_week order

_COMPOSITE = {"T": "%H:%M:%S", "F": "%Y-%m-%d", "R": "%H:%M", "D": "%m/%d/%y"}
_DAY = r"3[01]|[12]\d|0[1-9]|[1-9]| [1-9]"
#: Each directive: the text it matches (case doesn't matter) and what it means.
DIRECTIVES: dict[str, tuple[str, str]] = {
    "Y": (r"\d{4}", "year, 4 digits"),
    "y": (r"\d\d", "year of the century, 2 digits (69–99: 1969–1999, 00–68: 2000–2068)"),
    "m": (r"1[0-2]|0[1-9]|[1-9]", "month, 1–12"),
    "b": ("|".join(m[:3] for m in MONTHS), "month name, abbreviated (Jan)"),
    "h": ("|".join(m[:3] for m in MONTHS), "same as %b"),
    "B": ("|".join(MONTHS), "month name (January)"),
    "d": (_DAY, "day of the month, 1–31"),
    "e": (_DAY, "same as %d"),
    "j": (r"36[0-6]|3[0-5]\d|[12]\d\d|0[1-9]\d|00[1-9]|[1-9]\d|0[1-9]|[1-9]", "day of the year, 1–366"),
    "a": ("|".join(d[:3] for d in DAYS), "weekday, abbreviated (Mon), checked against the date"),
    "A": ("|".join(DAYS), "weekday (Monday), checked against the date"),
    "H": (r"2[0-3]|[01]\d|\d", "hour, 0–23"),
    "I": (r"1[0-2]|0[1-9]|[1-9]", "hour on a 12-hour clock, 1–12 (with %p)"),
    "p": (r"AM|PM", "AM or PM (with %I)"),
    "M": (r"[0-5]\d|\d", "minute, 0–59"),
    "S": (r"6[01]|[0-5]\d|\d", "second, 0–59"),
    "f": (r"\d{1,9}", "fraction of a second, 1–9 digits"),
    "z": (r"Z|[+-]\d\d(?::?[0-5]\d)?", "UTC offset: Z, +02, +0200 or +02:00"),
    "Z": (r"UTC|GMT|Z", "the zone UTC (written UTC, GMT or Z); write other zones as offsets with %z"),
    "%": ("%", "a literal %"),
}
_DATE = set("YybhBdejaA")
_TIME_OF_DAY = set("HIpMSf")


@dataclass(frozen=True)
class TimeFormat:
    """A checked format: its regular expression and the directives it holds, each once."""

    text: str
    pattern: str
    groups: dict[str, str]  # directive letter → its group's name in the pattern

    def has(self, *letters: str) -> bool:
        return any(letter in self.groups for letter in letters)


def compile_format(fmt: str, target: pa.DataType) -> TimeFormat:
    """The format ``fmt`` for text cast to ``target``.

    Raises:
        ValueError: an unknown directive, one used twice, or a format that can't give a value
            of ``target`` (a date without a year, a zone for a timestamp without one, ...).
    """
    expanded = re.sub(r"%-?([TFRD])", lambda m: _COMPOSITE[m[1]], fmt)
    parts: list[str] = []
    groups: dict[str, str] = {}
    i = 0
    while i < len(expanded):
        char = expanded[i]
        if char != "%":
            parts.append(r"\s+" if char.isspace() else re.escape(char))
            i += 1
            while char.isspace() and i < len(expanded) and expanded[i].isspace():
                i += 1
            continue
        letter = expanded[i + 1 : i + 2]
        if letter == "-":  # %-d: glibc's "no padding"; one or two digits are read either way
            letter = expanded[i + 2 : i + 3]
            i += 1
        i += 2
        if letter not in DIRECTIVES:
            known = ", ".join(f"%{k}" for k in [*DIRECTIVES, *_COMPOSITE])
            shown = f"%{letter}" if letter else "a lone %"
            raise ValueError(f"format {fmt!r}: {shown} is not a directive the cast reads; it reads {known}")
        if letter == "%":
            parts.append("%")
            continue
        if letter in groups:
            raise ValueError(f"format {fmt!r} has %{letter} twice")
        groups[letter] = f"g{len(groups)}_{letter}"
        parts.append(f"(?P<{groups[letter]}>{DIRECTIVES[letter][0]})")
    time_format = TimeFormat(fmt, "(?i)^" + "".join(parts) + "$", groups)
    _check(time_format, target)
    return time_format


def _check(f: TimeFormat, target: pa.DataType) -> None:
    def twice(a: str, b: str, what: str) -> None:
        if f.has(a) and f.has(b):
            raise ValueError(f"format {f.text!r} has both %{a} and %{b}: one {what} is enough")

    pairs = [("Y", "y", "year"), ("d", "e", "day"), ("a", "A", "weekday"), ("z", "Z", "zone"), ("H", "I", "hour")]
    for a, b, what in pairs:
        twice(a, b, what)
    months = [m for m in "mbhB" if f.has(m)]
    if len(months) > 1:
        raise ValueError(f"format {f.text!r} has {' and '.join('%' + m for m in months)}: one month is enough")
    if f.has("I") != f.has("p"):
        raise ValueError(f"format {f.text!r}: %I (a 12-hour clock) and %p (AM or PM) go together; use %H for 0–23")
    if f.has("d", "e") and f.has("j") and not months:
        raise ValueError(f"format {f.text!r} has a day of the month without a month")
    if pa.types.is_time(target):
        if dated := [d for d in f.groups if d in _DATE or d in "zZ"]:
            raise ValueError(
                f"format {f.text!r}: a time of day ({target}) can't hold %{dated[0]}; "
                "cast to a timestamp to keep a date or a zone"
            )
        if not f.has("H", "I"):
            raise ValueError(f"format {f.text!r} gives no hour (%H, or %I with %p) for a {target}")
        return
    if not (pa.types.is_date(target) or pa.types.is_timestamp(target)):
        raise ValueError(f"`format` is for text cast to a date, time or timestamp, not to {target}")
    if not f.has("Y", "y"):
        raise ValueError(f"format {f.text!r} gives no year (%Y or %y) for a {target}")
    if f.has("z", "Z") and not (pa.types.is_timestamp(target) and target.tz):
        raise ValueError(
            f"format {f.text!r} reads a zone, which a {target} can't keep: "
            "cast to a timestamp with a time zone, e.g. timestamp(us, UTC)"
        )


# -- parsing ----------------------------------------------------------------------------------


class Fields:
    """The fields of each value, read from its text: numbers where written, else defaults."""

    def __init__(self, f: TimeFormat, text: pa.Array) -> None:
        self.format = f
        self.matched = pc.extract_regex(text, f.pattern)
        self.ok = pc.fill_null(self.matched.is_valid(), False).to_numpy(zero_copy_only=False)

    def text(self, letter: str) -> pa.Array:
        return pc.fill_null(self.matched.field(self.format.groups[letter]), "")

    def number(self, letter: str, default: int) -> np.ndarray:
        if letter not in self.format.groups:
            return np.full(len(self.ok), default, dtype=np.int64)
        written = pc.utf8_trim_whitespace(self.text(letter))
        written = pc.if_else(pa.array(self.ok), written, str(default))
        return written.cast(pa.int64()).to_numpy(zero_copy_only=False)

    def name(self, letter: str, names: list[str]) -> np.ndarray:
        """The 0-based position of a written name among ``names`` (full or abbreviated)."""
        found = pc.index_in(pc.utf8_lower(self.text(letter)), value_set=pa.array([n.lower() for n in names]))
        return pc.fill_null(found, 0).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class Parsed:
    """Values read by a format: in ``target``, with the rows that can't be kept and why."""

    values: pa.Array
    bad: np.ndarray  # a mask over the rows
    reasons: list[str]  # one per bad row, in order


def parse(text: pa.Array, f: TimeFormat, target: pa.DataType) -> Parsed:
    """``text`` read by ``f`` into ``target`` (a date, time or timestamp type)."""
    n = len(text)
    if not n:
        return Parsed(pa.array([], target), np.zeros(0, dtype=bool), [])
    fields = Fields(f, text)
    present = text.is_valid().to_numpy(zero_copy_only=False)
    why: dict[int, str] = {}

    def refuse(mask: np.ndarray, reason) -> None:
        for row in np.flatnonzero(mask & present):
            why.setdefault(int(row), reason(int(row)))

    refuse(~fields.ok, lambda row: f"{text[row].as_py()!r} doesn't match the format {f.text!r}")
    ok = fields.ok & present

    year = fields.number("Y", 1970)
    if f.has("y"):
        short = fields.number("y", 70)
        year = np.where(short < 69, 2000 + short, 1900 + short)
    if f.has("b", "h", "B"):
        month = fields.name(next(m for m in "bhB" if f.has(m)), MONTHS if f.has("B") else [m[:3] for m in MONTHS]) + 1
    else:
        month = fields.number("m", 1)
    day = fields.number("d", 1) if f.has("d") else fields.number("e", 1)
    hour = fields.number("H", 0)
    if f.has("I"):
        pm = pc.equal(pc.utf8_lower(fields.text("p")), "pm").to_numpy(zero_copy_only=False)
        hour = fields.number("I", 12) % 12 + np.where(pm, 12, 0)
    minute, second = fields.number("M", 0), fields.number("S", 0)
    digits = fields.text("f") if f.has("f") else pa.array([""] * n, pa.string())
    nanos = pc.if_else(pa.array(ok), pc.utf8_rpad(digits, 9, "0"), "0").cast(pa.int64()).to_numpy(zero_copy_only=False)
    if f.has("j"):
        days = _days_from_civil(year, np.ones(n, np.int64), np.ones(n, np.int64)) + fields.number("j", 1) - 1
    else:
        days = _days_from_civil(year, month, day)

    unit = target.unit if pa.types.is_timestamp(target) or pa.types.is_time(target) else "s"
    per = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    seconds = days * 86_400 + hour * 3_600 + minute * 60 + second
    step = 1_000_000_000 // per
    finer = ok & (nanos % step != 0)
    refuse(finer, lambda row: f"{text[row].as_py()!r} has more digits after the second than {target} holds")
    limit = (2**63 - 1) // per - 2 * 86_400  # room for a UTC offset
    beyond = ok & (np.abs(seconds) > limit)
    refuse(beyond, lambda row: f"{text[row].as_py()!r} is outside what {target} can hold")
    ok &= ~beyond & (nanos % step == 0)

    local = np.where(ok, seconds, 0) * per + np.where(ok, nanos // step, 0)
    stamps = pa.array(local, type=pa.timestamp(unit), mask=~ok)
    # Format each value back into fields: what Arrow reads from it must be what was written.
    # (A field out of its range ran on into the next one: 2026-02-30 became 2026-03-02.)
    back = [
        ("second", pc.second(stamps), second),
        ("minute", pc.minute(stamps), minute),
        ("hour", pc.hour(stamps), hour),
    ]
    if f.has("j"):
        back.append(("day of the year", pc.day_of_year(stamps), fields.number("j", 1)))
    if not f.has("j") or f.has("m", "b", "h", "B"):
        back += [("day", pc.day(stamps), day), ("month", pc.month(stamps), month)]
    back.append(("year", pc.year(stamps), year))
    if f.has("a", "A"):
        weekday = fields.name("a", [d[:3] for d in DAYS]) if f.has("a") else fields.name("A", DAYS)
        back.append(("weekday", pc.day_of_week(stamps), weekday))
    for what, read, written in back:
        differs = ok & (pc.fill_null(read, -1).to_numpy(zero_copy_only=False) != written)
        refuse(differs, lambda row, what=what, read=read: _not_real(text, f.text, what, read, stamps, row))
        ok &= ~differs

    if pa.types.is_date(target):
        timed = ok & ((seconds % 86_400 != 0) | (nanos != 0))
        refuse(timed, lambda row: f"{text[row].as_py()!r} has a time of day, which a {target} can't hold")
        ok &= ~timed
        values = pa.array(np.where(ok, days, 0).astype(np.int32), type=pa.date32(), mask=~ok).cast(target)
    elif pa.types.is_time(target):
        values = pa.array(np.where(ok, local, 0), type=pa.timestamp(unit), mask=~ok).cast(target)
    elif target.tz is None:
        values = stamps
    elif f.has("z", "Z"):
        offsets = _offsets(fields, ok) if f.has("z") else np.zeros(n, np.int64)
        wide = ok & (np.abs(offsets) >= 24 * 60)
        refuse(wide, lambda row: f"{text[row].as_py()!r} has a UTC offset of a day or more")
        ok &= ~wide
        instants = np.where(ok, local - offsets * 60 * per, 0)
        values = pa.array(instants, type=pa.timestamp(unit, target.tz), mask=~ok)
    else:  # the written time is the target zone's wall clock
        values, unclear = assume_zone(pa.array(np.where(ok, local, 0), pa.timestamp(unit), mask=~ok), target.tz)
        refuse(unclear & ok, lambda row: f"{text[row].as_py()!r}: {zone_trouble(stamps, row, target.tz)}")
        ok &= ~unclear
    bad = present & ~ok
    return Parsed(values, bad, [why[row] for row in np.flatnonzero(bad)])


def _not_real(text: pa.Array, fmt: str, what: str, read: pa.Array, stamps: pa.Array, row: int) -> str:
    value, read = text[row].as_py(), read[row]
    if what == "second":
        return f"{value!r}: second 60 or 61 is a leap second, which no timestamp holds"
    if what == "weekday":
        return f"{value!r}: the weekday written is not the date's, a {DAYS[read.as_py()]}"
    shown = stamps.slice(row, 1).cast(pa.string())[0].as_py()
    return (
        f"{value!r} is not a real date or time: its {what} is out of range "
        f"(read with {fmt!r}, it would run on to {shown})"
    )


def _offsets(fields: Fields, ok: np.ndarray) -> np.ndarray:
    """Each written UTC offset in minutes east (``Z``: 0)."""
    written = pc.replace_substring(pc.utf8_upper(fields.text("z")), ":", "")
    written = pc.if_else(pa.array(ok) if isinstance(ok, np.ndarray) else ok, written, "+0000")
    written = pc.if_else(pc.equal(written, "Z"), "+0000", written)
    sign = np.where(pc.starts_with(written, "-").to_numpy(zero_copy_only=False), -1, 1)
    body = pc.utf8_rpad(pc.utf8_slice_codeunits(written, 1), 4, "0")
    hours = pc.utf8_slice_codeunits(body, 0, 2).cast(pa.int64()).to_numpy(zero_copy_only=False)
    minutes = pc.utf8_slice_codeunits(body, 2, 4).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return sign * (hours * 60 + minutes)


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days from 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm); a day past
    the end of its month runs on into the next, which the check afterwards refuses."""
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468
