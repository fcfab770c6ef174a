"""New run records, signed: what a run executes, as every driver records it.

A run record keeps the job as written (``${VAR}`` references and all), its parameters and
overrides. With ``ETL_SECRET_KEY`` set, everything a worker acts on is signed by the process that
wrote it (:class:`Signer`): the record (its job, parameters, overrides, interval and window), its
plan (shared data, window, chunk count), each chunk's descriptor, and each chunk's completion.
Every signature binds the run id (and the chunk's index), so that nothing signed can be copied
from one run or chunk to another. A worker refuses what fails the check before it reads or
writes anything. The key's id, recorded in the store (:func:`key_refusal`), keeps a process
without the key, or with another one, from working the queue.
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
    from etl.store import ChunkRecord, RunStore

__all__ = [
    "Signer",
    "busy",
    "key_id",
    "key_refusal",
    "load_recorded",
    "new_record",
    "record_plan",
]


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
    record.signature = Signer(secret).run(record)
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


def record_plan(
    store: RunStore, run_id: str, info: RunInfo, plan: Plan, *, activate: bool = True, secret: str | None = ""
) -> RunRecord | None:
    """Record a waiting run's plan (:meth:`RunStore.set_plan <etl.store.RunStore.set_plan>`),
    signed with ``secret`` (the plan, and each chunk's descriptor): the run made ``active``, or
    left waiting, planned, with ``activate=False``."""
    signer = Signer(secret)
    return store.set_plan(
        run_id,
        rows=info.rows,
        exact=info.rows_exact,
        chunks=plan.chunks,
        shared=dict(plan.shared),
        window=info.window,
        activate=activate,
        sign=(signer.plan, signer.chunk) if signer.secret else None,
    )


class Signer:
    """HMAC-SHA256 signatures, with ``ETL_SECRET_KEY``, of everything a worker acts on.

    A ``check_*`` method names what failed its check, or returns ``None`` (always, without a
    key). A signature covers values as the store keeps them (JSON), so that what one process
    signs is what every other reads back.
    """

    def __init__(self, secret: str | None) -> None:
        self.secret = secret or ""

    def _mac(self, what: Any) -> str:
        text = json.dumps(what, sort_keys=True, separators=(",", ":"))
        return hmac.new(self.secret.encode(), text.encode(), hashlib.sha256).hexdigest()

    def _fails(self, given: str, expected: str) -> bool:
        return bool(self.secret) and not hmac.compare_digest(given or "", expected)

    # -- the run record: what it executes -------------------------------------------------------

    def run(self, run: RunRecord) -> str:
        """The record's signature: its id, job text and path, parameters, overrides, and (when
        set) the interval and the window it was submitted with."""
        if not self.secret:
            return ""
        signed: list[Any] = [run.id, run.job_text, run.job_file, run.params, run.sets]
        if run.interval is not None:  # a scheduled run's interval decides its parameters
            signed.append(run.interval)
        if run.window is not None:  # a window given with the run is the one its plan opens
            signed.append(["window", run.window])
        # The first version's layout (json.dumps' default separators): runs queued before an
        # upgrade still verify.
        what = json.dumps(signed, sort_keys=True)
        return hmac.new(self.secret.encode(), what.encode(), hashlib.sha256).hexdigest()

    def check_run(self, run: RunRecord) -> str | None:
        if self._fails(run.signature, self.run(run)):
            return "the run's record (its job, parameters, overrides or window)"
        return None

    # -- its plan: what every chunk's read shares ------------------------------------------------

    def plan(self, run: RunRecord, *, stored: bool = False) -> str:
        """The plan's signature: the run's id, rows, number of chunks, shared data and window
        (``stored``: as read from the store, JSON already)."""
        if not self.secret:
            return ""
        shared, window = (run.shared, run.window) if stored else (_stored(run.shared), _stored(run.window))
        return self._mac(["plan", run.id, run.rows_total, run.rows_exact, run.chunks_total, shared, window])

    def check_plan(self, run: RunRecord) -> str | None:
        if run.planned and self._fails(run.plan_signature, self.plan(run, stored=True)):
            return "the run's plan (its shared data, window or number of chunks)"
        return None

    # -- each chunk: its descriptor, and its completion --------------------------------------------

    def chunk(self, chunk: ChunkRecord, *, stored: bool = False) -> str:
        """A chunk descriptor's signature: its run, index, rows, label and the source's args
        (``stored``: as read from the store, JSON already)."""
        if not self.secret:
            return ""
        args = chunk.args if stored else _stored(chunk.args)
        return self._mac(["chunk", chunk.run_id, chunk.index, chunk.rows, chunk.label, args])

    def check_chunk(self, chunk: ChunkRecord) -> str | None:
        if self._fails(chunk.signature, self.chunk(chunk, stored=True)):
            return f"chunk {chunk.index}'s descriptor (what the source reads for it)"
        return None

    def done(self, run_id: str, index: int, token: int, rows_written: int) -> str:
        """The signature of a chunk's completion: the attempt (``token``) that wrote it, and the
        rows it wrote (what finalizing tells the sink)."""
        if not self.secret:
            return ""
        return self._mac(["done", run_id, index, token, rows_written])

    def check_done(self, chunk: ChunkRecord) -> str | None:
        if not self.secret:
            return None
        expected = self.done(chunk.run_id, chunk.index, chunk.token, chunk.rows_written)
        if chunk.state != "done" or self._fails(chunk.done_signature, expected):
            return f"chunk {chunk.index}'s completion"
        return None


def _stored(value: Any) -> Any:
    """``value`` as the store gives it back (JSON: tuples become lists, keys text)."""
    return json.loads(json.dumps(value)) if value else value


def key_id(secret: str | None) -> str:
    """The id of ``ETL_SECRET_KEY`` (``""`` without one): 16 hex digits of an HMAC of a constant
    with the key, which tells nothing of the key itself."""
    if not secret:
        return ""
    return hmac.new(secret.encode(), b"etl queue key id", hashlib.sha256).hexdigest()[:16]


def key_refusal(store: RunStore, secret: str | None) -> str | None:
    """Why this process must not work the store's queue, or ``None``.

    The first process with ``ETL_SECRET_KEY`` records the key's id in the store. From then on a
    process without the key would run whatever a writer to the store forged (messages are
    pickles, records name code to run), and one with another key would refuse every run: both
    are refused. A process with the key records its id again if it is gone.
    """
    mine = key_id(secret)
    marker = store.key_marker(mine or None)
    theirs = str(marker.get("id") or "") if marker else ""
    if not theirs or theirs == mine:
        return None
    assert marker is not None
    name, by = store.prefix, marker.get("by") or "an earlier process"
    if not mine:
        return (
            f"queue {name} is keyed (key id {theirs}, first used by {by}): its workers and submitters sign "
            "what they send with ETL_SECRET_KEY, and this process has none. Set the same ETL_SECRET_KEY here: "
            "a process without it would run whatever anyone who can write to the store forged"
        )
    return (
        f"queue {name} is keyed with another ETL_SECRET_KEY (key id {theirs}, first used by {by}) than this "
        f"process's (key id {mine}): give every worker and submitter the same key. To change the key, stop "
        f"every worker and submitter, let unfinished runs finish (or cancel them), then remove the key's id "
        f"(redis-cli DEL {name}:key; on the embedded queue, etl.api.open_store().forget_key())"
    )


def busy(job: Job, unfinished: Sequence[str]) -> UsageError:
    """The error for a run refused by the job's ``concurrency:``."""
    return UsageError(
        f"job {job.name} allows {job.spec.concurrency} unfinished run(s) at a time "
        f"(concurrency: {job.spec.concurrency}) and {', '.join(unfinished)} is still unfinished; "
        f"wait for it (etl status {unfinished[0]} --follow) or cancel it (etl cancel {unfinished[0]})"
    )
