"""Whatever the casting layer accepts is the same value in the target; what it refuses is
exactly what the target can't hold. Checked over generated values (hypothesis), for the
``cast`` transform's conversion and for each sink's: the postgres sink against the real
PostgreSQL (what landed is read back), the bigquery sink's conversion of a batch, the duckdb
sink's table (read back).

Each property runs ``ETL_CAST_EXAMPLES`` examples (default 25, a few seconds in all);
``make test-casting-long`` runs them with many more.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from decimal import Decimal, localcontext
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from etl_plugins._casting import cast_batch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from etl import Chunk, StageContext
from etl.stages import Rejects, current_rejects
from tests.contract.framework import make_stage

EXAMPLES = int(os.environ.get("ETL_CAST_EXAMPLES", "25"))
FEW = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
UTC = dt.UTC
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "+05:30"]
UNITS = ["s", "ms", "us", "ns"]
PER = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
INTEGERS = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


class Collected(Rejects):
    def __init__(self) -> None:
        self.rows: dict[int, str] = {}

    def reject(self, rows, positions, *, stage, reasons, column=None) -> None:
        self.rows.update(zip(positions, reasons, strict=True))


def cast(array: pa.Array, target: pa.DataType, fmt: str | None = None) -> tuple[dict[int, object], dict[int, str]]:
    """The rows kept (position → the value cast, as Arrow's ``as_py`` or, for times and
    timestamps, their integer) and the rows refused (position → reason)."""
    collected = Collected()
    token = current_rejects.set(collected)
    try:
        batch = pa.record_batch({"v": array})
        out = cast_batch(batch, {"v": (target, fmt)}, StageContext(job="p", run_id="p", on_error="skip"))
    finally:
        current_rejects.reset(token)
    kept = [i for i in range(len(array)) if i not in collected.rows]
    column = out.column("v")
    assert column.type == target and len(column) == len(kept)
    if pa.types.is_timestamp(target) or pa.types.is_time(target):
        column = column.cast(pa.int64())
    return dict(zip(kept, column.to_pylist(), strict=True)), collected.rows


def bounds(t: pa.DataType) -> tuple[int, int]:
    if pa.types.is_signed_integer(t):
        return -(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1) - 1
    return 0, 2**t.bit_width - 1


EDGES = sorted({e + d for t in INTEGERS for e in bounds(t) for d in (-1, 0, 1)} | {0})


# -- integers ---------------------------------------------------------------------------------------


@FEW
@given(st.data())
def test_integers_at_every_width_are_kept_exactly_or_refused(data):
    source = data.draw(st.sampled_from([*INTEGERS, pa.string(), pa.decimal128(38, 0), pa.float64()]), "source")
    target = data.draw(st.sampled_from(INTEGERS), "target")
    lo, hi = (
        bounds(source) if source in INTEGERS else (-(2**53), 2**53) if source == pa.float64() else (-(2**70), 2**70)
    )
    number = st.one_of(st.sampled_from(EDGES), st.integers(-(2**70), 2**70)).filter(lambda v: lo <= v <= hi)
    values = data.draw(st.lists(number, min_size=1, max_size=20), "values")
    if source == pa.string():
        spelled = [data.draw(st.sampled_from([str(v), f"+{v}", f"00{v}"] if v >= 0 else [str(v)])) for v in values]
        array = pa.array(spelled)
    elif source == pa.decimal128(38, 0):
        array = pa.array([Decimal(v) for v in values], source)
    else:
        array = pa.array(values if source in INTEGERS else [float(v) for v in values], source)
    kept, refused = cast(array, target)
    low, high = bounds(target)
    for i, value in enumerate(values):
        if low <= value <= high:
            assert kept.get(i) == value, (value, refused.get(i))
        else:
            assert i in refused and str(target) in refused[i]


@FEW
@given(st.lists(st.sampled_from(["0x10", "0X1f", "-0x1", "1e3", " 1", "1 ", "1.0", "", "１", "1_000"]), min_size=1))
def test_text_that_is_no_integer_in_decimal_digits_is_refused(texts):
    kept, refused = cast(pa.array(texts), pa.int64())
    assert not kept and sorted(refused) == list(range(len(texts)))


# -- decimals ---------------------------------------------------------------------------------------


def fits(value: Decimal, precision: int, scale: int) -> bool:
    if not value.is_finite():
        return False
    exponent = value.normalize().as_tuple().exponent if value else 0
    return -exponent <= scale and abs(value) < Decimal(10) ** (precision - scale)


@st.composite
def decimal_values(draw, scale_max: int = 40) -> Decimal:
    digits = draw(st.integers(1, 40))
    unscaled = draw(st.integers(-(10**digits) + 1, 10**digits - 1))
    return Decimal(unscaled).scaleb(-draw(st.integers(0, scale_max)))


def trailing_zeros(value: Decimal) -> str:
    text = f"{value:f}"
    return text + ("0" if "." in text else ".00")


def float32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def shortest32(value: float) -> str:
    """The shortest text of a float32 (numpy's repr, as Python's repr spells a float)."""
    return repr(np.float32(value)).removeprefix("np.float32(").removesuffix(")")


@FEW
@given(st.data())
def test_decimals_at_their_precision_and_scale_edges_are_kept_exactly_or_refused(data):
    precision = data.draw(st.integers(1, 76), "precision")
    scale = data.draw(st.integers(0, precision), "scale")
    target = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    top = Decimal(10) ** (precision - scale) - Decimal(1).scaleb(-scale)  # the largest it holds
    edge = st.sampled_from([top, -top, top + Decimal(1).scaleb(-scale), Decimal(1).scaleb(-scale - 1), Decimal(0)])
    values = data.draw(st.lists(st.one_of(edge, decimal_values()), min_size=1, max_size=15), "values")
    source = data.draw(st.sampled_from(["text", "scientific", "trailing zeros", "decimal"]), "source")
    if source == "decimal":
        exponents = [v.as_tuple().exponent for v in values]
        held = max(-min(exponents), 0)
        digits = max(len(v.as_tuple().digits) + max(v.as_tuple().exponent, 0) for v in values) + held
        assume(digits <= 76)
        kind = pa.decimal128(max(digits, held, 1), held) if digits <= 38 else pa.decimal256(digits, held)
        array = pa.array(values, kind)
    else:
        spell = {"text": str, "scientific": lambda v: f"{v:e}", "trailing zeros": trailing_zeros}[source]
        array = pa.array([spell(v) for v in values])
    kept, refused = cast(array, target)
    for i, value in enumerate(values):
        if fits(value, precision, scale):
            assert kept.get(i) == value, (value, refused.get(i))
        else:
            assert i in refused, (value, kept.get(i))


@FEW
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20), st.integers(1, 38))
def test_floats_become_decimals_as_the_numbers_they_show(values, precision):
    scale = precision // 2
    kept, refused = cast(pa.array(values, pa.float64()), pa.decimal128(precision, scale))
    for i, value in enumerate(values):
        shown = Decimal(repr(value))
        if fits(shown, precision, scale):
            assert kept.get(i) == shown, (value, refused.get(i))
        else:
            assert i in refused


# -- floats -----------------------------------------------------------------------------------------


def written_back(text: str, value: float) -> bool:
    """The oracle: ``value`` written with as many significant digits as ``text`` is its number."""
    number = Decimal(text)
    if number.is_nan() or not np.isfinite(value):
        return number.is_nan() and np.isnan(value) or (number.is_infinite() and Decimal(value) == number)
    digits = len(number.normalize().as_tuple().digits) if number else 1
    return Decimal(format(value, f".{digits - 1}e")) == number


@FEW
@given(st.data())
def test_text_becomes_a_float_only_when_the_float_writes_back_as_it(data):
    target = data.draw(st.sampled_from([pa.float64(), pa.float32()]), "target")
    width = 64 if target == pa.float64() else 32
    floats = st.floats(width=width, allow_nan=True, allow_infinity=True)
    spellings = st.one_of(
        floats.map(repr),
        floats.filter(np.isfinite).map(lambda v: f"{v:.17g}"),
        st.tuples(floats.filter(np.isfinite), st.integers(1, 25)).map(lambda p: f"{p[0]:.{p[1]}g}"),
        decimal_values(scale_max=330).map(lambda d: f"{d:e}"),
        st.sampled_from(["1e400", "-1e400", "1e-400", "4.9406564584124654e-324", "1.7976931348623157e308", "-0"]),
    )
    texts = data.draw(st.lists(spellings, min_size=1, max_size=20), "texts")
    kept, refused = cast(pa.array(texts), target)
    for i, text in enumerate(texts):
        nearest = float32(float(text)) if width == 32 else float(text)
        if i in kept:
            assert written_back(text, kept[i]) and (kept[i] == nearest or np.isnan(nearest)), text
        elif width == 64:  # (a float32 parsed twice may round differently: refusals not checked)
            assert not written_back(text, nearest), (text, refused[i])


@FEW
@given(st.lists(st.floats(width=64, allow_nan=True, allow_infinity=True), min_size=1, max_size=20))
def test_floats_and_decimals_become_other_floats_when_they_show_the_same_number(values):
    kept, _ = cast(pa.array(values, pa.float64()), pa.float32())
    for i, value in kept.items():
        assert written_back(repr(values[i]), value), values[i]
    wide, refused = cast(pa.array([np.float32(v) for v in values if abs(v) < 3e38], pa.float32()), pa.float64())
    assert not refused
    for value in wide.values():  # the float64 that shows the float32's number
        assert np.isnan(value) or Decimal(repr(value)) == Decimal(shortest32(value))
    decimals = [Decimal(repr(v)) for v in values if np.isfinite(v) and abs(v) < 1e20 and abs(v) > 1e-15 or v == 0]
    if decimals:
        with localcontext(prec=80):
            held = pa.array([d.quantize(Decimal("1e-18")) for d in decimals], pa.decimal128(38, 18))
        kept, refused = cast(held, pa.float64())
        for i, value in kept.items():
            assert written_back(str(held[i].as_py()), value)
        for i in refused:
            assert not written_back(str(held[i].as_py()), float(str(held[i].as_py())))


# -- booleans ---------------------------------------------------------------------------------------


@FEW
@given(st.lists(st.one_of(st.integers(-3, 3), st.floats(-2, 2)), min_size=1, max_size=20))
def test_numbers_are_booleans_only_when_0_or_1(values):
    array = pa.array([float(v) for v in values])
    kept, refused = cast(array, pa.bool_())
    for i, value in enumerate(values):
        assert (kept.get(i) == bool(value)) if value in (0, 1) else (i in refused)


# -- dates, times, timestamps -----------------------------------------------------------------------

DATE_FORMATS = ["%Y-%m-%d", "%d/%m/%Y", "%m/%d/%y", "%d %b %Y", "%A, %d %B %Y", "%Y-%j", "%Y%m%d", "%b %d %Y"]


@FEW
@given(st.lists(st.dates(dt.date(1969, 1, 1), dt.date(2068, 12, 31)), min_size=1, max_size=20), st.data())
def test_dates_written_by_a_format_read_back_as_themselves(days, data):
    fmt = data.draw(st.sampled_from(DATE_FORMATS), "format")
    kept, refused = cast(pa.array([d.strftime(fmt) for d in days]), pa.date32(), fmt)
    assert not refused and [kept[i] for i in range(len(days))] == days


@FEW
@given(
    st.lists(st.tuples(st.integers(1, 9999), st.integers(1, 12), st.integers(1, 31)), min_size=1, max_size=30),
    st.sampled_from(["{y:04d}-{m:02d}-{d:02d}|%Y-%m-%d", "{d}.{m}.{y:04d}|%d.%m.%Y", "{y:04d}{m:02d}{d:02d}|%Y%m%d"]),
)
def test_a_format_keeps_the_fields_written_or_refuses_them(fields, layout):
    spelling, fmt = layout.split("|")
    kept, refused = cast(pa.array([spelling.format(y=y, m=m, d=d) for y, m, d in fields]), pa.date32(), fmt)
    for i, (y, m, d) in enumerate(fields):
        try:
            real = dt.date(y, m, d)
        except ValueError:
            assert i in refused and "not a real date" in refused[i]
        else:
            assert kept.get(i) == real, refused.get(i)


def instant(wall: dt.datetime, offset_minutes: int, nanos: int) -> int:
    """Nanoseconds since the epoch of a wall-clock time at a UTC offset, exactly."""
    days = wall.date().toordinal() - dt.date(1970, 1, 1).toordinal()
    seconds = days * 86_400 + wall.hour * 3_600 + wall.minute * 60 + wall.second - offset_minutes * 60
    return seconds * 1_000_000_000 + nanos


@FEW
@given(
    st.lists(
        st.tuples(
            st.datetimes(dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30)).map(lambda d: d.replace(microsecond=0)),
            st.integers(-14 * 60, 14 * 60),
            st.text("0123456789", max_size=9),
        ),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(UNITS),
    st.sampled_from(ZONES),
    st.booleans(),
)
def test_timestamps_with_offsets_and_fractions_keep_their_instant_in_every_unit(rows, unit, zone, by_format):
    texts = []
    for wall, offset, fraction in rows:
        sign, hours, minutes = "+" if offset >= 0 else "-", abs(offset) // 60, abs(offset) % 60
        separator = ("." + fraction) if fraction else ""
        texts.append(f"{wall.year:04d}-{wall:%m-%d %H:%M:%S}{separator}{sign}{hours:02d}:{minutes:02d}")
    target = pa.timestamp(unit, zone)
    fractions = [f for _, _, f in rows]
    assume(not by_format or all(fractions))  # the format has %f
    kept, refused = cast(pa.array(texts), target, "%Y-%m-%d %H:%M:%S.%f%z" if by_format else None)
    for i, (wall, offset, fraction) in enumerate(rows):
        nanos = int(fraction.ljust(9, "0")) if fraction else 0
        exact = instant(wall, offset, nanos)
        fits = nanos % (1_000_000_000 // PER[unit]) == 0 and -(2**63) <= exact * PER[unit] // 10**9 < 2**63
        fits = fits and (unit != "ns" or -(2**63) <= exact < 2**63)
        if fits:
            assert kept.get(i) == exact * PER[unit] // 1_000_000_000, (texts[i], refused.get(i))
        else:
            assert i in refused, texts[i]


@FEW
@given(
    st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=20),
    st.sampled_from(UNITS),
    st.sampled_from([None, *ZONES]),
    st.sampled_from(UNITS),
    st.sampled_from([None, *ZONES]),
)
def test_timestamps_keep_their_instant_or_wall_clock_between_units_and_zones(values, unit, zone, to_unit, to_zone):
    if unit != "ns":  # within the years Python holds, to check wall clocks with zoneinfo
        values = [v % (250_000_000_000 * PER[unit]) for v in values]
    source, target = pa.timestamp(unit, zone), pa.timestamp(to_unit, to_zone)
    kept, refused = cast(pa.array(values, source), target)
    for i, value in enumerate(values):
        nanos = value * (1_000_000_000 // PER[unit])
        if (zone is None) != (to_zone is None):  # a wall clock, in the zone of the one that has it
            tz = ZoneInfo(zone or to_zone) if (zone or to_zone) != "+05:30" else dt.timezone(dt.timedelta(minutes=330))
            seconds, rest = divmod(nanos, 1_000_000_000)
            moment = dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=seconds)
            if zone is not None:  # zoned → naive: the wall clock, unless the zone sees it twice
                wall = moment.astimezone(tz).replace(tzinfo=None)
                twice = wall.replace(tzinfo=tz, fold=0).utcoffset() != wall.replace(tzinfo=tz, fold=1).utcoffset()
                expected = None if twice else instant(wall, 0, rest)
            else:  # naive → zoned: the instant of that wall clock, unless it is no single one
                wall = moment.replace(tzinfo=None)
                first, second = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
                offset = first.utcoffset()
                expected = (
                    None if offset != second.utcoffset() else instant(wall, offset // dt.timedelta(minutes=1), rest)
                )
        else:
            expected = nanos
        step = 1_000_000_000 // PER[to_unit]
        if expected is None or expected % step or not -(2**63) <= expected // step < 2**63:
            assert i in refused, (value, kept.get(i))
        else:
            assert kept.get(i) == expected // step, (value, refused.get(i))


@FEW
@given(
    st.lists(st.integers(0, 86_400 * 10**9 - 1), min_size=1, max_size=20),
    st.sampled_from(["us", "ns"]),
    st.sampled_from(["iso", "%H:%M:%S.%f", "%I:%M:%S.%f %p"]),
)
def test_times_of_day_read_back_as_themselves(nanos, unit, how):
    texts = []
    for n in nanos:
        seconds, fraction = divmod(n, 10**9)
        clock = dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60)
        pattern = "%H:%M:%S" if how != "%I:%M:%S.%f %p" else "%I:%M:%S"
        text = clock.strftime(pattern) + f".{fraction:09d}"
        texts.append(text + clock.strftime(" %p") if how == "%I:%M:%S.%f %p" else text)
    kept, refused = cast(pa.array(texts), pa.time64(unit), None if how == "iso" else how)
    for i, n in enumerate(nanos):
        if unit == "ns" or n % 1000 == 0:
            assert kept.get(i) == n // (1 if unit == "ns" else 1000), (texts[i], refused.get(i))
        else:
            assert i in refused


# -- the sinks --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_table():
    import psycopg

    from tests.contract.cases_postgres import DSN

    schema = f"etl_castprop_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
        con.execute(
            f'CREATE TABLE "{schema}".t (run text, row integer, i smallint, n numeric(12,4), r real, '
            "d double precision, ts timestamp(3), tz timestamptz, day date, b boolean, v varchar(4))"
        )
    yield DSN, f"{schema}.t"
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def sink_write(options: dict, batch: pa.RecordBatch, run_id: str) -> dict[int, str]:
    collected = Collected()
    token = current_rejects.set(collected)
    sink = make_stage("sink", options, run_id=run_id, on_error="skip")
    try:
        sink.prepare()
        sink.write(Chunk(0), iter([batch]))
        sink.finalize()
    finally:
        sink.close()
        current_rejects.reset(token)
    return collected.rows


ROWS = st.fixed_dictionaries(
    {
        "i": st.integers(-40_000, 40_000),
        "n": decimal_values(scale_max=6).map(str),
        "r": st.floats(width=64, allow_nan=False, allow_infinity=False),
        "d": decimal_values(scale_max=25).map(str),
        "ts": st.integers(0, 4_102_444_800_000_000),
        "tz": st.datetimes(
            dt.datetime(1900, 1, 1),
            dt.datetime(2100, 1, 1),
            timezones=st.sampled_from([UTC, ZoneInfo("Europe/Paris"), ZoneInfo("Asia/Kolkata")]),
        ),
        "day": st.tuples(st.integers(1, 9999), st.integers(1, 12), st.integers(1, 31)).map(
            lambda t: f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"
        ),
        "b": st.integers(-1, 2),
        "v": st.text("ab é", max_size=6),
    }
)


def pg_expected(row: dict) -> dict | None:
    """What the table must hold for ``row`` (column → value), or ``None``: refused."""
    n = Decimal(row["n"])
    try:
        day = dt.date.fromisoformat(row["day"])
    except ValueError:
        return None
    f32 = float32(row["r"])
    if not -32_768 <= row["i"] <= 32_767 or not fits(n, 12, 4) or not written_back(repr(row["r"]), f32):
        return None
    if (
        not np.isfinite(f32)
        or not written_back(row["d"], float(row["d"]))
        or row["ts"] % 1000
        or row["b"] not in (0, 1)
    ):
        return None
    if len(row["v"]) > 4:
        return None
    ts = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=row["ts"])
    return {
        "i": row["i"],
        "n": n,
        "r": f32,
        "d": float(row["d"]),
        "ts": ts,
        "tz": row["tz"],
        "day": day,
        "b": bool(row["b"]),
        "v": row["v"],
    }


@FEW
@given(st.lists(ROWS, min_size=1, max_size=12))
def test_what_the_postgres_sink_lands_is_the_value_it_was_given(pg_table, rows):
    import psycopg

    dsn, table = pg_table
    run = uuid.uuid4().hex
    batch = pa.record_batch(
        {
            "run": pa.array([run] * len(rows)),
            "row": pa.array(range(len(rows)), pa.int32()),
            "i": pa.array([r["i"] for r in rows], pa.int64()),
            "n": pa.array([r["n"] for r in rows]),
            "r": pa.array([r["r"] for r in rows], pa.float64()),
            "d": pa.array([r["d"] for r in rows]),
            "ts": pa.array([r["ts"] for r in rows], pa.timestamp("us")),
            "tz": pa.array([r["tz"] for r in rows], pa.timestamp("us", "Europe/Paris")),
            "day": pa.array([r["day"] for r in rows]),
            "b": pa.array([r["b"] for r in rows], pa.int64()),
            "v": pa.array([r["v"] for r in rows]),
        }
    )
    refused = sink_write({"type": "postgres", "dsn": dsn, "table": table}, batch, run)
    with psycopg.connect(dsn) as con:
        landed = con.execute(
            f"SELECT row, i, n, r, d, ts, tz, day, b, v FROM {table} WHERE run = %s ORDER BY row", [run]
        ).fetchall()
    names = ["i", "n", "r", "d", "ts", "tz", "day", "b", "v"]
    # A real comes back as its shortest text read as a float64 (1.0039062 for 1.00390625):
    # compared as the float32 it is.
    landed = {row: dict(zip(names, values, strict=True)) for row, *values in landed}
    for values in landed.values():
        values["r"] = float32(values["r"])
    for i, row in enumerate(rows):
        expected = pg_expected(row)
        if expected is None:
            assert i in refused and i not in landed, (row, landed.get(i))
        else:
            assert landed.get(i) == expected, (row, refused.get(i))


@FEW
@given(st.data())
def test_the_bigquery_sink_converts_a_batch_to_its_table_exactly(data):
    from etl_plugins.bigquery._sink_types import conform_plan
    from google.cloud.bigquery import SchemaField

    scale = data.draw(st.integers(0, 9), "scale")
    precision = data.draw(st.integers(max(scale, 1), scale + 29), "precision")
    columns = [
        SchemaField("i", "INT64"),
        SchemaField("n", "NUMERIC", precision=precision, scale=scale),
        SchemaField("big", "BIGNUMERIC"),
        SchemaField("f", "FLOAT64"),
        SchemaField("ts", "TIMESTAMP"),
        SchemaField("dt", "DATETIME"),
        SchemaField("t", "TIME"),
    ]
    size = data.draw(st.integers(1, 15), "rows")
    values = {
        "i": data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=size, max_size=size)),
        "n": data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=size, max_size=size)),
        "big": data.draw(st.lists(decimal_values(scale_max=20), min_size=size, max_size=size)),
        "f": data.draw(st.lists(st.floats(width=32), min_size=size, max_size=size)),
        "ts": data.draw(st.lists(st.integers(-(2**62), 2**62), min_size=size, max_size=size)),
        "dt": data.draw(st.lists(st.integers(-(2**62), 2**62), min_size=size, max_size=size)),
        "t": data.draw(st.lists(st.integers(0, 86_400 * 10**9 - 1), min_size=size, max_size=size)),
    }
    assume(all(abs(v) < 10**18 for v in values["big"]))  # decimal(38, 20)
    batch = pa.record_batch(
        {
            "i": pa.array(values["i"], pa.uint64()),
            "n": pa.array(values["n"], pa.int64()),
            "big": pa.array(values["big"], pa.decimal128(38, 20)),
            "f": pa.array(values["f"], pa.float32()),
            "ts": pa.array(values["ts"], pa.timestamp("ns", "Asia/Kolkata")),
            "dt": pa.array(values["dt"], pa.timestamp("ns")),
            "t": pa.array(values["t"], pa.time64("ns")),
        }
    )
    sink = make_stage("sink", {"type": "bigquery", "project": "p", "table": "d.t"}, on_error="skip")
    plan = conform_plan(batch.schema, columns, "bigquery")
    collected = Collected()
    token = current_rejects.set(collected)
    try:
        out = sink._conform(batch, plan)
    finally:
        current_rejects.reset(token)
    kept = [i for i in range(size) if i not in collected.rows]
    rows = out.to_pylist()
    assert len(rows) == len(kept)
    for j, (row, i) in enumerate(zip(rows, kept, strict=True)):
        assert row["i"] == values["i"][i] and row["n"] == values["n"][i] and row["big"] == values["big"][i]
        assert np.isnan(row["f"]) or Decimal(repr(row["f"])) == Decimal(shortest32(values["f"][i]))
        for column in ("ts", "dt", "t"):
            assert out.column(column).cast(pa.int64())[j].as_py() * 1000 == values[column][i]
    for i in collected.rows:  # refused: only what BigQuery's columns can't hold
        big_fits = fits(values["n"][i] * Decimal(1), precision, scale)
        whole = all(values[c][i] % 1000 == 0 for c in ("ts", "dt", "t"))
        in_range = all(-62_135_596_800 * 10**9 <= values[c][i] < 253_402_300_800 * 10**9 for c in ("ts", "dt"))
        assert values["i"][i] > 2**63 - 1 or not big_fits or not whole or not in_range, collected.rows[i]


@FEW
@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6), decimal_values(scale_max=4), st.integers(0, 2**62)), min_size=1, max_size=15
    )
)
def test_what_the_duckdb_sink_lands_is_the_value_it_was_given(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("duck") / "out.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t (row INTEGER, a INTEGER, b DECIMAL(9, 2), c TIMESTAMP)")
    batch = pa.record_batch(
        {
            "row": pa.array(range(len(rows)), pa.int32()),
            "a": pa.array([a for a, _, _ in rows], pa.float64()),
            "b": pa.array([str(b) for _, b, _ in rows]),
            "c": pa.array([c for _, _, c in rows], pa.timestamp("ns")),
        }
    )
    refused = sink_write({"type": "duckdb", "path": str(path), "table": "t"}, batch, "run")
    with duckdb.connect(str(path), read_only=True) as con:
        landed = {row: (a, b, c) for row, a, b, c in con.execute("SELECT row, a, b, epoch_us(c) FROM t").fetchall()}
    for i, (a, b, c) in enumerate(rows):
        if a == int(a) and -(2**31) <= a < 2**31 and fits(b, 9, 2) and c % 1000 == 0:
            assert landed.get(i) == (int(a), b, c // 1000), refused.get(i)
        else:
            assert i in refused and i not in landed
