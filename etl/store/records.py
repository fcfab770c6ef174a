"""The store's records: a run, a chunk's ledger entry, a live worker, and what a completion
decided. Their documents (``to_doc``) are what :mod:`etl.kv` keeps: add fields with defaults, never
rename one, so that runs already stored keep loading.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from etl.errors import mask_keyword_passwords
from etl.masking import MASK, mask
from etl.progress import RunProgress
from etl.runs import RunState
from etl.stages import Chunk

__all__ = [
    "FINISHED",
    "FOREVER",
    "INFLIGHT",
    "ChunkRecord",
    "ChunkState",
    "Completion",
    "RunRecord",
    "WorkerInfo",
    "iso_time",
]

ChunkState = Literal["pending", "queued", "running", "retrying", "done", "failed"]
FINISHED: tuple[RunState, ...] = ("completed", "failed", "cancelled")
INFLIGHT: tuple[ChunkState, ...] = ("queued", "running", "retrying")
FOREVER = float("inf")


def iso_time(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC, ``2026-11-28T20:33:00Z`` (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class RunRecord:
    """A run as the store keeps it. Times are Unix timestamps (UTC)."""

    id: str
    job: str
    state: RunState = "waiting"
    job_file: str = ""
    job_text: str = ""
    params: dict[str, str] = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)
    max_parallel: int = 0
    delay: float = 0.0
    attempts: int = 3
    rows_total: int | None = None
    rows_exact: bool = True
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    retries: int = 0
    planned: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    error_chunk: int | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    finalizer: str | None = None
    finalize_until: float | None = None
    aborted: bool = False
    submitted_by: str = ""
    #: With ``ETL_SECRET_KEY``: the signatures of the record and of its plan (:mod:`etl.records`).
    signature: str = ""
    plan_signature: str = ""
    #: An incremental run's window (:class:`~etl.incremental.Window` as JSON), fixed at plan time.
    window: dict[str, Any] | None = None
    #: A scheduled run: the slot it was fired for (a Unix time), and the interval it covers.
    scheduled_for: float | None = None
    interval: dict[str, str] | None = None
    #: With ``overlap: queue``, the run this one waits for before it is planned.
    after: str | None = None
    #: Who drives the run: ``"queue"`` (workers, from queue messages) or ``"process"`` (the
    #: process that started it, in a loop; the reaper fails it when that process dies).
    driver: str = "queue"
    #: Attempts at finalizing, counted against the job's retry policy like a chunk's.
    finalize_attempts: int = 0

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RunRecord:
        return cls(**{k: v for k, v in doc.items() if k in _names(cls)})

    def to_doc(self) -> dict[str, Any]:
        """The record's fields, as stored. Nested values are shared, not copied (a deep copy per
        transaction cost more than the transaction): the store replaces a nested value, never
        changes one in place."""
        return dict(self.__dict__)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def in_process(self) -> bool:
        """Driven by the process that started it: no queue message is sent for it."""
        return self.driver == "process"

    def progress(self, now: float | None = None, chunks: Sequence[ChunkRecord] | None = None) -> RunProgress:
        """The run's progress figures (the one computation every display formats); with its
        chunks' records, their counts by state too."""
        return RunProgress.of(self, chunks, now)

    def seconds(self, now: float | None = None) -> float:
        return self.progress(now).seconds

    def rows_per_second(self, now: float | None = None) -> float:
        return self.progress(now).rows_per_second

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the pace so far, or ``None`` before there is a pace."""
        return self.progress(now).eta_seconds

    def to_json(self, now: float | None = None, chunks: Sequence[ChunkRecord] | None = None) -> dict[str, Any]:
        """The run as every view shows it (``--json`` output, the API, the event streams): ISO
        8601 UTC times and its progress figures (:meth:`RunProgress.to_json
        <etl.progress.RunProgress.to_json>`, with ``chunks`` their counts by state), its
        parameters and overrides with secrets masked (:func:`shown_params`, :func:`shown_sets`);
        not the job text, the plan's shared data or the signatures."""
        data = {k: v for k, v in self.to_doc().items() if k not in _NOT_SHOWN}
        data["params"], data["sets"] = shown_params(self.params), shown_sets(self.sets)
        for key in ("created_at", "started_at", "finished_at", "finalize_until", "scheduled_for"):
            data[key] = iso_time(data[key])
        data.update(self.progress(now, chunks).to_json())
        return data


