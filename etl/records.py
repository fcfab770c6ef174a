"""New run records, signed: what a run executes, as every driver records it.

A run record keeps the job as written (``${VAR}`` references and all), its parameters and
overrides; with ``ETL_SECRET_KEY`` set it is signed, so that a record written into the store by
anyone else is refused by the workers (:func:`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etl.errors import UsageError
from etl.runs import new_run_id
from etl.store import RunRecord

if TYPE_CHECKING:
    import pluggy

    from etl.config import Job
    from etl.runs import RunInfo
    from etl.stages import Plan
    from etl.store import RunStore

__all__ = ["busy", "load_recorded", "new_record", "record_plan", "signature", "verify"]


def new_record(
    job: Job,
    *,
    secret: str = "",
    params: Mapping[str, Any] | None = None,
    sets: Sequence[str] | None = None,
    run_id: str | None = None,
    window: Mapping[str, Any] | None = None,
    **fields: Any,
) -> RunRecord:
    """A new run of ``job``, signed with ``secret`` (when there is one), not yet stored."""
    record = RunRecord(
        id=run_id or new_run_id(),
        job=job.name,
        job_file=str(Path(job.file).resolve()) if not job.file.startswith("<") else job.file,
        job_text=job.text,
        params={k: str(v) for k, v in (params or {}).items()},
        sets=list(sets or []),
        max_parallel=job.spec.max_parallel or 0,
        delay=job.spec.delay,
        attempts=job.spec.retry.attempts,
        submitted_by=f"{socket.gethostname()}:{os.getpid()}",
        window=dict(window) if window is not None else None,
        **fields,
    )
    record.signature = signature(record, secret)
    return record


def load_recorded(run: RunRecord) -> tuple[Job, pluggy.PluginManager]:
    """The job a run record holds, validated in this process (``${VAR}`` from its environment),
    with its plugin manager: a scheduled run's parameters from the interval it was fired for.

    Raises:
        ConfigErrors: the job is invalid here.
    """
    from etl.jobs import load
    from etl.schedule import run_context

    context = run_context(None, "UTC", 0.0, run.interval) if run.interval is not None else None
    return load(
        None,
        text=run.job_text,
        params=run.params,
        sets=run.sets,
        env=None,
        pm=None,
        origin=run.job_file or None,
        run=context,
    )


def record_plan(store: RunStore, run_id: str, info: RunInfo, plan: Plan, *, activate: bool = True) -> RunRecord | None:
    """Record a waiting run's plan (:meth:`RunStore.set_plan <etl.store.RunStore.set_plan>`): the
    run made ``active``, or left waiting, planned, with ``activate=False``."""
    return store.set_plan(
        run_id,
        rows=info.rows,
        exact=info.rows_exact,
        chunks=plan.chunks,
        shared=dict(plan.shared),
        window=info.window,
        activate=activate,
    )


def signature(run: RunRecord, secret: str) -> str:
    """An HMAC of what a run will execute (its job, parameters and overrides) with ``secret``."""
    if not secret:
        return ""
    signed: list[Any] = [run.id, run.job_text, run.job_file, run.params, run.sets]
    if run.interval is not None:  # a scheduled run's interval decides its parameters
        signed.append(run.interval)
    what = json.dumps(signed, sort_keys=True)
    return hmac.new(secret.encode(), what.encode(), hashlib.sha256).hexdigest()


def verify(run: RunRecord, secret: str) -> bool:
    """Whether a run may be executed here: always without a key, with one only if signed with it."""
    return not secret or hmac.compare_digest(run.signature, signature(run, secret))


def busy(job: Job, unfinished: Sequence[str]) -> UsageError:
    """The error for a run refused by the job's ``concurrency:``."""
    return UsageError(
        f"job {job.name} allows {job.spec.concurrency} unfinished run(s) at a time "
        f"(concurrency: {job.spec.concurrency}) and {', '.join(unfinished)} is still unfinished; "
        f"wait for it (etl status {unfinished[0]} --follow) or cancel it (etl cancel {unfinished[0]})"
    )
