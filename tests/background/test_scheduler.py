"""Scheduled jobs: each due run fired once, by one scheduler at a time; overlap, catchup, pause.

Schedulers in this process run on a clock the test moves (waiting for real minutes would be too
slow), against the real Redis; the last tests run real `etl worker --configs` processes on a
fast clock (``ETL_SCHEDULER_CLOCK``), one of them SIGKILLed.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import textwrap
import time

import pytest

from etl.scheduler import Scheduler
from tests.background.conftest import queue, run_record, wait_finished, wait_for

UTC = dt.UTC
#: 2026-11-28 10:00:10 UTC: ten seconds past a minute.
T0 = dt.datetime(2026, 11, 28, 10, 0, 10, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def caplog_lines():
    """The log lines of this test, as one text (loguru, which the library keeps disabled)."""
    from loguru import logger

    lines: list[str] = []
    logger.enable("etl")
    handler = logger.add(lambda message: lines.append(str(message)), level="DEBUG", format="{message}")
    yield lambda: "".join(lines)
    logger.remove(handler)
    logger.disable("etl")


@pytest.fixture
def configs(tmp_path, queue_env):
    directory = tmp_path / "configs"
    directory.mkdir()

    def add(name: str, schedule: str = "* * * * *", extra: str = "", rows: int = 5) -> None:
        text = f"""\
            name: {name}
            schedule: "{schedule}"
            params:
              start: {{type: datetime, default: "{{{{ run.interval_start }}}}"}}
              day: {{type: date, default: "{{{{ run.interval_end }}}}"}}
            source: {{type: generate, rows: {rows}, columns: {{id: {{kind: sequence}}}}}}
            sink: {{type: parquet, path: out/{name}}}
            thresholds: {{background: 1}}
        """
        (directory / f"{name}.yaml").write_text(textwrap.dedent(text) + textwrap.dedent(extra))

    add.directory = directory  # type: ignore[attr-defined]
    return add


def scheduler(configs, holder: str = "a", clock: Clock | None = None) -> Scheduler:
    return Scheduler(queue(), configs.directory, holder, lease=30, clock=clock or Clock())


def runs(job: str):
    return sorted(queue().store.list_runs(job=job, limit=1000), key=lambda r: r.scheduled_for or 0)


def minute(n: int) -> float:
    """The n-th minute slot after T0's minute."""
    return T0 - 10 + 60 * n


def test_a_job_seen_for_the_first_time_fires_from_its_next_slot(configs):
    configs("tick")
    clock = Clock()
    first = scheduler(configs, clock=clock)
    assert first.tick() == []  # 10:00 has passed already: nothing to catch up
    clock.advance(49)
    assert first.tick() == []
    clock.advance(2)  # 10:01:01
    fired = first.tick()
    assert [(f.outcome, f.slot) for f in fired] == [("fired", minute(1))]
    [run] = runs("tick")
    assert run.scheduled_for == minute(1)
    assert run.interval == {"start": "2026-11-28T10:00:00+00:00", "end": "2026-11-28T10:01:00+00:00"}


def test_two_schedulers_fire_each_due_slot_once(configs):
    configs("tick", extra="overlap: queue\n")  # no worker runs them: each waits for the last
    clock = Clock()
    a, b = scheduler(configs, "a", clock), scheduler(configs, "b", clock)
    a.tick(), b.tick()
    assert a.leading and not b.leading  # one lease, one scheduler
    for _ in range(5):
        clock.advance(60)
        for s in (a, b, b, a):
            s.tick()
    assert [r.scheduled_for for r in runs("tick")] == [minute(n) for n in range(1, 6)]
    # Even a scheduler that believes it leads (its lease ran out unseen) can't fire a slot twice:
    # the slot is recorded with the run, in one transaction.
    job = b.jobs()[0]
    record = queue().record(job, scheduled_for=minute(5))
    assert queue().store.fire(record, minute(5), "queue") == ("done", None)
    assert len(runs("tick")) == 5


def test_a_scheduler_restarted_within_the_minute_fires_nothing_again(configs):
    configs("tick")
    clock = Clock()
    scheduler(configs, "a", clock).tick()
    clock.advance(55)  # 10:01:05
    assert len(scheduler(configs, "a", clock).tick()) == 1
    clock.advance(20)  # 10:01:25, a new process with the same id and with another
    assert scheduler(configs, "a", clock).tick() == []
    assert len(runs("tick")) == 1