@dataclass
class ChunkRecord:
    """A chunk's ledger entry."""

    run_id: str
    index: int
    label: str = ""
    rows: int | None = None
    args: dict[str, Any] = field(default_factory=dict)
    state: ChunkState = "pending"
    attempts: int = 0
    token: int = 0
    worker: str | None = None
    lease_until: float | None = None
    queued_at: float | None = None
    not_before: float | None = None
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    seconds: float = 0.0
    error: str | None = None
    errors: list[str] = field(default_factory=list)
    #: When the chunk was done (a Unix time): the dashboard's throughput per minute.
    finished_at: float | None = None
    #: With ``ETL_SECRET_KEY``: the signatures of the descriptor and of the completion.
    signature: str = ""
    done_signature: str = ""

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ChunkRecord:
        return cls(**{k: v for k, v in doc.items() if k in _names(cls)})

    def to_doc(self) -> dict[str, Any]:
        """The record's fields, as stored (nested values shared, as for a run)."""
        return dict(self.__dict__)

    def descriptor(self) -> Chunk:
        return Chunk(index=self.index, rows=self.rows, args=self.args, label=self.label, attempt=self.token)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.to_doc().items() if k not in _NOT_SHOWN}
        data["lease_until"] = iso_time(self.lease_until)
        data["queued_at"] = iso_time(self.queued_at)
        data["not_before"] = iso_time(self.not_before)
        data["finished_at"] = iso_time(self.finished_at)
        return data


@dataclass
class WorkerInfo:
    """A live worker process, as it registers itself."""

    id: str
    host: str
    pid: int
    concurrency: int = 1
    started_at: float = 0.0
    last_seen: float = 0.0
    current: list[str] = field(default_factory=list)
    version: str = ""
    #: The id of the supervisor (``etl worker --processes``) that started this worker process and
    #: restarts it; empty for a worker started on its own.
    supervisor: str = ""

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> WorkerInfo:
        return cls(**{k: v for k, v in doc.items() if k in _names(cls)})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = iso_time(self.started_at)
        data["last_seen"] = iso_time(self.last_seen)
        return data


@dataclass(frozen=True)
class Completion:
    """What :meth:`~etl.store.RunStore.complete` decided: whether it recorded the attempt
    (``accepted``; false for a zombie's result, or a chunk that is gone), whether that made every
    chunk of the run done (``last``), and, when accepted, the run and the chunk as it left them
    (``run`` with the new counters, ``chunk`` done); when asked to hand out more, the chunk it
    queued in this one's place (``queued``) and how many more the run could take (``room``)."""

    accepted: bool
    last: bool = False
    run: RunRecord | None = None
    chunk: ChunkRecord | None = None
    queued: tuple[int, ...] = ()
    room: int = 0


#: Fields no view shows: the job as written and the plan's shared data (big, and of no use
#: there), and the signatures.
_NOT_SHOWN = frozenset({"job_text", "shared", "signature", "plan_signature", "done_signature"})
#: A ``--set`` value longer than this is not parsed to be shown: it is hidden whole.
_SHOWN_SET_LIMIT = 10_000


def shown_params(params: dict[str, str]) -> dict[str, str]:
    """A run's parameters as views show them: the value of a parameter whose name names a
    secret (``db_password``, ``api_token``...) and any password in a URL or connection string
    masked (``***``), as ``etl validate --show`` masks the job's keys."""
    return {k: _unkeyword(v) for k, v in mask(params).items()}


def shown_sets(sets: Sequence[str]) -> list[str]:
    """A run's ``--set`` overrides as views show them, secrets masked: the whole value of a key
    that names a secret (``sink.password=***``), secret keys inside a mapping, and passwords in
    URLs and connection strings (``sink={"dsn": "postgresql://etl:***@db/sales", ...}``)."""
    return [_shown_set(item) for item in sets]


def _shown_set(item: str) -> str:
    from etl.yamldoc import parse_key_path

    key, sep, raw = item.partition("=")
    path = parse_key_path(key.strip()) if sep else ()
    if not path:
        return _unkeyword(mask(item))
    name = path[-1]
    value = _set_value(raw)
    if value is _HIDDEN:
        return f"{key}={MASK}"
    shown = _unkeyword(mask({name: value})[name])
    if shown == value:
        return item
    if isinstance(shown, str):
        return f"{key}={shown}"
    return f"{key}={json.dumps(shown, ensure_ascii=False, default=str)}"


_HIDDEN = object()


def _set_value(raw: str) -> Any:
    """A ``--set`` value as the job loader reads it (YAML), or ``_HIDDEN`` when it is too big to
    read here or holds aliases (an alias bomb written into the store must not stall a view)."""
    import yaml

    if not raw.strip():
        return ""
    if len(raw) > _SHOWN_SET_LIMIT:
        return _HIDDEN
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(raw, Loader=yaml.SafeLoader)):
            return _HIDDEN
        return yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError, ValueError):
        return raw


def _unkeyword(value: Any) -> Any:
    """``value`` with the passwords of libpq keyword/value strings in it masked."""
    if isinstance(value, str):
        return mask_keyword_passwords(value)
    if isinstance(value, dict):
        return {k: _unkeyword(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unkeyword(v) for v in value]
    return value


@functools.cache
def _names(cls: type) -> frozenset[str]:
    """A record class's field names (a document may hold others, from another version)."""
    return frozenset(f.name for f in fields(cls))
