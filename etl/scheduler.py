"""The scheduler: fires the scheduled jobs of a directory, each due run exactly once.

Every worker started with ``--configs DIR`` runs one, but only the one holding the scheduler's
lease in the run store fires anything; when it dies, another takes the lease over once it runs
out (``ETL_SCHEDULER_LEASE_SECONDS``, 30 by default). Each fire is one transaction that records
the job's slot as handled and creates the run, so a slot is never fired twice: not by two
schedulers that both believe they lead, nor by one restarted within the same minute.

Due slots are those after the job's last handled slot, up to now. One is the usual case; more
mean runs were missed while no scheduler was up: ``catchup: false`` fires only the latest,
``catchup: true`` every one of them (each queued behind the one before). A job seen for the
first time starts from its next slot.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from etl.errors import ConfigError, ConfigErrors, describe
from etl.schedule import due_slots, interval_for, latest_slot

if TYPE_CHECKING:
    from etl.config import Job
    from etl.queue import Queue

__all__ = ["Fired", "JobFile", "JobFiles", "Scheduler", "clock_from_env", "job_files", "scheduled_jobs"]


def clock_from_env(env: dict[str, str] | None = None) -> Callable[[], float]:
    """The scheduler's clock: real time, or with ``ETL_SCHEDULER_CLOCK=ANCHOR,RATE`` (for tests
    and demonstrations) a clock running ``RATE`` times faster from the Unix time ``ANCHOR``, the
    same in every process given the same value."""
    value = (os.environ if env is None else env).get("ETL_SCHEDULER_CLOCK")
    if not value:
        return time.time
    anchor_text, _, rate_text = value.partition(",")
    anchor, rate = float(anchor_text), float(rate_text or 1)
    return lambda: anchor + (time.time() - anchor) * rate


def job_files(directory: str | Path) -> list[Path]:
    """The job files of a directory: ``*.yaml`` and ``*.yml``, sorted."""
    return sorted(p for p in Path(directory).glob("*.y*ml") if p.suffix in (".yaml", ".yml"))


@dataclass(frozen=True)
class JobFile:
    """One job file as :class:`JobFiles` last read it: its job, or the problems that keep it from
    loading, and whether it changed since the read before."""

    path: Path
    job: Job | None
    problems: list[ConfigError]
    changed: bool


class JobFiles:
    """The job files of a directory, each loaded again only when it changes (its modification
    time or size): the scheduler reads them every second, the dashboard on every page."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._read: dict[Path, tuple[tuple[int, int], Job | None, list[ConfigError]]] = {}
        self._lock = threading.Lock()

    def read(self) -> list[JobFile]:
        """Every job file of the directory, sorted by name (none when it is not a directory)."""
        from etl.jobs import load_job

        files = job_files(self.directory) if self.directory.is_dir() else []
        found = []
        with self._lock:
            for gone in set(self._read) - set(files):
                del self._read[gone]
            for path in files:
                try:
                    stat = path.stat()
                except OSError:
                    continue  # gone since the listing
                signature = (stat.st_mtime_ns, stat.st_size)
                known = self._read.get(path)
                if known is not None and known[0] == signature:
                    found.append(JobFile(path, known[1], known[2], changed=False))
                    continue
                try:
                    job, problems = load_job(path), []
                except ConfigErrors as exc:
                    job, problems = None, exc.errors
                self._read[path] = (signature, job, problems)
                found.append(JobFile(path, job, problems, changed=True))
        return found


def scheduled_jobs(
    directory: str | Path, files: JobFiles | None = None
) -> tuple[list[Job], dict[str, list[ConfigError]]]:
    """The directory's valid jobs that have a ``schedule:``, and the problems of the invalid
    files, by file; read through ``files`` (its cache) when given."""
    found, problems = [], {}
    for read in (files or JobFiles(directory)).read():
        if read.job is None:
            problems[str(read.path)] = read.problems
        elif read.job.spec.schedule is not None:
            found.append(read.job)
    return found, problems


@dataclass(frozen=True)
class Fired:
    """What a scheduler did with one due slot of one job."""

    job: str
    slot: float
    outcome: str
    run: str | None


