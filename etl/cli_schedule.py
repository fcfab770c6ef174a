"""The commands for scheduled and incremental jobs: schedule, pause, resume, state.

Each takes ``--json``. A job is named by its ``name:``, or by its job file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from etl import api
from etl.errors import UsageError
from etl.store import iso_time as _iso

__all__ = ["COMMANDS"]


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _configs_default() -> str:
    return os.environ.get("ETL_CONFIGS") or "configs"


def _job_name(job: str) -> tuple[str, Any]:
    """A job's name, and the job itself when ``job`` is a job file."""
    if job.endswith((".yaml", ".yml")) or os.sep in job:
        loaded = api.load_job(job)
        return loaded.name, loaded
    return job, None


@click.command()
@click.option(
    "--configs",
    type=click.Path(file_okay=False),
    default=_configs_default,
    show_default="$ETL_CONFIGS, else configs",
    help="The directory of job files the workers were given.",
)
@click.option("--count", type=click.IntRange(1, 100), default=3, show_default=True, help="Next fire times to show.")
@click.option("--json", "as_json", is_flag=True)
def schedule(configs: str, count: int, as_json: bool) -> None:
    """List the scheduled jobs of a directory: schedule, state, last run, next fire times."""
    from etl.schedule import next_slots
    from etl.scheduler import clock_from_env, scheduled_jobs

    if not Path(configs).is_dir():
        raise UsageError(f"--configs {configs}: no such directory")
    store = api.open_store()
    now = clock_from_env()()
    jobs, invalid = scheduled_jobs(configs)
    problems = [{"file": path, "errors": [str(e) for e in errors]} for path, errors in invalid.items()]
    rows = []
    for job in jobs:
        spec = job.spec
        state = store.schedule_state(job.name)
        last = store.list_runs(job=job.name, limit=1)
        rows.append(
            {
                "job": job.name,
                "file": job.file,
                "schedule": spec.schedule,
                "timezone": spec.timezone,
                "overlap": spec.overlap,
                "catchup": spec.catchup,
                "paused": bool(state.get("paused")),
                "last_slot": _iso(state.get("last_slot")),
                "last_run": last[0].id if last else None,
                "last_state": last[0].state if last else None,
                "next": [slot.isoformat() for slot in next_slots(spec.schedule, spec.timezone, now, count)],
            }
        )
    leader = store.scheduler()
    scheduler = None
    if leader is not None and leader["until"] >= time.time():  # leases keep real time
        scheduler = {"holder": leader["holder"], "since": _iso(leader["since"]), "until": _iso(leader["until"])}
    if as_json:
        _echo_json({"scheduler": scheduler, "jobs": rows, "invalid": problems})
        return
    if scheduler is None:
        click.echo("no scheduler is running: start a worker with --configs " + configs)
    else:
        click.echo(f"scheduler: {scheduler['holder']} (since {scheduler['since']})")
    if not rows:
        click.echo(f"no scheduled jobs in {configs}")
    for row in rows:
        paused = " · PAUSED" if row["paused"] else ""
        last = f"{row['last_run']} ({row['last_state']})" if row["last_run"] else "no run yet"
        click.echo(f"{row['job']}: {row['schedule']} ({row['timezone']}){paused}")
        click.echo(f"  last run: {last}")
        click.echo(f"  next: {', '.join(row['next'])}")
    for problem in problems:  # each error names its file (and line)
        more = len(problem["errors"]) - 1
        also = f" (and {more} more: etl validate {problem['file']})" if more else ""
        click.echo(f"invalid, not scheduled: {problem['errors'][0]}{also}", err=True)


def _pause(job: str, paused: bool, as_json: bool) -> None:
    name, _ = _job_name(job)
    changed = api.open_store().set_paused(name, paused)
    if as_json:
        _echo_json({"job": name, "paused": paused, "changed": changed})
    elif paused:
        click.echo(f"{name}: paused" if changed else f"{name}: already paused")
    else:
        click.echo(f"{name}: resumed" if changed else f"{name}: was not paused")


@click.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
def pause(job: str, as_json: bool) -> None:
    """Pause a job's schedule (JOB: its name or its file): due runs are passed over until resumed."""
    _pause(job, True, as_json)


@click.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
def resume(job: str, as_json: bool) -> None:
    """Resume a paused job's schedule from its next slot (runs passed over are not caught up)."""
    _pause(job, False, as_json)


@click.command()
@click.argument("job")
@click.option("--reset", is_flag=True, help="Forget the mark: the next run starts from `initial`.")
@click.option("--set", "value", metavar="VALUE", help="Set the mark: the next run reads rows above VALUE.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
def state(job: str, reset: bool, value: str | None, yes: bool, as_json: bool) -> None:
    """Show (or --reset, or --set) an incremental job's high-water mark (JOB: its name or file)."""
    from etl.incremental import decode, encode, parse_value, shown

    if reset and value is not None:
        raise UsageError("give --reset or --set VALUE, not both")
    name, loaded = _job_name(job)
    store = api.open_store()
    mark = store.get_mark(name)
    cursor = mark.get("cursor") if mark else None
    if loaded is not None and loaded.spec.incremental is not None:
        cursor = loaded.spec.incremental.cursor
    if reset or value is not None:
        if value is not None:
            try:
                new = parse_value(value)
                if mark is not None:
                    from etl.incremental import coerce

                    new = coerce(new, decode(mark["value"]))
            except ValueError as exc:
                raise UsageError(f"--set {value}: {exc}") from None
            if cursor is None:
                raise UsageError(
                    f"{name} has no mark yet, so its cursor is unknown: give the job file instead of its name"
                )
            question = f"set the mark of {name} ({cursor}) to {shown(new)}?"
        else:
            question = f"forget the mark of {name}? its next run starts from `initial` (or reads everything)"
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"{question} give --yes to change it without a terminal to confirm on")
            if not click.confirm(question, default=False):
                raise UsageError("nothing changed")
        store.set_mark(name, cursor, None if reset else encode(new))
        mark = store.get_mark(name)
    if as_json:
        data = {"job": name, "cursor": cursor, "mark": None, "run": None, "updated_at": None}
        if mark is not None:
            data.update(mark=shown(decode(mark["value"])), run=mark.get("run"), updated_at=_iso(mark.get("updated_at")))
        _echo_json(data)
        return
    if mark is None:
        click.echo(f"{name}: no mark; the next run starts from `initial` (or reads everything)")
        return
    by = f" by run {mark['run']}" if mark.get("run") else " by hand"
    click.echo(f"{name}: {mark['cursor']} > {shown(decode(mark['value']))} (set{by}, {_iso(mark.get('updated_at'))})")


COMMANDS = [schedule, pause, resume, state]
