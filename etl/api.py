"""The Python API: what the CLI does, for programs that embed the toolkit.

import etl

job = etl.load_job("configs/demo.yaml", params={"rows": "5000"})
result = etl.run(job)
print(result.state, result.rows_written)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from etl import config
from etl.errors import EtlError, JobFailed, UsageError
from etl.jobs import load, load_job, state_dir, validate
from etl.manager import get_plugin_manager
from etl.runner import run_job
from etl.settings import QueueSettings, queue_settings

if TYPE_CHECKING:
    import pluggy

    from etl.config import Job
    from etl.queue import Queue
    from etl.retry import Clock
    from etl.runs import RunInfo, RunResult
    from etl.stages import Plan, RowCount
    from etl.store import RunRecord, RunStore, WorkerInfo

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
    "state_dir",
    "submit",
    "validate",
    "workers",
]  # load_job, state_dir, validate: from etl.jobs


def plan(
    job: Job, *, pm: pluggy.PluginManager | None = None, run_id: str | None = None
) -> tuple[RunInfo, Plan, list[str]]:
    """Count and plan a run without running it (what ``etl run --dry-run`` shows).

    Returns the run's info, its chunk plan, and the warnings the thresholds give. Give the
    ``run_id`` the run will have when it follows (as ``etl run`` does, counting to choose where
    the run goes): a source that stages work for a run (a BigQuery query's result) then does it
    once.

    Raises:
        UsageError: the source holds more rows than ``thresholds.max``.
        JobFailed: counting or planning failed.
    """
    from etl.runner import JobRun, check_thresholds

    pm = pm or get_plugin_manager(job_plugins=job.spec.plugins, job_dir=job.directory)
    work = JobRun(job, pm, run_id=run_id)
    try:
        if job.spec.incremental is not None:
            work.open_window(open_store().get_mark(job.name))
        count = work.count()
        warnings = check_thresholds(job, count)
        info, chunks = work.plan(count)
    except EtlError:
        raise  # ours already says what is wrong
    except Exception as exc:
        raise JobFailed(f"planning failed: {type(exc).__name__}: {exc}") from exc
    finally:
        work.close()
    return info, chunks, warnings


def run(
    job: Job | str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    pm: pluggy.PluginManager | None = None,
    run_id: str | None = None,
    clock: Clock | None = None,
    count: RowCount | None = None,
    window: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run a job in this process and return its :class:`~etl.runs.RunResult`.

    ``job`` is a :class:`~etl.config.Job` or a job file (loaded with ``params`` and ``sets``).
    An incremental job reads from its stored mark (or the ``window`` that :func:`plan` fixed)
    and moves the mark when the run completes.

    Raises:
        ConfigErrors: the job is invalid.
        UsageError: the source holds more rows than ``thresholds.max``.
        JobFailed: the run failed; its ``result`` holds the counters and the error.
    """
    if not isinstance(job, config.Job):
        job, pm = load(job, text=None, params=params, sets=sets, env=None, pm=pm)
    if pm is None:
        pm = get_plugin_manager(job_plugins=job.spec.plugins, job_dir=job.directory)
    marks, fixed = None, None
    if job.spec.incremental is not None:
        from etl.incremental import Window

        marks = open_store()
        fixed = Window.from_json(dict(window)) if window is not None else None
    return run_job(job, pm, run_id=run_id, state_dir=state_dir(), clock=clock, count=count, window=fixed, marks=marks)


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
    job: Job | str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    queue: Queue | None = None,
    run_id: str | None = None,
    window: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Queue a run of ``job`` for the workers; returns its record (``.id`` is the run id, new
    unless given).

    The job is stored as written, with the parameters and overrides given here, and each
    worker resolves its ``${VAR}`` references from its own environment.
    """
    if not isinstance(job, config.Job):
        job = load_job(job, params=params, sets=sets)
    queue = queue or open_queue()
    return queue.submit(
        job, params={k: str(v) for k, v in (params or {}).items()}, sets=list(sets), run_id=run_id, window=window
    )


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
            was dropped; run the job again instead).
    """
    queue = queue or open_queue()
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
    next batch, and what the run staged (a replace's new table) is dropped.

    Raises:
        UsageError: no such run, or it has completed.
    """
    queue = queue or open_queue()
    run = get_run(run_id, queue)
    if run.state == "completed":
        raise UsageError(f"run {run_id} has completed; there is nothing to cancel")
    if run.state != "cancelled" and not queue.store.cancel(run_id):
        run = get_run(run_id, queue)
        if run.state != "failed":
            raise UsageError(f"run {run_id} is {run.state}; it can't be cancelled")
        queue.store.cancel_failed(run_id)
    queue.send("etl.abort", run_id)
    return get_run(run_id, queue)


def clean(state: str, older_than: float = 0.0, queue: Queue | None = None) -> int:
    """Delete finished runs in ``state`` that finished more than ``older_than`` seconds ago."""
    if state not in ("completed", "failed", "cancelled"):
        raise UsageError(f"--state {state!r} is not one of: completed, failed, cancelled")
    return (queue or open_queue()).store.clean(state, older_than)  # type: ignore[arg-type]


def workers(queue: Queue | None = None) -> list[WorkerInfo]:
    """Live workers (seen within three heartbeats): host, pid, chunks in hand, last heartbeat."""
    from etl.worker import WorkerOptions

    return (queue or open_queue()).store.workers(WorkerOptions.from_env().heartbeat * 3)