def test_another_worker_takes_over_when_the_lease_runs_out(configs):
    configs("tick")
    clock = Clock()
    store = queue().store
    a = Scheduler(queue(), configs.directory, "a", lease=1.0, clock=clock)
    b = Scheduler(queue(), configs.directory, "b", lease=1.0, clock=clock)
    a.tick()
    assert not b.tick() and not b.leading
    time.sleep(1.2)  # a stopped renewing (the lease is on the store's real clock)
    clock.advance(60)
    fired = b.tick()
    assert b.leading and [f.slot for f in fired] == [minute(1)]
    assert store.scheduler()["holder"] == "b"
    assert a.tick() == [] and not a.leading


@pytest.mark.parametrize("catchup", [False, True])
def test_missed_slots_fire_once_or_every_one_as_catchup_says(configs, catchup, caplog_lines):
    configs("tick", extra=f"catchup: {str(catchup).lower()}\n")
    clock = Clock()
    s = scheduler(configs, clock=clock)
    s.tick()
    clock.advance(60 * 5)  # no scheduler for five minutes: 10:01 .. 10:05 were missed
    fired = s.tick()
    got = runs("tick")
    if catchup:
        assert [f.slot for f in fired] == [minute(n) for n in range(1, 6)]
        assert [r.scheduled_for for r in got] == [minute(n) for n in range(1, 6)]
        # each waits for the one before it
        assert [r.after for r in got] == [None, *[r.id for r in got[:-1]]]
        assert "4 run(s) of tick were missed" in caplog_lines() and "catchup: true fires every one" in caplog_lines()
    else:
        assert [f.slot for f in fired] == [minute(5)]
        assert [r.scheduled_for for r in got] == [minute(5)]
        assert "catchup: false fires only the latest" in caplog_lines()


@pytest.mark.parametrize("overlap", ["skip", "queue"])
def test_a_run_due_while_the_last_is_unfinished_is_skipped_or_queued(configs, overlap, caplog_lines, cli):
    configs("tick", extra=f"overlap: {overlap}\n")
    clock = Clock()
    s = scheduler(configs, clock=clock)
    s.tick()
    clock.advance(60)
    [first] = s.tick()  # no worker: it stays waiting
    clock.advance(60)
    [second] = s.tick()
    if overlap == "skip":
        assert (second.outcome, second.run) == ("skipped", first.run)
        assert len(runs("tick")) == 1
        assert f"run {first.run} is unfinished (overlap: skip)" in caplog_lines()
    else:
        assert second.outcome == "fired"
        assert run_record(second.run).after == first.run
        shown = cli("status", second.run)
        assert f"queued behind run {first.run} (overlap: queue)" in shown.stdout
        assert json.loads(cli("status", second.run, "--json").stdout)["scheduled_for"] == "2026-11-28T10:02:00Z"
    clock.advance(60)  # a skipped slot is not fired later
    s.tick()
    assert minute(2) not in [r.scheduled_for for r in runs("tick")] or overlap == "queue"


def test_a_paused_job_passes_its_slots_over_and_resumes_from_the_next(configs, cli):
    configs("tick")
    clock = Clock()
    s = scheduler(configs, clock=clock)
    s.tick()
    paused = cli("pause", str(configs.directory / "tick.yaml"))
    assert paused.returncode == 0 and "tick: paused" in paused.stdout
    clock.advance(120)
    assert [f.outcome for f in s.tick()] == ["paused"]
    assert cli("resume", "tick").stdout.strip() == "tick: resumed"
    assert s.tick() == []  # what was passed over is not caught up
    clock.advance(60)
    assert [(f.outcome, f.slot) for f in s.tick()] == [("fired", minute(3))]


def test_a_bad_file_is_reported_and_skipped_and_the_others_still_fire(configs, caplog_lines):
    configs("tick")
    (configs.directory / "broken.yaml").write_text('name: broken\nschedule: "61 * * * *"\n')
    clock = Clock()
    s = scheduler(configs, clock=clock)
    s.tick()
    clock.advance(60)
    assert [f.job for f in s.tick()] == ["tick"]
    assert "skipping" in caplog_lines() and "broken.yaml:2" in caplog_lines() and "'61' is invalid" in caplog_lines()


