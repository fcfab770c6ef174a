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
from etl.errors import EtlError, JobFailed
from etl.jobs import load, load_job, state_dir, validate
from etl.manager import get_plugin_manager
from etl.runner import run_job

if TYPE_CHECKING:
    import pluggy

    from etl.config import Job
    from etl.retry import Clock
    from etl.runs import RunInfo, RunResult
    from etl.stages import Plan

__all__ = ["load_job", "plan", "run", "state_dir", "validate"]  # load_job, state_dir, validate: from etl.jobs


def plan(job: Job, *, pm: pluggy.PluginManager | None = None) -> tuple[RunInfo, Plan, list[str]]:
    """Count and plan a run without running it (what ``etl run --dry-run`` shows).

    Returns the run's info, its chunk plan, and the warnings the thresholds give.

    Raises:
        UsageError: the source holds more rows than ``thresholds.max``.
        JobFailed: counting or planning failed.
    """
    from etl.runner import JobRun, check_thresholds

    pm = pm or get_plugin_manager(job_plugins=job.spec.plugins, job_dir=job.directory)
    work = JobRun(job, pm)
    try:
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
) -> RunResult:
    """Run a job in this process and return its :class:`~etl.runs.RunResult`.

    ``job`` is a :class:`~etl.config.Job` or a job file (loaded with ``params`` and ``sets``).

    Raises:
        ConfigErrors: the job is invalid.
        UsageError: the source holds more rows than ``thresholds.max``.
        JobFailed: the run failed; its ``result`` holds the counters and the error.
    """
    if not isinstance(job, config.Job):
        job, pm = load(job, text=None, params=params, sets=sets, env=None, pm=pm)
    if pm is None:
        pm = get_plugin_manager(job_plugins=job.spec.plugins, job_dir=job.directory)
    return run_job(job, pm, run_id=run_id, state_dir=state_dir(), clock=clock)
