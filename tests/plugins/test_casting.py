"""The casting layer keeps every value as it is or refuses it: formats, text, numbers, zones.

The examples here are the edges, each named; tests/plugins/test_casting_properties.py checks
the same rules over generated values.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pytest
from etl_plugins._casting import cast_batch, converter, lossless_cast

import etl
from etl import Chunk, ConfigErrors, JobFailed, StageContext
from etl.stages import Rejects, current_rejects
from tests.contract.framework import make_stage

PARIS = ZoneInfo("Europe/Paris")


def cast(values, target, source=None, fmt=None):
    return converter(target, fmt)(pa.array(values, source))


class Collected(Rejects):
    def __init__(self) -> None:
        self.rows: dict[int, str] = {}

    def reject(self, rows, positions, *, stage, reasons, column=None) -> None:
        self.rows.update(zip(positions, reasons, strict=True))


def refused(values, target, source=None, fmt=None) -> dict[int, str]:
    """The rows that casting (as the cast transform and the sinks do) refuses, with their reasons."""
    collected = Collected()
    token = current_rejects.set(collected)
    try:
        batch = pa.record_batch({"v": pa.array(values, source)})
        kept = cast_batch(batch, {"v": (target, fmt)}, StageContext(job="t", run_id="r", on_error="skip"))
    finally:
        current_rejects.reset(token)
    assert kept.num_rows == len(values) - len(collected.rows)
    return collected.rows


# -- the finding: a format never normalizes an impossible date -------------------------------------

CSV_JOB = """\
name: days
source: {{type: csv, path: days.csv, schema: {{d: string}}}}
transforms:
  - type: cast
    columns: {{d: {{type: date, format: "%Y-%m-%d"}}}}