def test_etl_schedule_lists_jobs_with_their_next_fire_times(configs, cli):
    configs("nightly", schedule="30 2 * * *", extra="timezone: Europe/Paris\n")
    configs("manual", schedule="0 0 1 1 *")
    (configs.directory / "manual.yaml").write_text(
        (configs.directory / "manual.yaml").read_text().replace('schedule: "0 0 1 1 *"\n', "")
    )
    result = cli("schedule", "--configs", str(configs.directory), "--json", "--count", "2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [j["job"] for j in data["jobs"]] == ["nightly"]  # a job without a schedule is not listed
    nightly = data["jobs"][0]
    assert nightly["timezone"] == "Europe/Paris" and nightly["paused"] is False
    assert len(nightly["next"]) == 2 and all(t.endswith(("02:30:00+01:00", "02:30:00+02:00")) for t in nightly["next"])
    assert data["scheduler"] is None
    text = cli("schedule", "--configs", str(configs.directory))
    assert "no scheduler is running" in text.stdout and "nightly: 30 2 * * * (Europe/Paris)" in text.stdout
    missing = cli("schedule", "--configs", "nowhere")
    assert missing.returncode == 2 and "no such directory" in missing.stderr


# -- real workers ----------------------------------------------------------------------------


def test_two_workers_fire_each_due_run_once_and_a_killed_scheduler_is_replaced(configs, workers, cli):
    configs("tick")
    # One real second is 20 scheduler seconds: a run every 3 seconds.
    env = {"ETL_SCHEDULER_CLOCK": f"{time.time():.3f},20", "ETL_SCHEDULER_LEASE_SECONDS": "2"}
    procs = workers.start(2, args=("--configs", str(configs.directory)), **env)
    store = queue().store
    leader = wait_for(lambda: store.scheduler(), 15, "a scheduler")
    listed = json.loads(cli("schedule", "--configs", str(configs.directory), "--json", env=env).stdout)
    assert listed["scheduler"]["holder"] == leader["holder"]
    wait_for(lambda: len([r for r in runs("tick") if r.state == "completed"]) >= 3, 60, "three completed runs")
    first = next(p for p in procs if f":{p.pid}:" in store.scheduler()["holder"])
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = len(runs("tick"))
    other = next(p for p in procs if p is not first)
    wait_for(lambda: f":{other.pid}:" in (store.scheduler() or {}).get("holder", ""), 15, "the other worker to lead")
    wait_for(lambda: len(runs("tick")) >= killed_at + 3, 60, "three runs fired by the new scheduler")
    fired = runs("tick")
    slots = [r.scheduled_for for r in fired]
    assert len(slots) == len(set(slots))  # no slot fired twice, by either scheduler
    assert all(s % 60 == 0 for s in slots)  # each a minute of the schedule
    for run in fired[:-2]:
        assert wait_finished(run.id).state == "completed"
    assert leader["holder"] != store.scheduler()["holder"]


def test_a_queued_run_starts_once_the_one_before_it_has_finished(configs, workers):
    configs("tick", extra="overlap: queue\n", rows=20_000)
    clock = Clock()
    s = scheduler(configs, clock=clock)
    s.tick()
    clock.advance(60)
    [first] = s.tick()
    clock.advance(60)
    [second] = s.tick()
    assert run_record(second.run).after == first.run
    workers.start(1, concurrency=2)
    done_first, done_second = wait_finished(first.run), wait_finished(second.run)
    assert done_first.state == done_second.state == "completed"
    assert done_second.started_at >= done_first.finished_at
    assert done_second.params == {} and done_second.interval["end"] == "2026-11-28T10:02:00+00:00"


def test_a_queued_fire_beyond_the_jobs_concurrency_is_skipped(configs, caplog_lines):
    configs("tick", extra="overlap: queue\nconcurrency: 2\n")
    clock = Clock()
    s = scheduler(configs, clock=clock)
    s.tick()
    outcomes = []
    for _ in range(3):
        clock.advance(60)
        outcomes += [f.outcome for f in s.tick()]
    assert outcomes == ["fired", "fired", "skipped"]  # nothing runs them: two stay unfinished
    assert len(runs("tick")) == 2
    assert "(concurrency: 2)" in caplog_lines()


def test_job_files_are_loaded_again_only_when_they_change(tmp_path):
    """The scheduler reads its directory every second and the dashboard on every page: a file is
    loaded again only when its modification time or size changed; a bad one keeps its problems."""
    from etl.scheduler import JobFiles, scheduled_jobs

    good = tmp_path / "good.yaml"
    good.write_text("name: good\nschedule: '@daily'\nsource: {type: generate, rows: 1}\nsink: {type: jsonl, path: o}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsource: {type: nope}\n")
    files = JobFiles(tmp_path)
    first = files.read()
    assert [(r.path.name, r.changed, r.job is not None) for r in first] == [
        ("bad.yaml", True, False),
        ("good.yaml", True, True),
    ]
    assert any("'nope'" in str(problem) for problem in first[0].problems)
    again = files.read()
    assert [r.changed for r in again] == [False, False] and again[1].job is first[1].job  # not loaded again
    good.write_text(good.read_text().replace("@daily", "@hourly"))
    changed = files.read()
    assert [r.changed for r in changed] == [False, True] and changed[1].job.spec.schedule == "0 * * * *"
    bad.unlink()
    jobs, problems = scheduled_jobs(tmp_path, files)
    assert [j.name for j in jobs] == ["good"] and problems == {}
