"""Casting columns without ever altering a value: what can't be cast exactly is rejected, row by row.

Shared by the ``cast`` transform, by the stages that convert rows to a target's types (the
``postgres``, ``bigquery`` and ``duckdb`` sinks, the part files' sinks) and by the sources
that read text as typed values (``csv`` numbers, ``jsonl`` dates and times). Not a plugin.

A value is cast when the target holds the very same value, and refused otherwise (Arrow's safe
cast alone lets several changes through: each is named below where it is refused):

* Numbers stay the same number. Text, a decimal or a float of another width becomes a float
  when the float, written back with as many significant digits, is that number: ``0.1`` and
  ``0.10000000000000001`` yes (both the float 0.1), ``0.12345678901234567890``, ``1e400`` or
  ``1e-400`` no. A float is the number its shortest text shows (``0.1``, not
  ``0.1000000000000000055…``): a float32 ``0.1`` becomes the float64 ``0.1`` (Arrow:
  ``0.10000000149011612``), and a float becomes a decimal as that number, when the scale
  holds it (``2.5612`` to ``decimal(8, 2)`` is refused, not rounded). Text becomes a decimal
  only as the number written (Arrow wraps some numbers too big for the type into others).
  Integers are written in decimal digits: Arrow reads ``0x10`` as 16 and wraps
  ``0xFFFFFFFFFFFFFFFF`` to -1, so hexadecimal is refused.
* A number becomes a boolean only when it is 0 or 1 (Arrow makes 2 ``true``).
* Timestamps: between two zones, the same instant; without zones, the same wall clock; from
  no zone to a zone, the wall clock is taken in the target's zone, and back, the wall clock of
  the source's zone (a time the zone skips or sees twice is refused; zone rules from 2038 on
  per :mod:`._zones`). A timestamp becomes a date only at midnight (of its zone), never a
  time of day (the date would go).
* Text becomes a date, time or timestamp as ISO 8601 (read strictly: ``2026-02-30`` and
  ``24:00`` are refused; digits after the second beyond what the unit holds are refused unless
  zeros), or by a ``format`` (see :mod:`._timeformat`: read exactly, never normalized).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import PermanentError, StageContext

from ._timeformat import compile_format, parse
from ._zones import assume_zone, shown_value, wall_clock, zone_trouble


class Unfit(ValueError):
    """Values that can't be cast exactly: a mask over the array's rows, and why, row by row."""

    def __init__(self, mask: np.ndarray, reasons: list[str]) -> None:
        self.mask = mask
        self.reasons = reasons
        super().__init__(reasons[0] if reasons else "values that don't fit")


def cast_batch(
    batch: pa.RecordBatch,
    targets: Mapping[str, tuple[pa.DataType, str | None]],
    context: StageContext,
    *,
    received: pa.RecordBatch | None = None,
    positions: np.ndarray | None = None,
    checks: Mapping[str, Callable[[pa.Array], None]] | None = None,
) -> pa.RecordBatch:
    """``batch`` with each named column cast to its type (``(type, strptime format or None)``).

    Rows whose value doesn't fit are handed to ``context.reject`` (the run fails, or with
    ``on_error: skip`` they go to the rejects file, as the rows that arrived) and left out.
    When ``batch`` is what is left of the batch the stage ``received`` after other rows were
    rejected, ``positions`` says where each of its rows was in it. ``checks`` refuse more of a
    column's values once cast, by raising :class:`Unfit` (what the target's type would still
    change: :func:`digits_after_the_second`, :func:`characters`).
    """
    # Where each current row was in the batch this stage received: rejects name that row,
    # and record it as it arrived (not with the columns already cast).
    received = batch if received is None else received
    positions = np.arange(batch.num_rows) if positions is None else positions
    checks = checks or {}
    for column in dict.fromkeys([*targets, *checks]):
        target, fmt = targets.get(column, (batch.column(column).type, None))
        check = checks.get(column)
        if batch.column(column).type == target and fmt is None and check is None:
            continue
        convert = converter(target, fmt) if check is None else _checked(converter(target, fmt), check)
        while True:  # each round rejects at least one row, or ends
            array = batch.column(column)
            try:
                converted = convert(array)
                break
            except pa.ArrowNotImplementedError as exc:
                raise PermanentError(
                    f"{context.label}: cannot cast {column!r} from {array.type} to {target}: {exc}"
                ) from None
            except Unfit as exc:
                bad, reasons = np.flatnonzero(exc.mask), exc.reasons
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OverflowError) as exc:
                bad = np.array(failing_rows(array, convert), dtype=np.int64)
                if not len(bad):
                    raise PermanentError(f"{context.label}: casting {column!r} to {target} failed: {exc}") from None
                reasons = [reason(array, int(row), convert, target) for row in bad]
            context.reject(received.take(positions[bad]), positions[bad].tolist(), reasons, column=column)
            keep = np.ones(batch.num_rows, dtype=bool)
            keep[bad] = False
            batch = batch.filter(pa.array(keep))
            positions = positions[keep]
        batch = batch.set_column(batch.schema.get_field_index(column), column, converted)
    return batch


def _checked(convert: Callable[[pa.Array], pa.Array], check: Callable[[pa.Array], None]):
    def checked(array: pa.Array) -> pa.Array:
        converted = convert(array)
        check(converted)
        return converted

    return checked


def digits_after_the_second(digits: int, what: str) -> Callable[[pa.Array], None]:
    """A check refusing times and timestamps with more than ``digits`` digits after the second,
    which a column of type ``what`` (PostgreSQL's ``timestamp(3)``) would round."""

    def check(array: pa.Array) -> None:
        held = {"s": 0, "ms": 3, "us": 6, "ns": 9}[array.type.unit]
        if digits >= held:
            return
        finer = _mask(pc.not_equal(pc.remainder(array.cast(pa.int64()), 10 ** (held - digits)), 0), False)
        refuse(finer, lambda row: f"{shown_value(array, row)} has more digits after the second than {what} keeps")

    return check


def characters(limit: int, what: str) -> Callable[[pa.Array], None]:
    """A check refusing text longer than ``limit`` characters, which a column of type ``what``
    (``character varying(10)``) refuses, or cuts when the excess is spaces."""

    def check(array: pa.Array) -> None:
        longer = _mask(pc.greater(pc.utf8_length(_as_string(array)), limit), False)
        refuse(longer, lambda row: f"{shown_value(array, row)} is longer than {what} holds ({limit} characters)")

    return check


def converter(target: pa.DataType, fmt: str | None) -> Callable[[pa.Array], pa.Array]:
    """The exact conversion of an array to ``target``; text read by ``fmt`` when given."""
    if fmt is None:
        return lambda array: lossless_cast(array, target)
    try:
        time_format = compile_format(fmt, target)
    except ValueError as exc:  # the cast transform checks this when the job is validated
        raise PermanentError(str(exc)) from None

    def read(array: pa.Array) -> pa.Array:
        if not _is_text(array.type):
            raise pa.ArrowNotImplementedError(f"`format` applies to text columns, not {array.type}")
        parsed = parse(_as_string(array), time_format, target)
        if parsed.bad.any():
            raise Unfit(parsed.bad, [f"cannot cast to {target}: {why}" for why in parsed.reasons])
        return parsed.values

    return read


def lossless_cast(array: pa.Array, target: pa.DataType) -> pa.Array:
    """``array`` cast to ``target`` when every value stays the same (see the module's doc).

    Raises:
        Unfit: the rows whose values would change, each with its reason.
        pa.ArrowInvalid: values Arrow can't convert at all (``'x'`` to an integer).
        pa.ArrowNotImplementedError: a cast with no meaning (a date to a boolean).
    """
    source = array.type
    if source == target:
        return array
    if pa.types.is_dictionary(source):
        return lossless_cast(array.dictionary_decode(), target)
    if pa.types.is_dictionary(target):
        return lossless_cast(array, target.value_type).cast(target)
    if _is_list(source) and _is_list(target):
        return _cast_list(array, target)
    if _is_text(source) and not (_is_text(target) or pa.types.is_binary(target) or isinstance(target, pa.JsonType)):
        return _from_text(_as_string(array), target)
    if pa.types.is_floating(target) and (pa.types.is_floating(source) or pa.types.is_decimal(source)):
        return _to_float(array, target)
    if pa.types.is_decimal(target) and pa.types.is_integer(source):
        # Arrow refuses int64 → decimal(10, 0) outright, whatever the values: go through a
        # decimal wide enough for any integer, then narrow it value by value.
        wide = pa.decimal128(38, target.scale) if target.scale <= 18 else pa.decimal256(76, target.scale)
        return array.cast(wide, safe=True).cast(target, safe=True)
    if pa.types.is_decimal(target) and pa.types.is_floating(source):
        # As the number the float shows: Arrow alone rounds 2.5612 to 2.56, and turns 0.1 into
        # 0.1000000000000000055… at a scale of 20.
        return _from_text(array.cast(pa.string()), target)
    if pa.types.is_boolean(target) and (_is_number(source)):
        return _to_bool(array, target)
    if pa.types.is_timestamp(target) and (pa.types.is_timestamp(source) or pa.types.is_date(source)):
        return _to_timestamp(array, target)
    if pa.types.is_date(target) and pa.types.is_timestamp(source):
        return _to_date(array, target)
    if pa.types.is_time(target) and pa.types.is_timestamp(source):
        raise pa.ArrowNotImplementedError(
            "a timestamp cast to a time of day would lose its date; take the time of day with a `derive` "
            "transform (e.g. CAST(col AS TIME))"
        )
    return array.cast(target, safe=True)


# -- text ---------------------------------------------------------------------------------------

_HEX = r"^[+-]?0[xX]"
_ZONED = r"(?i)[t ]\d\d(:?\d\d(:?\d\d(\.\d+)?)?)?(z|[+-]\d\d(:?\d\d)?)$"
_OFFSET = r"(?i:z|[+-]\d\d(?::?\d\d)?)"


def _from_text(text: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_integer(target):
        hexadecimal = _mask(pc.match_substring_regex(text, _HEX), False)
        refuse(hexadecimal, lambda row: f"cannot cast to {target}: {text[row].as_py()!r} is not in decimal digits")
        return pc.replace_substring_regex(text, r"^\+(\d)", r"\1").cast(target, safe=True)  # +12 is 12
    if pa.types.is_floating(target):
        values = text.cast(target, safe=True)  # the nearest float, correctly rounded
        _refuse_changed_numbers(text, values, target)
        return values
    if pa.types.is_decimal(target):
        return _text_to_decimal(text, target)
    if pa.types.is_timestamp(target):
        return _text_to_timestamp(_trim_fraction(text), target)
    if pa.types.is_time(target):  # Arrow reads text as timestamps, and casts those to times

        def stamps(times: pa.Array) -> pa.Array:
            dated = _trim_fraction(pc.binary_join_element_wise("1970-01-01T", times, ""))
            return _text_to_timestamp(dated, pa.timestamp(target.unit))

        try:
            return stamps(text).cast(target)
        except pa.ArrowInvalid:
            first = (failing_rows(text, stamps) or [0])[0]
            raise pa.ArrowInvalid(
                f"{text[first].as_py()!r} is not a time of day such as 08:30:00 or 08:30:00.25"
            ) from None
    return text.cast(target, safe=True)


def _text_to_decimal(text: pa.Array, target: pa.DataType) -> pa.Array:
    """Text as a decimal, checked: Arrow reads some numbers too big for the type as others
    (11229318108390970000000 to decimal(38, 18) is 705708.637954751649021952) and some too
    small as 0 (2.3049299995636403e-95 to decimal(36, 18)), where it refuses the rest."""
    values = text.cast(target, safe=True)
    back = values.cast(pa.string())
    same = _mask(pc.equal(text, back), True)
    rest = np.flatnonzero(~same)
    if len(rest):  # spelled otherwise (12.5 is 12.50, 1e3 is 1000): the same number?
        same[rest] = _mask(pc.equal(number_key(text.take(rest)), number_key(back.take(rest))), False)
    refuse(~same, lambda row: f"cannot cast to {target}: {text[row].as_py()!r} doesn't fit {target}")
    return values


def _trim_fraction(text: pa.Array) -> pa.Array:
    """Times with the zeros ending their fraction of a second dropped (``10:00:00.1230`` →
    ``10:00:00.123``, ``10:00:00.000`` → ``10:00:00``): the same time, which Arrow then reads
    into a unit as coarse as its digits, where it refuses more digits than the unit holds."""
    text = pc.replace_substring_regex(text, rf"(:\d\d\.\d*?)0+({_OFFSET}?)$", r"\1\2")
    return pc.replace_substring_regex(text, rf"(:\d\d)\.({_OFFSET}?)$", r"\1\2")


def _text_to_timestamp(text: pa.Array, target: pa.DataType) -> pa.Array:
    """ISO 8601 text as ``target``. Without a zone in the target, text with an offset is refused
    (by Arrow); with one, text without an offset is a wall-clock time of the target's zone."""
    if target.tz is None:
        return text.cast(target, safe=True)
    zoned = pc.fill_null(pc.match_substring_regex(text, _ZONED), True)
    if pc.all(zoned).as_py():
        return text.cast(target, safe=True)
    naive = pc.if_else(zoned, pa.scalar(None, pa.string()), text).cast(pa.timestamp(target.unit), safe=True)
    wall_clock = _zoned(naive, target)
    if not pc.any(zoned).as_py():
        return wall_clock
    with_offset = pc.if_else(zoned, text, pa.scalar(None, pa.string())).cast(target, safe=True)
    return pc.if_else(zoned, with_offset, wall_clock)


# -- numbers ------------------------------------------------------------------------------------

_NUMBER = r"^(?P<sign>[+-]?)(?P<whole>\d*)(?:\.(?P<part>\d*))?(?:[eE](?P<exp>[+-]?\d{1,6}))?$"


def number_key(text: pa.Array) -> pa.Array:
    """Each number written in ``text`` as one spelling per number (``1.50``, ``+1.5`` and
    ``15e-1`` all ``15e-1``; zero ``0``; ``nan``, ``inf``, ``-inf``), null for text that is no
    number: equal keys, equal numbers."""
    return _number(text)[0]


def _number(text: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """:func:`number_key`, how many significant digits each number is written with, and the
    power of ten of its last one (-2 for ``1.25``)."""
    parts = pc.extract_regex(text, _NUMBER)
    whole, part = parts.field("whole"), parts.field("part")
    digits = pc.binary_join_element_wise(whole, part, "")
    lead = pc.utf8_ltrim(digits, "0")
    core = pc.utf8_rtrim(lead, "0")
    exp = pc.replace_substring(parts.field("exp"), "+", "")
    exp = pc.if_else(pc.equal(exp, ""), "0", exp).cast(pa.int64())
    exp = pc.add(pc.subtract(exp, pc.utf8_length(part).cast(pa.int64())), pc.utf8_length(lead).cast(pa.int64()))
    exp = pc.subtract(exp, pc.utf8_length(core).cast(pa.int64()))
    sign = pc.if_else(pc.equal(parts.field("sign"), "-"), "-", "")
    key = pc.binary_join_element_wise(sign, core, "e", exp.cast(pa.string()), "")
    key = pc.if_else(pc.equal(core, ""), "0", key)
    key = pc.if_else(pc.equal(digits, ""), pa.scalar(None, pa.string()), key)
    lower = pc.utf8_lower(text)
    key = pc.if_else(pc.match_substring_regex(lower, r"^[+-]?nan$"), "nan", key)
    key = pc.if_else(pc.match_substring_regex(lower, r"^\+?inf(inity)?$"), "inf", key)
    key = pc.if_else(pc.match_substring_regex(lower, r"^-inf(inity)?$"), "-inf", key)
    return key, pc.utf8_length(core), exp


#: Significant digits that any number written with at most as many keeps through a float of
#: each width (DBL_DIG, FLT_DIG; half precision 3), and the smallest normal float of each
#: (below it, fewer digits are kept).
_DIGITS = {16: 3, 32: 6, 64: 15}
_NORMAL = {16: 6.103515625e-05, 32: 1.1754943508222875e-38, 64: 2.2250738585072014e-308}


def _refuse_changed_numbers(shown: pa.Array, floats: pa.Array, target: pa.DataType) -> None:
    """Refuse the rows whose number ``shown`` (text, or a decimal's or a float's text) the float
    in ``floats`` doesn't keep: a float keeps a number when, written back with as many
    significant digits as the number has, it is that number. So ``0.1`` and
    ``0.10000000000000001`` (17 digits, as some writers give every float64) are both the float
    0.1, but ``0.12345678901234567890`` is no float64, ``1e400`` no float (Arrow: inf) and
    ``1e-400`` neither (Arrow: 0)."""
    limit, normal = _DIGITS[target.bit_width], _NORMAL[target.bit_width]
    # Text too short to hold more digits than the float keeps (of a float in the normal range)
    # is kept at once; the rest is written back at the scale of its last digit, as decimals.
    regular = pc.and_(pc.is_finite(floats), pc.greater_equal(pc.abs(floats), normal))
    kept = _mask(pc.and_(pc.less_equal(pc.utf8_length(shown), limit), regular), False)
    kept |= ~shown.is_valid().to_numpy(zero_copy_only=False)
    rest = np.flatnonzero(~kept)
    if len(rest):  # the float's shortest text, as Arrow spells it (repr() mostly does too)?
        kept[rest] = _mask(pc.equal(shown.take(rest), floats.take(rest).cast(pa.string())), False)
        rest = np.flatnonzero(~kept)
    if len(rest):
        same = np.zeros(len(rest), dtype=bool)
        unknown = _written_back_at(shown.take(rest), floats.take(rest), same)
        kept[rest] = same
        for row in rest[unknown]:  # beyond what decimals hold (inf, nan, 1e-300): one by one
            kept[row] = _written_back(shown[row].as_py(), floats[row].as_py())

    def why(row: int) -> str:
        value, nearest = shown_value(shown, row).strip("'"), shown_value(floats, row)
        if nearest in ("inf", "-inf") or nearest in ("0", "-0"):
            return f"cannot cast to {target}: {value} is beyond the range of {target}"
        return f"cannot cast to {target}: {target} can't hold {value} exactly (the nearest is {nearest})"

    refuse(~kept, why)


def _written_back_at(shown: pa.Array, floats: pa.Array, same: np.ndarray) -> np.ndarray:
    """Whether each float, written back down to the digit that its number ends on, is that
    number, marked in ``same``; returns the rows it can't tell. Arrow casts a float to a
    decimal correctly rounded, and text to a decimal exactly, so the two decimals at that
    scale are equal exactly when the float writes back as the number."""
    scales = _scales(shown)
    # A decimal256 at the scale holds both when 70 digits reach the number (Arrow crashes
    # casting a float to a scale beyond its precision: scales stay within ±56).
    magnitude = np.abs(np.nan_to_num(floats.to_numpy(zero_copy_only=False).astype(np.float64), nan=np.inf))
    small = (np.abs(scales) <= 56) & (magnitude < np.power(10.0, 70 - np.clip(scales, -56, 56)))
    for scale in np.unique(scales[small]):
        rows = np.flatnonzero((scales == scale) & small)
        try:
            kind = pa.decimal256(76, int(max(scale, 0)))
            written = shown.take(rows).cast(kind)
            back = floats.take(rows).cast(kind)
            if scale < 0:  # whole numbers: Arrow rounds a float to tens or more wrongly, so round the integer
                back = pc.round(back, ndigits=int(scale), round_mode="half_to_even")
        except (pa.ArrowInvalid, ValueError, OverflowError):
            small[rows] = False
            continue
        same[rows] = _mask(pc.equal(written, back), False)
    return ~small


def _scales(text: pa.Array) -> np.ndarray:
    """The scale of each number written in ``text``: the power of ten of its last significant
    digit, negated (``1.2500``: 2; ``1e-3``: 3; ``1200`` and ``1200.00``: -2; zero: 0; text
    that is no plain number: anything, which the decimals then refuse)."""

    def length(array: pa.Array) -> np.ndarray:
        return pc.utf8_length(array).to_numpy(zero_copy_only=False).astype(np.int64)

    dot = pc.find_substring(text, ".").to_numpy(zero_copy_only=False).astype(np.int64)
    fraction = pc.utf8_rtrim(text, "0")  # 1.25 of 1.2500; 1200. of 1200.00
    whole = pc.utf8_rtrim(pc.utf8_rtrim(fraction, "."), "0")  # 12 of 1200 and of 1200.00
    nothing = _mask(pc.match_substring_regex(whole, r"^[+-]?\.?$"), False)  # all zeros: 0, 0.00
    in_fraction = (dot >= 0) & (length(fraction) > dot + 1)
    digits_before = np.where(dot >= 0, dot, length(text))
    scales = np.where(in_fraction, length(fraction) - dot - 1, length(whole) - digits_before)
    scales = np.where(nothing, 0, scales)
    exponent = np.flatnonzero(_mask(pc.match_substring_regex(text, "[eE]"), False))
    if len(exponent):  # 1.5e-3: from the number's parts
        last = _number(text.take(exponent))[2]
        scales[exponent] = -pc.fill_null(last, -99).to_numpy(zero_copy_only=False)
    return scales


def _written_back(text: str, value: float) -> bool:
    """Whether ``value`` written with as many significant digits as ``text`` is its number."""
    from decimal import Decimal, InvalidOperation

    try:
        number = Decimal(text)
    except InvalidOperation:
        return False
    if not number.is_finite() or not math.isfinite(value):
        return number.is_nan() == math.isnan(value) and (number.is_nan() or number == Decimal(value))
    digits = len(number.normalize().as_tuple().digits) if number else 1
    return Decimal(format(float(value), f".{digits - 1}e")) == number


def _to_float(array: pa.Array, target: pa.DataType) -> pa.Array:
    shown = array.cast(pa.string())  # a float's shortest text, or a decimal's digits
    if pa.types.is_floating(array.type) and target.bit_width >= array.type.bit_width:
        # The wider float that shows the same number: a float32 0.1 is 0.1, not Arrow's
        # 0.10000000149011612 (every float32's text has few enough digits to be kept).
        return shown.cast(target)
    # Arrow divides a decimal in floating point (0.1 would become 0.09999999999999999): the
    # text is read correctly rounded instead.
    floats = shown.cast(target) if pa.types.is_decimal(array.type) else array.cast(target, safe=False)
    _refuse_changed_numbers(shown, floats, target)
    return floats


def _to_bool(array: pa.Array, target: pa.DataType) -> pa.Array:
    values = array.cast(target, safe=True)
    same = _mask(pc.equal(values.cast(array.type), array), True)
    refuse(~same, lambda row: f"cannot cast to bool: {shown_value(array, row)} is neither 0 nor 1")
    return values


# -- dates and times ----------------------------------------------------------------------------


def _to_timestamp(array: pa.Array, target: pa.DataType) -> pa.Array:
    source = array.type
    if pa.types.is_date(source):  # midnight: a wall clock
        naive = array.cast(pa.timestamp(target.unit), safe=True)
        return naive if target.tz is None else _zoned(naive, target)
    if (source.tz is None) == (target.tz is None):  # the same instant, or the same wall clock
        return array.cast(target, safe=True)
    if source.tz is None:
        return _zoned(array.cast(pa.timestamp(target.unit), safe=True), target)
    return _wall_clock(array).cast(target, safe=True)


def _zoned(naive: pa.Array, target: pa.DataType) -> pa.Array:
    """Wall-clock times of the target's zone as instants of ``target``."""
    if target.tz == "UTC":
        return naive.cast(target)
    zoned, unclear = assume_zone(naive, target.tz)
    refuse(unclear, lambda row: f"cannot cast to {target}: {zone_trouble(naive, row, target.tz)}")
    return zoned.cast(target)


def _wall_clock(array: pa.Array) -> pa.Array:
    """The wall-clock time of each instant in its own zone, refusing those the zone sees twice
    (once the zone is gone, which of the two was meant can't be told)."""
    tz = array.type.tz
    local = wall_clock(array)
    if tz == "UTC":
        return local
    _, unclear = assume_zone(local, tz)
    refuse(
        unclear,
        lambda row: (
            f"cannot cast to a timestamp without a time zone: {shown_value(local, row)} happens twice in {tz} "
            "(the clocks go back), so without its zone it is not one instant"
        ),
    )
    return local


def _to_date(array: pa.Array, target: pa.DataType) -> pa.Array:
    local = array if array.type.tz is None else wall_clock(array)
    dates = local.cast(pa.date32())
    midnight = _mask(pc.equal(dates.cast(local.type), local), True)
    refuse(
        ~midnight,
        lambda row: f"cannot cast to {target}: {shown_value(local, row)} has a time of day, which a date can't hold",
    )
    return dates.cast(target)


# -- lists, helpers -----------------------------------------------------------------------------


def _cast_list(array: pa.Array, target: pa.DataType) -> pa.Array:
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)) or not (
        pa.types.is_list(target) or pa.types.is_large_list(target)
    ):
        return array.cast(target, safe=True)
    flat = array.flatten()
    try:
        values = lossless_cast(flat, target.value_type)
    except Unfit as exc:  # rows of the elements at fault, each with its first element's reason
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        mask, reasons = np.zeros(len(array), dtype=bool), {}
        for element, why in zip(np.flatnonzero(exc.mask), exc.reasons, strict=True):
            mask[parents[element]] = True
            reasons.setdefault(int(parents[element]), why)
        raise Unfit(mask, [reasons[int(row)] for row in np.flatnonzero(mask)]) from None
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    kind = pa.LargeListArray if pa.types.is_large_list(target) else pa.ListArray
    index = pa.int64() if pa.types.is_large_list(target) else pa.int32()
    return kind.from_arrays(pa.array(offsets, index), values, type=target, mask=array.is_null())


def refuse(mask: np.ndarray, reason: Callable[[int], str]) -> None:
    """Raise :class:`Unfit` for the rows of ``mask``, if any, each with ``reason(row)``."""
    if mask.any():
        raise Unfit(mask, [reason(int(row)) for row in np.flatnonzero(mask)])


def _mask(values: pa.Array, null: bool) -> np.ndarray:
    return pc.fill_null(values, null).to_numpy(zero_copy_only=False).astype(bool)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _as_string(array: pa.Array) -> pa.Array:
    return array if pa.types.is_string(array.type) else array.cast(pa.string())


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


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
    except Unfit as exc:
        return exc.reasons[0]
    except Exception as exc:  # the message Arrow gives for this very value, which it may not name
        message = str(exc).splitlines()[0]
        shown = shown_value(array, row)
        if shown not in message and shown.strip("'") not in message:
            message = f"{shown}: {message}"
        return f"cannot cast to {target}: {message}"
    return f"cannot cast to {target}"