sink: {{type: duckdb, path: out.duckdb, table: days}}
on_error: {on_error}
"""


def test_an_impossible_date_is_rejected_not_moved_to_march(tmp_path):
    Path("days.csv").write_text("id,d\n1,2026-02-28\n2,2026-02-30\n3,2024-02-29\n")
    with pytest.raises(JobFailed, match=r"'2026-02-30' is not a real date"):
        etl.run(etl.load_job(text=CSV_JOB.format(on_error="fail")))

    result = etl.run(etl.load_job(text=CSV_JOB.format(on_error="skip")))
    assert (result.rows_written, result.rows_rejected) == (2, 1)
    with duckdb.connect("out.duckdb", read_only=True) as con:
        assert con.execute("SELECT id, d FROM days ORDER BY id").fetchall() == [
            (1, dt.date(2026, 2, 28)),
            (3, dt.date(2024, 2, 29)),
        ]
    [line] = (Path(result.rejects_dir) / "chunk-00000.jsonl").read_text().splitlines()
    rejected = json.loads(line)
    assert rejected["record"] == {"id": 2, "d": "2026-02-30"}
    assert "cannot cast to date32[day]: '2026-02-30' is not a real date" in rejected["reason"]


@pytest.mark.parametrize(
    ("fmt", "text", "reason"),
    [
        ("%Y-%m-%d", "2026-02-30", "its day is out of range"),
        ("%Y-%m-%d", "2026-13-01", "doesn't match the format"),
        ("%Y-%m-%d", " 2026-01-01", "doesn't match the format"),
        ("%Y-%m-%d", "2026-01-01 ", "doesn't match the format"),
        ("%Y-%j", "2026-366", "its day of the year is out of range"),
        ("%Y-%m-%d %H:%M:%S", "2026-12-31 23:59:60", "leap second"),
        ("%Y-%m-%d %H:%M", "2026-01-01 24:00", "doesn't match the format"),
        ("%a %Y-%m-%d", "Tue 2026-01-05", "the weekday written is not the date's, a Monday"),
        ("%d %b %Y", "05 February 2026", "doesn't match the format"),  # %b is the abbreviation
        ("%Y-%m-%d %I:%M %p", "2026-01-01 13:00 PM", "doesn't match the format"),
        ("%Y-%m-%d %I:%M %p", "2026-01-01 00:00 AM", "doesn't match the format"),
        ("on %Y-%m-%d", "at 2026-01-01", "doesn't match the format"),
    ],
)
def test_a_format_refuses_what_is_not_the_date_written(fmt, text, reason):
    assert reason in refused([text], pa.timestamp("s"), fmt=fmt)[0]


@pytest.mark.parametrize(
    ("fmt", "text", "target", "value"),
    [
        ("%Y-%m-%d", "2026-2-5", pa.date32(), dt.date(2026, 2, 5)),  # %d and %m read one digit too
        ("%Y-%m-%-d", "2026-02-5", pa.date32(), dt.date(2026, 2, 5)),
        ("%d/%m/%y", "05/02/26", pa.date32(), dt.date(2026, 2, 5)),
        ("%d/%m/%y", "05/02/69", pa.date32(), dt.date(1969, 2, 5)),
        ("%d %b %Y", "05 feb 2026", pa.date32(), dt.date(2026, 2, 5)),  # names in any case
        ("%d %B %Y", "05 FEBRUARY 2026", pa.date32(), dt.date(2026, 2, 5)),
        ("%Y-%j", "2024-366", pa.date32(), dt.date(2024, 12, 31)),
        ("%A %Y-%m-%d", "Monday 2026-01-05", pa.date32(), dt.date(2026, 1, 5)),
        ("%Y-%m-%d %H:%M", "2026-01-01 00:00", pa.date32(), dt.date(2026, 1, 1)),
        ("%Y-%m", "2026-02", pa.date32(), dt.date(2026, 2, 1)),
        ("%Y-%m-%d %I:%M %p", "2026-01-01 12:30 am", pa.timestamp("s"), dt.datetime(2026, 1, 1, 0, 30)),
        ("%Y-%m-%d %I:%M %p", "2026-01-01 12:30 PM", pa.timestamp("s"), dt.datetime(2026, 1, 1, 12, 30)),
        ("%FT%T", "2026-02-05T10:00:00", pa.timestamp("us"), dt.datetime(2026, 2, 5, 10)),
        ("%Y%m%d%H%M", "202602051030", pa.timestamp("s"), dt.datetime(2026, 2, 5, 10, 30)),
        ("on %Y-%m-%d!", "ON 2026-01-01!", pa.date32(), dt.date(2026, 1, 1)),
        ("%Y-%m-%d  %H", "2026-01-01 10", pa.timestamp("s"), dt.datetime(2026, 1, 1, 10)),  # spaces: any
        ("%H:%M", "9:05", pa.time64("us"), dt.time(9, 5)),
        ("%H:%M:%S.%f", "09:05:00.25", pa.time64("us"), dt.time(9, 5, 0, 250_000)),
        ("%S.%f %M %H", "00.123456 05 09", pa.time64("us"), dt.time(9, 5, 0, 123_456)),
    ],
)
def test_a_format_reads_every_legitimately_written_value(fmt, text, target, value):
    assert cast([text, None], target, fmt=fmt).to_pylist() == [value, None]


def test_fractions_hold_as_many_digits_as_the_unit_and_zeros_beyond():
    text = ["2026-01-01 10:00:00.1", "2026-01-01 10:00:00.123000", "2026-01-01 10:00:00.123456789"]
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    nanos = cast(text, pa.timestamp("ns"), fmt=fmt).cast(pa.int64()).to_pylist()
    assert [n % 10**9 for n in nanos] == [100_000_000, 123_000_000, 123_456_789]
    assert cast(text[:2], pa.timestamp("ms"), fmt=fmt).to_pylist()[1] == dt.datetime(2026, 1, 1, 10, 0, 0, 123_000)
    assert refused(text, pa.timestamp("ms"), fmt=fmt) == {
        2: "cannot cast to timestamp[ms]: '2026-01-01 10:00:00.123456789' has more digits after the second "
        "than timestamp[ms] holds"
    }
    assert "outside what timestamp[ns] can hold" in refused(["2300-01-01"], pa.timestamp("ns"), fmt="%Y-%m-%d")[0]


def test_a_format_with_an_offset_gives_the_instant_written():
    fmt = "%Y-%m-%d %H:%M%z"
    text = ["2026-01-01 10:00+02:00", "2026-01-01 10:00Z", "2026-01-01 10:00-0530", "2026-01-01 10:00+01"]
    assert cast(text, pa.timestamp("s", "UTC"), fmt=fmt).to_pylist() == [
        dt.datetime(2026, 1, 1, h, m, tzinfo=dt.UTC) for h, m in [(8, 0), (10, 0), (15, 30), (9, 0)]
    ]
    assert cast(["2026-01-01 10:00 UTC"], pa.timestamp("s", "UTC"), fmt="%Y-%m-%d %H:%M %Z").to_pylist() == [
        dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    ]
    # A zone name other than UTC is refused: CST is three zones; write the offset.
    assert "doesn't match" in refused(["2026-01-01 10:00 CST"], pa.timestamp("s", "UTC"), fmt="%Y-%m-%d %H:%M %Z")[0]


def test_without_an_offset_a_format_reads_the_wall_clock_of_the_target_zone():
    target = pa.timestamp("s", "Europe/Paris")
    fmt = "%Y-%m-%d %H:%M"
    assert cast(["2026-06-01 12:00"], target, fmt=fmt).to_pylist() == [dt.datetime(2026, 6, 1, 12, tzinfo=PARIS)]
    reasons = refused(["2026-03-29 02:30", "2026-10-25 02:30", "2026-01-01 00:00"], target, fmt=fmt)
    assert "doesn't exist in Europe/Paris (the clocks go forward then)" in reasons[0]
    assert "happens twice in Europe/Paris (the clocks go back)" in reasons[1]
    assert list(reasons) == [0, 1]


@pytest.mark.parametrize(
    ("type_", "fmt", "message"),
    [
        ("date", "%Y-%m-%d %z", "reads a zone, which a date32[day] can't keep"),
        ("timestamp", "%Y-%m-%d %H:%M%z", "reads a zone, which a timestamp[us] can't keep"),
        ("time", "%Y-%m-%d %H:%M", "a time of day (time64[us]) can't hold %Y"),
        ("date", "%m-%d", "gives no year"),
        ("date", "%Y-%m-%d %Q", "%Q is not a directive the cast reads"),
        ("date", "%Y-%m-%d %", "a lone % is not a directive"),
        ("date", "%Y-%m-%d %d", "has %d twice"),
        ("timestamp", "%Y-%m-%d %I:%M", "%I (a 12-hour clock) and %p (AM or PM) go together"),
        ("int64", "%Y", "`format` is for text cast to a date, time or timestamp, not to int64"),
    ],
)
def test_a_format_that_cannot_give_the_type_is_a_config_error(write, type_, fmt, message):
    job = write(
        "job.yaml",
        f"""
        name: formats
        source: {{type: generate, rows: 1}}
        transforms:
          - type: cast
            columns: {{id: {{type: {type_}, format: "{fmt}"}}}}
        sink: {{type: duckdb, path: out.duckdb, table: t}}
        """,
    )
    with pytest.raises(ConfigErrors, match=r"job.yaml:5: transforms\[0\].columns.id") as info:
        etl.load_job(job)
    assert message in str(info.value)


# -- text, without a format --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target", "value"),
    [
        ("-0", pa.int8(), 0),
        ("0012", pa.int64(), 12),
        ("255", pa.uint8(), 255),
        ("1.50", pa.decimal128(3, 1), Decimal("1.5")),
        ("1E-1", pa.decimal128(3, 1), Decimal("0.1")),
        ("+1.5", pa.decimal128(3, 1), Decimal("1.5")),
        ("1e3", pa.float64(), 1000.0),
        ("0.10000000000000001", pa.float64(), 0.1),  # 17 digits, as some writers give every float
        ("0.30000000000000004", pa.float64(), 0.1 + 0.2),
        ("0.1", pa.float32(), pa.scalar(0.1, pa.float32()).as_py()),
        ("-Infinity", pa.float64(), float("-inf")),
        ("TRUE", pa.bool_(), True),
        ("0", pa.bool_(), False),
        ("2024-02-29", pa.date32(), dt.date(2024, 2, 29)),
        ("2026-01-01 10:00:00.1230", pa.timestamp("ms"), dt.datetime(2026, 1, 1, 10, 0, 0, 123_000)),
        ("2026-01-01 10:00:00.000", pa.timestamp("s"), dt.datetime(2026, 1, 1, 10)),
        ("2026-01-01T10:00:00+02:00", pa.timestamp("s", "UTC"), dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC)),
        ("2026-01-01 10:00:00", pa.timestamp("s", "Europe/Paris"), dt.datetime(2026, 1, 1, 10, tzinfo=PARIS)),
        ("10:00:00.5", pa.time64("us"), dt.time(10, 0, 0, 500_000)),
    ],
)
def test_text_becomes_the_value_it_writes(text, target, value):
    assert cast([text, None], target).to_pylist() == [value, None]


@pytest.mark.parametrize(
    ("text", "target", "reason"),
    [
        ("0x10", pa.int64(), "'0x10' is not in decimal digits"),
        ("0xFFFFFFFFFFFFFFFF", pa.int64(), "not in decimal digits"),  # Arrow: -1
        ("1e3", pa.int64(), "Failed to parse string: '1e3' as a scalar of type int64"),
        (" 12", pa.int64(), "Failed to parse string"),
        ("12.0", pa.int64(), "Failed to parse string"),
        ("256", pa.uint8(), "Failed to parse string: '256'"),
        ("1.55", pa.decimal128(3, 1), "'1.55': Rescaling Decimal value would cause data loss"),
        ("11229318108390970000000", pa.decimal128(38, 18), "doesn't fit decimal128(38, 18)"),  # Arrow: 705708.63…
        ("2.3049299995636403e-95", pa.decimal128(36, 18), "doesn't fit decimal128(36, 18)"),  # Arrow: 0
        ("1e3", pa.decimal128(3, 1), "does not fit in precision 3"),
        ("1e400", pa.float64(), "1e400 is beyond the range of double"),  # Arrow: inf
        ("1e-400", pa.float64(), "1e-400 is beyond the range of double"),  # Arrow: 0.0
        ("1e39", pa.float32(), "1e39 is beyond the range of float"),
        ("0.12345678901234567890", pa.float64(), "double can't hold 0.12345678901234567890 exactly"),
        ("0.10000000000000004", pa.float64(), "(the nearest is 0.10000000000000003)"),
        ("1.234567e-320", pa.float64(), "(the nearest is 1.2347e-320)"),  # subnormal: fewer digits
        ("0.123456789", pa.float32(), "(the nearest is 0.12345679)"),
        ("yes", pa.bool_(), "Failed to parse value: yes"),
        ("2", pa.bool_(), "Failed to parse value: 2"),
        ("2026-02-30", pa.date32(), "Failed to parse string: '2026-02-30'"),
        ("2026-01-01 10:00:00.1234", pa.timestamp("ms"), "Failed to parse string"),
        ("2026-01-01T10:00:00+02:00", pa.timestamp("us"), "expected no zone offset"),
        ("2026-01-01 23:59:60", pa.timestamp("s"), "Failed to parse string"),
        ("2026-03-29 02:30:00", pa.timestamp("s", "Europe/Paris"), "doesn't exist in Europe/Paris"),
        ("24:00:00", pa.time64("us"), "'24:00:00' is not a time of day"),
        ("10:00:00.1234567", pa.time64("us"), "'10:00:00.1234567' is not a time of day"),
    ],
)
def test_text_that_is_not_exactly_a_value_of_the_type_is_refused(text, target, reason):
    assert reason in refused(["1", text] if target == pa.int64() else [text], target).popitem()[1]


# -- numbers, booleans, times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "source", "target", "expected"),
    [
        # A float as the number it shows; Arrow alone gives 0.10000000000000000555 at scale 20.
        ([0.1, 2.25, 1e17, -0.0], pa.float64(), pa.decimal128(38, 20), ["0.1", "2.25", "1e17", "0"]),
        ([0.1, 1.5, -2.5e-38], pa.float64(), pa.float32(), [0.1, 1.5, -2.5e-38]),
        # A decimal read as the float nearest it; Arrow alone gives 0.09999999999999999.
        ([Decimal("0.1"), Decimal("12345.678")], pa.decimal128(10, 3), pa.float64(), [0.1, 12345.678]),
        ([0, 1, None], pa.int64(), pa.bool_(), [False, True, None]),
        ([1.0, 0.0], pa.float64(), pa.bool_(), [True, False]),
        ([2**53, -(2**53)], pa.int64(), pa.float64(), [2.0**53, -(2.0**53)]),
        ([[1.5, 2.25], None, []], pa.list_(pa.float64()), pa.list_(pa.decimal128(8, 2)), [["1.5", "2.25"], None, []]),
    ],
)
def test_numbers_are_cast_as_the_numbers_they_show(values, source, target, expected):
    out = lossless_cast(pa.array(values, source), target)
    assert out.type == target
    if pa.types.is_decimal(target):
        assert out.to_pylist() == [Decimal(v) for v in expected]
    elif pa.types.is_list(target):
        assert out.to_pylist() == [None if v is None else [Decimal(x) for x in v] for v in expected]
    elif target == pa.float32():
        assert out.cast(pa.string()).to_pylist() == [str(v) for v in expected]  # the float32 shows it
    else:
        assert out.to_pylist() == expected


@pytest.mark.parametrize(
    ("values", "source", "target", "reason"),
    [
        ([2.5612], pa.float64(), pa.decimal128(8, 2), "2.5612: Rescaling Decimal value would cause data loss"),
        ([float("nan")], pa.float64(), pa.decimal128(8, 2), "'nan' is not a valid decimal128"),
        ([0.123456789], pa.float64(), pa.float32(), "float can't hold 0.123456789 exactly"),
        ([1e39], pa.float64(), pa.float32(), "beyond the range of float"),
        ([Decimal("0.12345678901234567890")], pa.decimal128(38, 20), pa.float64(), "double can't hold"),
        ([2**53 + 1], pa.int64(), pa.float64(), "not in range"),
        ([300], pa.int64(), pa.int8(), "Integer value 300 not in range: -128 to 127"),
        ([2], pa.int64(), pa.bool_(), "2 is neither 0 nor 1"),  # Arrow: true
        ([0.5], pa.float64(), pa.bool_(), "0.5 is neither 0 nor 1"),
        ([1.5], pa.float64(), pa.int64(), "was truncated"),
        ([Decimal("1.23")], pa.decimal128(5, 2), pa.decimal128(3, 1), "Rescaling Decimal value would cause data loss"),
        ([[1.5], [2.5612]], pa.list_(pa.float64()), pa.list_(pa.decimal128(8, 2)), "data loss"),
    ],
)
def test_numbers_that_would_change_are_refused(values, source, target, reason):
    reasons = refused(values, target, source)
    assert list(reasons) == [len(values) - 1] and reason in reasons[len(values) - 1]


def test_timestamps_keep_their_instant_or_their_wall_clock():
    naive = pa.array([dt.datetime(2026, 1, 1, 10), dt.datetime(2026, 7, 1, 10)], pa.timestamp("us"))
    paris = lossless_cast(naive, pa.timestamp("us", "Europe/Paris"))
    assert paris.to_pylist() == [dt.datetime(2026, 1, 1, 10, tzinfo=PARIS), dt.datetime(2026, 7, 1, 10, tzinfo=PARIS)]
    assert lossless_cast(paris, pa.timestamp("us")).equals(naive)  # and back: the same wall clock
    utc = lossless_cast(paris, pa.timestamp("ms", "UTC"))
    assert utc.to_pylist() == [dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC), dt.datetime(2026, 7, 1, 8, tzinfo=dt.UTC)]
    wall = [dt.datetime(2026, 1, 1, 9), dt.datetime(2026, 7, 1, 8)]
    assert lossless_cast(utc, pa.timestamp("ms")).to_pylist() == wall
    midnight = pa.array([dt.datetime(2026, 1, 1, tzinfo=PARIS)], pa.timestamp("us", "Europe/Paris"))
    assert lossless_cast(midnight, pa.date32()).to_pylist() == [dt.date(2026, 1, 1)]  # the zone's midnight
    day = pa.array([dt.date(2026, 1, 1)], pa.date32())
    paris_s = pa.timestamp("s", "Europe/Paris")
    assert lossless_cast(day, paris_s).equals(midnight.cast(paris_s))


def test_timestamps_that_would_change_are_refused():
    fold = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)  # 02:30 in Paris, which happens twice
    assert "happens twice in Europe/Paris" in refused([fold], pa.timestamp("us"), pa.timestamp("us", "Europe/Paris"))[0]
    gap = dt.datetime(2026, 3, 29, 2, 30)
    assert "doesn't exist in Europe/Paris" in refused([gap], pa.timestamp("us", "Europe/Paris"), pa.timestamp("us"))[0]
    noon = dt.datetime(2026, 1, 1, 11, tzinfo=PARIS)
    assert "has a time of day" in refused([noon], pa.date32(), pa.timestamp("us", "Europe/Paris"))[0]
    tiny = dt.datetime(2026, 1, 1, 0, 0, 0, 1)
    assert "would lose data" in refused([tiny], pa.timestamp("ms"), pa.timestamp("us"))[0]
    assert "out of bounds" in refused([dt.datetime(3000, 1, 1)], pa.timestamp("ns"), pa.timestamp("us"))[0]
    with pytest.raises(pa.ArrowNotImplementedError, match="would lose its date"):
        lossless_cast(pa.array([dt.datetime(2026, 1, 1, 10)]), pa.time64("us"))


# -- the sinks convert rows by the same rules -------------------------------------------------------


@pytest.fixture
def pg_schema():
    import psycopg

    from tests.contract.cases_postgres import DSN

    name = f"etl_cast_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{name}"')
    yield name
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def sink_rows(options: dict, batch: pa.RecordBatch) -> dict[int, str]:
    """Write ``batch`` with ``on_error: skip``; the rows rejected, with their reasons."""
    collected = Collected()
    token = current_rejects.set(collected)
    sink = make_stage("sink", options, on_error="skip")
    try:
        sink.prepare()
        written = sink.write(Chunk(0), iter([batch]))
        sink.finalize()
    finally:
        sink.close()
        current_rejects.reset(token)
    assert written == batch.num_rows - len(collected.rows)
    return collected.rows


def test_the_postgres_sink_refuses_what_its_column_types_would_round_or_cut(pg_schema):
    import psycopg

    from tests.contract.cases_postgres import DSN

    table = f"{pg_schema}.exact"
    with psycopg.connect(DSN, autocommit=True) as con:
        con.execute(
            f'CREATE TABLE "{pg_schema}".exact (i integer, t3 timestamp(3), z0 timestamptz(0), c varchar(3), '
            "b boolean, r real)"
        )
    ms = dt.datetime(2026, 1, 1, 10, 0, 0, 123_000)
    batch = pa.record_batch(
        {
            "i": pa.array([1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0]),  # PostgreSQL alone: 1.5 → 2
            "t3": pa.array([ms, ms, ms.replace(microsecond=123_400), ms, ms, ms, ms]),  # PostgreSQL: .123
            "z0": pa.array(["2026-01-01T10:00:00Z"] * 3 + ["2026-01-01T10:00:00.5Z"] + ["2026-01-01T10:00:00Z"] * 3),
            "c": pa.array(["abc", "abc", "abc", "abc", "abc  ", "abc", "ab"]),  # PostgreSQL: "abc  " → "abc"
            "b": pa.array([1, 1, 1, 1, 1, 2, 0]),
            "r": pa.array([0.1] * 6 + [0.123456789]),
        }
    )
    rejected = sink_rows({"type": "postgres", "dsn": DSN, "table": table}, batch)
    assert sorted(rejected) == [1, 2, 3, 4, 5, 6]
    assert "cannot cast to int32" in rejected[1]
    assert (
        "2026-01-01 10:00:00.123400 has more digits after the second than timestamp(3) without time zone"
        in (rejected[2])
    )
    assert "has more digits after the second than timestamp(0) with time zone keeps" in rejected[3]
    assert "'abc  ' is longer than character varying(3) holds (3 characters)" in rejected[4]
    assert "2 is neither 0 nor 1" in rejected[5]
    assert "real can't hold" not in rejected[6] and "float can't hold 0.123456789 exactly" in rejected[6]
    with psycopg.connect(DSN) as con:
        assert con.execute(f"SELECT i, t3, c, b FROM {table}").fetchall() == [(1, ms, "abc", True)]


def test_the_duckdb_sink_converts_rows_to_its_table_exactly_first():
    with duckdb.connect("out.duckdb") as con:
        con.execute("CREATE TABLE t (a INTEGER, b DECIMAL(5, 2), c TIMESTAMP, d INTEGER[])")
    nanos = pa.array([0, 1_767_225_600_123_456_000, 1_767_225_600_123_456_789, 0, 0], pa.timestamp("ns"))
    batch = pa.record_batch(
        {
            "a": pa.array([1.0, 1.5, 2.0, 3.0, 4.0]),  # DuckDB alone: 2
            "b": pa.array([2.56, 2.56, 2.56, 2.5612, 1.0]),  # DuckDB alone: 2.56
            "c": nanos,  # DuckDB alone: the nanoseconds cut
            "d": pa.array([[1], [2], [3], [4], [2**40]], pa.list_(pa.int64())),
        }
    )
    rejected = sink_rows({"type": "duckdb", "path": "out.duckdb", "table": "t"}, batch)
    assert sorted(rejected) == [1, 2, 3, 4]
    assert "would lose data" in rejected[2] and "Rescaling" in rejected[3] and "not in range" in rejected[4]
    with duckdb.connect("out.duckdb", read_only=True) as con:
        assert con.execute("SELECT a, b, c, d FROM t").fetchall() == [
            (1, Decimal("2.56"), dt.datetime(1970, 1, 1), [1])
        ]


def test_a_duckdb_table_made_from_rows_keeps_their_values_or_refuses_them():
    zoned = pa.array([1_767_225_600_123_456_000, 1_767_225_600_123_456_789], pa.timestamp("ns", "UTC"))
    # DuckDB's TIMESTAMP WITH TIME ZONE holds microseconds: the second value can't go in as it is.
    rejected = sink_rows({"type": "duckdb", "path": "out.duckdb", "table": "z"}, pa.record_batch({"z": zoned}))
    assert list(rejected) == [1] and "would lose data" in rejected[1]


# -- sources read numbers by the same rules -----------------------------------------------------------


def read_csv(text: str, **options) -> pa.Table:
    Path("in.csv").write_text(text)
    source = make_stage("source", {"type": "csv", "path": "in.csv", **options})
    plan = source.plan(1000)
    return pa.Table.from_batches([b for chunk in plan.chunks for b in source.read(chunk, plan.shared)])


def test_the_csv_source_reads_numbers_exactly():
    table = read_csv("id,code,v\n1,0x10,0.10000000000000001\n2,0x1F, 2.5 \n")
    assert table.schema.field("code").type == pa.string(), "hexadecimal codes are identifiers, like 007"
    assert table.column("code").to_pylist() == ["0x10", "0x1F"]
    assert table.column("v").to_pylist() == [0.1, 2.5]
    with pytest.raises(etl.PermanentError, match=r"line 3, column 'n': '0xFFFFFFFFFFFFFFFF' is not a valid int64: "):
        read_csv("id,n\n1,5\n2,0xFFFFFFFFFFFFFFFF\n", schema={"n": "int64"})  # pyarrow alone: -1
    with pytest.raises(etl.PermanentError, match=r"line 3, column 'v': '1e400' is not a valid double: 1e400 is beyond"):
        read_csv("id,v\n1,2.5\n2,1e400\n")  # pyarrow alone: inf
    with pytest.raises(etl.PermanentError, match=r"'0.12345678901234567890' is not a valid double: double can't hold"):
        read_csv("id,v\n1,2.5\n2,0.12345678901234567890\n")
    # pyarrow's reader alone: 705708.637954751649021952
    with pytest.raises(etl.PermanentError, match=r"'11229318108390970000000' doesn't fit decimal128\(38, 18\)"):
        read_csv("id,v\n1,2.5\n2,11229318108390970000000\n", schema={"v": "decimal(38, 18)"})
    assert read_csv("v\n1.50\n 2.5\n", schema={"v": "decimal(38, 18)"}).column("v").to_pylist() == [
        Decimal("1.5"),
        Decimal("2.5"),
    ]


def read_jsonl(lines: list[str], **options) -> pa.Table:
    Path("in.jsonl").write_text("".join(line + "\n" for line in lines))
    source = make_stage("source", {"type": "jsonl", "path": "in.jsonl", **options})
    plan = source.plan(1000)
    return pa.Table.from_batches([b for chunk in plan.chunks for b in source.read(chunk, plan.shared)])


def test_the_jsonl_source_reads_dates_times_and_narrow_floats_exactly():
    table = read_jsonl(
        ['{"t": "2026-01-01T10:00:00", "at": "10:00:00.5", "f": 0.1}'] * 2,
        schema={"at": "time", "f": "float32"},
    )
    assert table.column("t").to_pylist() == [dt.datetime(2026, 1, 1, 10)] * 2
    assert table.column("at").to_pylist() == [dt.time(10, 0, 0, 500_000)] * 2
    assert table.column("f").cast(pa.string()).to_pylist() == ["0.1"] * 2
    # The sample has no zone; a value after it has one (pyarrow alone: 08:00, with no zone).
    late = ['{"t": "2026-01-01T10:00:00"}'] * 30_000 + ['{"t": "2026-01-01T10:00:00+02:00"}']
    with pytest.raises(etl.PermanentError, match="expected no zone offset"):
        read_jsonl(late)
    with pytest.raises(etl.PermanentError, match="1e.39 is beyond the range of float"):
        read_jsonl(['{"f": 1.5}', '{"f": 1e39}'], schema={"f": "float32"})  # pyarrow alone: inf
    decimals = ['{"d": 1.5}', '{"d": 11229318108390970000000}']  # pyarrow alone: 705708.6379…
    with pytest.raises(etl.PermanentError, match=r"11229318108390970000000 doesn't fit decimal128\(38, 18\)"):
        read_jsonl(decimals, schema={"d": "decimal(38, 18)"})
    with pytest.raises(etl.PermanentError, match=r"2.3049299995636403E-95 doesn't fit decimal128\(36, 18\)"):
        read_jsonl(['{"d": 2.3049299995636403e-95}'], schema={"d": "decimal(36, 18)"})  # pyarrow alone: 0
    assert read_jsonl(decimals[:1], schema={"d": "decimal(38, 18)"}).column("d").to_pylist() == [Decimal("1.5")]
    written = [
        '{"d": "1.25"}',
        '{"d": 0.1}',
        '{"d": null}',
        "",
        '{"d": 123456789012.34}',
    ]  # text, numbers, a blank line
    assert read_jsonl(written, schema={"d": "decimal(14, 2)"}).column("d").to_pylist() == [
        Decimal("1.25"),
        Decimal("0.1"),
        None,
        Decimal("123456789012.34"),
    ]
    with pytest.raises(etl.PermanentError, match="'24:00:00' is not a time of day"):
        read_jsonl(['{"at": "10:00:00"}', '{"at": "24:00:00"}'], schema={"at": "time"})
