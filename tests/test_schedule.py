"""Cron arithmetic, the schedule keys of a job file, and parameters defaulting from the interval."""

from __future__ import annotations

import datetime as dt
import time

import pytest

import etl
from etl.errors import ConfigErrors
from etl.schedule import due_slots, interval_for, latest_slot, next_slots
from etl.scheduler import clock_from_env

PARIS = "Europe/Paris"


def ts(*parts: int, tz: str = "UTC") -> float:
    from zoneinfo import ZoneInfo

    return dt.datetime(*parts, tzinfo=ZoneInfo(tz)).timestamp()


def test_due_slots_are_those_after_the_last_up_to_now():
    after, now = ts(2026, 11, 28, 10, 0), ts(2026, 11, 28, 10, 3, 30)
    assert [s.minute for s in due_slots("* * * * *", "UTC", after, now)] == [1, 2, 3]
    assert due_slots("* * * * *", "UTC", after, ts(2026, 11, 28, 10, 0, 59)) == []
    # A long outage costs no more than the newest `limit` slots.
    many = due_slots("* * * * *", "UTC", after - 86400 * 365, now, limit=10)
    assert len(many) == 10 and many[-1].minute == 3


def test_a_daily_schedule_in_a_time_zone_keeps_its_local_hour_across_daylight_saving():
    # Paris leaves summer time on 2026-10-25.
    slots = next_slots("30 2 * * *", PARIS, ts(2026, 10, 23, 12, 0), count=4)
    assert [(s.day, s.hour, s.minute) for s in slots] == [(24, 2, 30), (25, 2, 30), (26, 2, 30), (27, 2, 30)]
    # 02:30 happens twice on the 25th: the job fires once, at the first.
    assert [s.utcoffset() for s in slots] == [dt.timedelta(hours=h) for h in (2, 2, 1, 1)]


def test_a_run_covers_the_interval_from_the_slot_before_its_own():
    slot = latest_slot("0 0 * * *", PARIS, ts(2026, 11, 28, 9, 0, tz=PARIS))
    start, end = interval_for("0 0 * * *", slot)
    assert (start.isoformat(), end.isoformat()) == ("2026-11-27T00:00:00+01:00", "2026-11-28T00:00:00+01:00")


def test_the_scheduler_clock_can_run_fast_for_tests():
    anchor = time.time() - 10
    fast = clock_from_env({"ETL_SCHEDULER_CLOCK": f"{anchor},20"})
    assert fast() - anchor == pytest.approx(200, abs=5)
    assert clock_from_env({})() == pytest.approx(time.time(), abs=1)


JOB = """
name: daily
schedule: "{schedule}"
timezone: {timezone}
params:
  start_date: {{type: date, default: "{{{{ run.interval_start }}}}"}}
  end: {{type: datetime, default: "{{{{ run.interval_end }}}}"}}
  label: {{type: string, default: "from {{{{ run.interval_start }}}}"}}
source: {{type: generate, rows: 1}}
sink: {{type: jsonl, path: out}}
"""


def test_a_run_by_hand_gets_the_latest_interval_that_has_ended(write):
    path = write("daily.yaml", JOB.format(schedule="0 0 * * *", timezone=PARIS))
    job = etl.load_job(path)
    from zoneinfo import ZoneInfo

    today = dt.datetime.now(ZoneInfo(PARIS)).date()
    assert job.params["start_date"] == today - dt.timedelta(days=1)
    assert job.params["end"] == dt.datetime.combine(today, dt.time(), ZoneInfo(PARIS))
    start = dt.datetime.combine(job.params["start_date"], dt.time(), ZoneInfo(PARIS))
    assert job.params["label"] == f"from {start.isoformat()}"
    given = etl.load_job(path, params={"start_date": "2026-01-01"})
    assert given.params["start_date"] == dt.date(2026, 1, 1)


def test_a_scheduled_run_gets_the_interval_it_was_fired_for(write):
    from etl.jobs import load

    path = write("daily.yaml", JOB.format(schedule="@daily", timezone="UTC"))
    run = {
        "interval_start": dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
        "interval_end": dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
    }
    job, _ = load(path, text=None, params=None, sets=(), env=None, pm=None, run=run)
    assert job.params["start_date"] == dt.date(2026, 11, 27)
    assert job.params["end"] == run["interval_end"]


def test_interval_defaults_without_a_schedule_or_with_an_unknown_name_are_config_errors(write):
    text = JOB.format(schedule="x", timezone="UTC").replace('schedule: "x"\n', "")
    with pytest.raises(ConfigErrors) as info:
        etl.load_job(write("a.yaml", text))
    assert "a.yaml:5" in str(info.value) and "the job needs a `schedule:`" in str(info.value)
    text = JOB.format(schedule="@daily", timezone="UTC").replace("run.interval_end", "run.interval_stop")
    with pytest.raises(ConfigErrors, match=r"run.interval_stop \}\}: no such value; did you mean \"interval_start\""):
        etl.load_job(write("b.yaml", text))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("schedule", '"0 25 * * *"', "field 2 (hour) '25' is invalid"),
        ("timezone", "Europe/Pari", "'Europe/Pari' is not a known time zone; did you mean \"Europe/Paris\""),
        ("overlap", "wait", "'wait' is not one of: skip, queue"),
        ("catchup", "sometimes", "catchup"),
    ],
)
def test_bad_schedule_keys_are_config_errors_naming_the_line(write, key, value, message):
    text = 'name: j\nschedule: "@hourly"\nsource: {type: generate, rows: 1}\nsink: {type: jsonl, path: out}\n'
    text = text.replace('schedule: "@hourly"\n', "") + f"{key}: {value}\n"
    if key != "schedule":
        text += 'schedule: "@hourly"\n'
    with pytest.raises(ConfigErrors) as info:
        etl.load_job(write("j.yaml", text))
    assert "j.yaml:4" in str(info.value) and message in str(info.value)