class Scheduler:
    """Fires the scheduled jobs of ``directory`` into ``queue`` while it holds the lease."""

    def __init__(
        self,
        queue: Queue,
        directory: str | Path,
        holder: str,
        *,
        lease: float = 30.0,
        tick: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.queue = queue
        self.store = queue.store
        self.directory = Path(directory)
        self.holder = holder
        self.lease = lease
        self.tick_seconds = tick
        self.clock = clock or clock_from_env()
        self.leading = False
        self.files = JobFiles(self.directory)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the job files -----------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        """The directory's valid scheduled jobs, re-read when a file changes; a bad file is
        reported (once per change) and skipped, the others still run."""
        scheduled: dict[Path, Job] = {}
        for read in self.files.read():
            if read.changed:
                for problem in read.problems:
                    logger.error("scheduler: skipping {}: {}", read.path, problem)
            if read.job is not None and read.job.spec.schedule is not None:
                scheduled[read.path] = read.job
        named: dict[str, Job] = {}
        for path, job in sorted(scheduled.items()):
            if job.name in named:
                other = named[job.name].file
                logger.error("scheduler: skipping {}: job {} is also defined in {}", path, job.name, other)
                continue
            named[job.name] = job
        return list(named.values())

    # -- one pass ----------------------------------------------------------------------------

    def tick(self) -> list[Fired]:
        """Fire what is due, if this scheduler holds (or takes) the lease."""
        if not self.store.lead(self.holder, self.lease):
            if self.leading:
                logger.warning("scheduler: another worker holds the schedule now")
            self.leading = False
            return []
        if not self.leading:
            logger.info("scheduler: this worker ({}) fires the schedules of {}", self.holder, self.directory)
            self.leading = True
        fired: list[Fired] = []
        for job in self.jobs():
            try:
                fired += self.fire_due(job)
            except Exception as exc:  # one job's trouble (Redis away) must not stop the others
                logger.bind(job=job.name).warning("scheduler: {}: {}", job.name, describe(exc))
        return fired

    def fire_due(self, job: Job, now: float | None = None) -> list[Fired]:
        """Fire the job's due slots (see the module's docstring for which)."""
        spec = job.spec
        assert spec.schedule is not None
        now = self.clock() if now is None else now
        log = logger.bind(job=job.name)
        state = self.store.schedule_state(job.name)
        if state.get("last_slot") is None:
            first = latest_slot(spec.schedule, spec.timezone, now)
            self.store.start_schedule(job.name, first.timestamp() if first is not None else now)
            return []
        due = due_slots(spec.schedule, spec.timezone, state["last_slot"], now)
        if not due:
            return []
        if len(due) > 1:
            missed = f"{len(due) - 1} run(s) of {job.name} were missed ({due[0]:%Y-%m-%d %H:%M %Z} .. {due[-2]:%H:%M})"
            if spec.catchup:
                log.warning("scheduler: {}; catchup: true fires every one of them", missed)
            else:
                log.warning(
                    "scheduler: {}; catchup: false fires only the latest ({:%Y-%m-%d %H:%M %Z})", missed, due[-1]
                )
                due = due[-1:]
        fired = []
        for position, slot in enumerate(due):
            # Caught-up runs wait for one another, whatever `overlap` says.
            overlap = spec.overlap if position == 0 else "queue"
            fired.append(self._fire(job, slot.timestamp(), interval_for(spec.schedule, slot), overlap))
        return fired

    def _fire(self, job: Job, slot: float, interval: tuple[Any, Any], overlap: str) -> Fired:
        start, end = interval
        record = self.queue.record(
            job,
            params={},
            scheduled_for=slot,
            interval={"start": start.isoformat(), "end": end.isoformat()},
        )
        outcome, run_id = self.store.fire(record, slot, overlap, job.spec.concurrency)
        log = logger.bind(job=job.name, **({"run": run_id} if run_id else {}))
        when = f"{end:%Y-%m-%d %H:%M %Z}"
        if outcome == "fired":
            behind = self.store.get_run(run_id).after if run_id else None  # type: ignore[union-attr]
            log.info(
                "scheduler: fired run {} of {} for {}{}",
                run_id,
                job.name,
                when,
                f", queued behind {behind} (overlap: queue)" if behind else "",
            )
            self.queue.send("etl.plan", run_id)
        elif outcome == "skipped":
            why = "overlap: skip" if overlap == "skip" else f"concurrency: {job.spec.concurrency}"
            log.warning("scheduler: skipped {} at {}: run {} is unfinished ({})", job.name, when, run_id, why)
        elif outcome == "paused":
            log.info("scheduler: {} is paused; passed over {}", job.name, when)
        return Fired(job.name, slot, outcome, run_id)

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:
                logger.warning("scheduler: {}", describe(exc))
            self._stop.wait(self.tick_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.leading:
            try:
                self.store.resign(self.holder)
            except Exception as exc:
                logger.warning("scheduler: could not give up the lease: {}", describe(exc))
            self.leading = False
