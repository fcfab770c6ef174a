"""The Python API: what the CLI does, for programs that embed the toolkit.

import etl

job = etl.load_job("configs/demo.yaml", params={"rows": "5000"})
result = etl.run(job)
print(result.state, result.rows_written)
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from etl import config
from etl.errors import ConfigError, JobFailed, UsageError, describe
from etl.jobs import load, load_job, state_dir, validate
from etl.manager import get_plugin_manager
from etl.settings import QueueSettings, queue_settings

if TYPE_CHECKING:
    import pluggy

    from etl.config import Job
    from etl.lifecycle import PlannedRun
    from etl.queue import Queue
    from etl.retry import Clock
    from etl.runs import RunResult
    from etl.store import RunRecord, RunStore, WorkerInfo
    from etl.worker import WorkerOptions

__all__ = [
    "cancel",
    "clean",
    "get_run",
    "list_runs",
    "load_job",
    "open_queue",
    "open_store",
    "plan",
    "retry",
    "run",
    "staged",
    "state_dir",
    "submit",
    "validate",
    "workers",
]  # load_job, state_dir, validate: from etl.jobs


def plan(
    job: Job | str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    pm: pluggy.PluginManager | None = None,
    run_id: str | None = None,
) -> PlannedRun:
    """Open a run: fix its incremental window, count its rows and plan its chunks, without running
    it (what ``etl run --dry-run`` shows). Give the :class:`~etl.lifecycle.PlannedRun` to
    :func:`run` or :func:`submit` to run it as planned (counted and planned once), or ``close()``
    it.

    Raises:
        ConfigErrors: the job is invalid, or a stage names a column the planned rows lack.
        UsageError: the source holds more rows than ``thresholds.max``.
        JobFailed: counting or planning failed.
    """
    from etl.lifecycle import Lifecycle, PlannedRun
    from etl.pipeline import JobRun

    if not isinstance(job, config.Job):
        job, pm = load(job, text=None, params=params, sets=sets, env=None, pm=pm)
    pm = pm or get_plugin_manager(job_plugins=job.spec.plugins, job_dir=job.directory)
    life = Lifecycle(JobRun(job, pm, run_id=run_id, state_dir=state_dir()))
    given = {k: str(v) for k, v in (params if params is not None else job.params).items()}
    try:
        mark = open_store().get_mark(job.name) if job.spec.incremental is not None else None
        info, chunks, warnings = life.open(mark=mark)
    except (ConfigError, UsageError):
        life.work.close()
        raise  # bad configuration or usage: exit 2, and it says what is wrong
    except Exception as exc:
        life.work.close()
        raise JobFailed(f"planning failed: {describe(exc)}") from exc
    return PlannedRun(life, chunks, warnings, given, list(sets))


def run(
    job: PlannedRun | Job | str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    pm: pluggy.PluginManager | None = None,
    run_id: str | None = None,
    clock: Clock | None = None,
) -> RunResult:
    """Run a job in this process and return its :class:`~etl.runs.RunResult`.

    ``job`` is a run :func:`plan` opened, a :class:`~etl.config.Job`, or a job file (loaded with
    ``params`` and ``sets``). The run is recorded in the run store of the queue settings (the
    embedded one by default), like a queued run: ``etl runs`` lists it. An incremental job reads
    from its stored mark and moves it when the run completes.

    Raises:
        ConfigErrors: the job is invalid.
        UsageError: the source holds more rows than ``thresholds.max``, or the job's
            ``concurrency:`` is reached.
        TransientError: the run store can't be reached.
        JobFailed: the run failed; its ``result`` holds the counters and the error.
    """
    from etl.lifecycle import PlannedRun
    from etl.runner import run_job

    planned = job if isinstance(job, PlannedRun) else plan(job, params=params, sets=sets, pm=pm, run_id=run_id)
    settings = queue_settings()
    try:
        store = open_store(settings)
    except BaseException:
        planned.close()
        raise
    return run_job(
        planned,
        store,
        secret=settings.secret,
        clock=clock,
        lease=(options := _options()).lease,
        keep_runs=options.keep_runs,
    )


# -- background runs ------------------------------------------------------------------------


def open_queue(settings: QueueSettings | None = None) -> Queue:
    """The queue and run store of the environment's settings (``ETL_QUEUE_URL``, ``REDIS_*``,
    or the embedded default in ``$ETL_HOME``), checked reachable.

    Raises:
        UsageError: a malformed setting, or a Redis that refuses the password.
        TransientError: Redis can't be reached.
    """
    from etl.queue import Queue

    queue = Queue(settings or queue_settings())
    queue.check()
    return queue


def open_store(settings: QueueSettings | None = None) -> RunStore:
    """The run store alone (where runs and incremental marks are kept), without the queue."""
    from etl.queue import open_store as _open_store

    return _open_store(settings or queue_settings())


def submit(
    job: PlannedRun | Job | str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    queue: Queue | None = None,
    run_id: str | None = None,
    window: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Queue a run of ``job`` for the workers; returns its record (``.id`` is the run id, new
    unless given).

    ``job`` is a run :func:`plan` opened (queued with its plan: the workers neither count nor plan
    it again), a :class:`~etl.config.Job` or a job file. The job is stored as written, with its
    parameters and overrides, and each worker resolves its ``${VAR}`` references from its own
    environment.
    """
    from etl.lifecycle import PlannedRun

    queue = queue or open_queue()
    if isinstance(job, PlannedRun):
        planned = job
        planned.close()  # the workers make the stages they need
        return queue.submit(
            planned.job,
            params=planned.params,
            sets=planned.sets,
            run_id=planned.run_id,
            window=planned.info.window,
            planned=(planned.info, planned.plan),
        )
    if not isinstance(job, config.Job):
        job = load_job(job, params=params, sets=sets)
    return queue.submit(
        job, params={k: str(v) for k, v in (params or {}).items()}, sets=list(sets), run_id=run_id, window=window
    )


def staged(run: RunRecord, planned: PlannedRun | None = None) -> list[str]:
    """What the sink of ``run`` staged for it (what a failed run keeps), as the sink names it:
    the job of ``planned`` when given (its plugins loaded already), else the job as recorded
    (if its record is signed with this process's ``ETL_SECRET_KEY``, when there is one)."""
    from etl.lifecycle import Lifecycle
    from etl.pipeline import JobRun
    from etl.records import Signer, load_recorded

    try:
        if planned is not None:
            job, pm = planned.job, planned.life.pm
        elif Signer(queue_settings().secret).check_run(run) is not None:
            return []  # a record someone else wrote: its job is not loaded here
        else:
            job, pm = load_recorded(run)
    except Exception:  # the record's job no longer loads here: nothing to name
        return []
    life = Lifecycle(JobRun(job, pm, run_id=run.id, state_dir=state_dir()))
    try:
        return life.staged()
    finally:
        life.work.close()


def get_run(run_id: str, queue: Queue | None = None) -> RunRecord:
    """A run's state and progress.

    Raises:
        UsageError: no run has that id (or it was cleaned).
    """
    queue = queue or open_queue()
    run = queue.store.get_run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} (list runs with: etl runs)")
    return run


def list_runs(
    *, state: str | None = None, job: str | None = None, limit: int = 50, queue: Queue | None = None
) -> list[RunRecord]:
    """Runs, newest first."""
    return (queue or open_queue()).store.list_runs(state=state, job=job, limit=limit)


def retry(run_id: str, queue: Queue | None = None) -> list[int]:
    """Run a failed run's unfinished chunks again; those that succeeded stay. Returns the
    chunks to run again.

    Raises:
        UsageError: no such run, or it is not failed (a cancelled run is final: what it staged
            was dropped; run the job again instead), or the queue is keyed with an
            ``ETL_SECRET_KEY`` this process lacks.
    """
    queue = queue or open_queue()
    queue.check_key()  # before anything changes: its messages would be refused
    run = get_run(run_id, queue)
    if run.state == "cancelled":
        raise UsageError(f"run {run_id} was cancelled, and what it staged was dropped; run the job again instead")
    if run.state != "failed":
        raise UsageError(f"run {run_id} is {run.state}; only a failed run can be retried")
    again = queue.store.retry_failed(run_id)
    run = get_run(run_id, queue)
    if not run.planned:
        queue.send("etl.plan", run_id)
    elif again:
        queue.dispatch(run, sum(w.concurrency for w in workers(queue)))
    else:
        queue.send("etl.finalize", run_id)
    return again


def cancel(run_id: str, queue: Queue | None = None) -> RunRecord:
    """Stop handing out the run's chunks and mark it cancelled; chunks in flight stop at their
    next batch. What the run staged (a replace's new table, a merge's staging table) is dropped
    here and now when no chunk is in flight (``aborted`` is then true in the record returned);
    otherwise by the process running it (an in-process run) or a worker, once its chunks in
    flight have stopped.

    Raises:
        UsageError: no such run, or it has completed.
    """
    from etl.executor import Executor

    queue = queue or open_queue()
    run = get_run(run_id, queue)
    if run.state == "completed":
        raise UsageError(f"run {run_id} has completed; there is nothing to cancel")
    if run.state != "cancelled" and not queue.store.cancel(run_id):
        run = get_run(run_id, queue)
        if run.state != "failed":
            raise UsageError(f"run {run_id} is {run.state}; it can't be cancelled")
        queue.store.cancel_failed(run_id)
    # Chunks in flight stop at their next batch (their lease renewal says so): give them up to
    # a lease to do it, then drop what the run staged here, unless the process that ran it did.
    lease = _options().lease
    deadline = time.monotonic() + lease
    while queue.store.in_flight(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    Executor(queue, f"{socket.gethostname()}:{os.getpid()}:cancel", lease=lease).abort(run_id)
    return get_run(run_id, queue)


def _options() -> WorkerOptions:
    """The timings of the environment (``ETL_LEASE_SECONDS``, ``ETL_KEEP_RUNS``, ...), which runs
    in this process keep as workers do."""
    from etl.worker import WorkerOptions

    return WorkerOptions.from_env()


def clean(state: str, older_than: float = 0.0, queue: Queue | None = None) -> int:
    """Delete finished runs in ``state`` that finished more than ``older_than`` seconds ago.

    A failed run is cancelled first, so that its sink drops what it kept staged for ``etl
    retry``; one whose sink can't drop it now (its target unreachable) is kept, cancelled, for
    a later clean.
    """
    from etl.executor import Executor

    if state not in ("completed", "failed", "cancelled"):
        raise UsageError(f"--state {state!r} is not one of: completed, failed, cancelled")
    queue = queue or open_queue()
    if state != "failed":
        return queue.store.clean(state, older_than)  # type: ignore[arg-type]
    executor = Executor(queue, f"{socket.gethostname()}:{os.getpid()}:clean", lease=_options().lease)
    deleted, seen = 0, set()
    while ids := [i for i in queue.store.oldest("failed", older_than) if i not in seen]:
        seen.update(ids)
        dropped = executor.drop_failed(ids)
        queue.store.delete_runs(dropped)
        deleted += len(dropped)
    return deleted


def workers(queue: Queue | None = None) -> list[WorkerInfo]:
    """Live workers (seen within three heartbeats): host, pid, chunks in hand, last heartbeat."""
    return (queue or open_queue()).store.workers(_options().heartbeat * 3)
