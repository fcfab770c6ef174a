"""The three stage contracts (source, transform, sink) and the small objects they exchange.

A plugin supplies a stage by subclassing :class:`Source`, :class:`Transform` or :class:`Sink`,
declaring its options as a :class:`StageOptions` model, and returning the class from a
registration hook (see :mod:`etl.hookspecs`).

Data moves as Arrow record batches. A :class:`Chunk` is a small JSON-serializable descriptor
(a row range, a byte range of a file, a set of row groups), never the data, so that a chunk
can be planned in one process and read in another.
"""

from __future__ import annotations

import contextvars
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import pyarrow as pa

    from etl.errors import ConfigError
    from etl.incremental import Window

__all__ = [
    "Chunk",
    "Plan",
    "RowCount",
    "Sink",
    "Source",
    "Stage",
    "StageContext",
    "StageOptions",
    "Transform",
]

OnError = Literal["fail", "skip"]


class StageOptions(BaseModel):
    """Base class of a stage's options: the keys of its YAML mapping other than ``type``.

    Unknown keys are errors. Declare secrets as :class:`pydantic.SecretStr` so that they are
    masked wherever the configuration is shown. Each field's ``description`` appears in
    ``etl plugins`` and in the JSON Schema that editors use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(frozen=True)
class Chunk:
    """One unit of work: planned by a source, read by it, written by a sink as a whole.

    Attributes:
        index: 0-based position in the run's plan; sinks key idempotent writes on it.
        rows: the number of rows the source expects in it, when known.
        args: the source's own description of the chunk. JSON-serializable values only
            (numbers, strings, booleans, lists, mappings), because it crosses processes.
        label: a short human description, such as ``"rows 0-49999"``.
        attempt: which attempt at the chunk this is (1 for the first). It only grows, so a
            sink with transactions can use it as a fencing token: a write of an older attempt
            (a worker that lost its lease) must not commit after a newer one began. (A Redis
            failover can undo the claim that raised it, and two attempts carry the same
            number: the sink's ledger, keyed by run and chunk, keeps the chunk once.)
    """

    index: int
    rows: int | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    attempt: int = 1


@dataclass(frozen=True)
class Plan:
    """A source's plan for a run: its chunks, and anything every chunk's read needs.

    Attributes:
        chunks: the chunks, indexed 0..n-1 in order.
        shared: JSON-serializable facts decided once at plan time and given back to every
            :meth:`Source.read` (an inferred schema, say), so that all chunks agree.
    """

    chunks: Sequence[Chunk]
    shared: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int | None:
        """The sum of the chunks' expected rows, or ``None`` if any is unknown."""
        counts = [c.rows for c in self.chunks]
        return None if any(n is None for n in counts) else sum(counts)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RowCount:
    """How many rows a source holds: ``exact``, or an estimate."""

    rows: int | None
    exact: bool = True


class Rejects:
    """Where a stage's rejected rows go for the chunk being processed (set by the runner)."""

    def reject(
        self,
        rows: pa.RecordBatch,
        positions: Sequence[int],
        *,
        stage: str,
        reasons: Sequence[str],
        column: str | None = None,
    ) -> None:  # pragma: no cover - interface
        raise NotImplementedError


#: The collector of rejected rows for the chunk this thread is working on.
current_rejects: contextvars.ContextVar[Rejects | None] = contextvars.ContextVar("etl_current_rejects", default=None)


@dataclass
class StageContext:
    """What a stage knows about the run it serves.

    Attributes:
        job: the job's name.
        run_id: the run's id.
        params: the job's parameters, typed (``datetime.date`` for a ``date`` param, ...).
        job_dir: the directory of the job file; code paths given in the job (a Python file)
            are looked up there first. Data paths are relative to the working directory.
        label: how errors name this stage, such as ``sink`` or ``transforms[2] (cast)``.
        on_error: the job's ``on_error``: ``fail`` or ``skip``.
        batch_size: the largest record batch a source should yield.
        window: for a source of an incremental job, the rows this run reads (see
            :class:`~etl.incremental.Window`): set once the run is planned, before ``count``.
        written: for a sink's ``finalize``: the rows each chunk's write returned, by chunk
            index, so that a sink whose staging can vanish (tables that expire) can check that
            every chunk's rows are still there; ``None`` before finalize.
    """

    job: str
    run_id: str
    params: Mapping[str, Any] = field(default_factory=dict)
    job_dir: Path = field(default_factory=Path.cwd)
    label: str = ""
    on_error: OnError = "fail"
    batch_size: int = 65_536
    window: Window | None = None
    written: Mapping[int, int] | None = None

    def reject(
        self,
        rows: pa.RecordBatch,
        positions: Sequence[int],
        reasons: str | Sequence[str],
        *,
        column: str | None = None,
    ) -> None:
        """Reject ``rows`` (found at ``positions`` of the batch this stage was given).

        With ``on_error: fail`` this raises :class:`~etl.errors.RejectedRows` naming the first
        row; with ``skip`` the rows are counted and written to the run's rejects file. A stage
        returns its batch without the rejected rows either way.
        """
        from etl.errors import RejectedRows

        reasons = [reasons] * len(positions) if isinstance(reasons, str) else list(reasons)
        collector = current_rejects.get()
        if self.on_error == "fail" or collector is None:
            value = None
            if column is not None and column in rows.schema.names and rows.num_rows:
                value = _shown(rows.column(column)[0])
            raise RejectedRows(
                stage=self.label,
                count=len(positions),
                row=positions[0] if positions else 0,
                reason=reasons[0] if reasons else "rejected",
                column=column,
                value=value,
            )
        collector.reject(rows, positions, stage=self.label, reasons=reasons, column=column)


def _missing_column(name: str, schema: pa.Schema, *, key: str) -> ConfigError:
    """The error for an option (``key``) naming a column ``name`` that ``schema`` lacks:
    ``column 'orderid' is not in the rows; did you mean "order_id"? The rows have: ...``."""
    from etl.errors import ConfigError, did_you_mean

    hint = did_you_mean(name, schema.names)
    have = ", ".join(schema.names) or "no columns"
    rest = f"{hint} The rows have: {have}" if hint else f"; the rows have: {have}"
    return ConfigError(f"column {name!r} is not in the rows{rest}", key=key)


def _shown(scalar: Any) -> str:
    """An Arrow value for a message, even one Python can't hold (nanoseconds, year 10000)."""
    for show in (lambda: scalar.as_py(), lambda: str(scalar), lambda: scalar.cast("string").as_py()):
        try:
            return _short(show())
        except Exception:  # OverflowError, ValueError, pyarrow's own: try the next way
            continue
    return f"a {scalar.type} value"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Stage:
    """What every stage shares: its type name, options model and context."""

    #: The ``type:`` that selects this stage in a job file.
    name: ClassVar[str]
    #: The model of its options.
    Options: ClassVar[type[StageOptions]] = StageOptions

    def __init__(self, options: StageOptions, context: StageContext) -> None:
        self.options = options
        self.context = context

    def close(self) -> None:
        """Release what the stage holds (connections, files). Called once, at the end."""

    def require_columns(self, schema: pa.Schema, names: Iterable[str], *, key: str) -> None:
        """Refuse the columns of ``names`` that ``schema`` lacks: for :meth:`Transform.output_schema`
        and :meth:`Sink.check_schema`, where an option (``key``, such as ``key`` or
        ``columns.order_id``) names columns.

        Raises:
            ConfigErrors: one :class:`~etl.errors.ConfigError` per missing column, saying which
                column is near and which the rows have. The runner adds the job file and line.
        """
        from etl.errors import ConfigErrors

        problems = [_missing_column(name, schema, key=key) for name in names if name not in schema.names]
        if problems:
            raise ConfigErrors(problems)


class Source(Stage, ABC):
    """Where rows come from.

    A source counts its rows, plans chunks for a chunk size, and reads one chunk at a time as
    a stream of record batches. ``read`` must give the same rows for the same chunk every time
    it is called, in any process: that is what makes a retried chunk safe.

    A source that can read incrementally sets ``incremental = True``, gives the highest cursor
    value it holds with :meth:`cursor_high`, and, when ``context.window`` is set, counts, plans
    and reads only the rows inside it.
    """

    #: Whether the source can read incrementally (``incremental:`` in a job).
    incremental: ClassVar[bool] = False

    @classmethod
    def check_cursor(cls, options: StageOptions, cursor: str) -> None:
        """Refuse, with a :class:`ValueError` saying why, a cursor this source can't follow."""
        if not cls.incremental:
            raise ValueError(f"the {cls.name} source can't read incrementally")

    def cursor_high(self, cursor: str, above: Any = None) -> Any:
        """The highest value of ``cursor`` among the source's rows now (``None`` when it has
        none): the upper bound of an incremental run, fixed when the run is planned.

        ``above`` is the job's mark (a value this source gave before, of the same type), or
        ``None`` on a first run: a source should only look at rows whose cursor is above it
        (an index range, the newest partitions) and say ``None`` when there is none."""
        raise NotImplementedError(f"the {self.name} source can't read incrementally")

    def count(self) -> RowCount:
        """How many rows the run will read; by default, the sum of the plan's chunks."""
        rows = self.plan(1_000_000).rows
        return RowCount(rows, exact=rows is not None)

    @abstractmethod
    def plan(self, chunk_size: int) -> Plan:
        """Split the rows into chunks of about ``chunk_size`` rows."""

    def output_schema(self) -> pa.Schema | None:
        """The columns (and types) of the rows :meth:`read` will yield, from a cheap look that
        reads no rows (a file's footer, a query of no rows, a table's metadata), or ``None``
        when the source can't tell before reading (the default).

        Called once a run is planned, after :meth:`plan`: a source may keep what planning
        learned and give it back here. The columns that transforms and the sink name are
        checked against it before anything is written; with ``None`` that check is skipped.
        (Named like :meth:`Transform.output_schema`, and not ``schema``, which sources often
        use for an attribute of their own.)"""
        return None

    @abstractmethod
    def read(self, chunk: Chunk, shared: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
        """Yield the chunk's rows as record batches of at most ``context.batch_size`` rows."""


class Transform(Stage, ABC):
    """A function from a record batch to a record batch (or a table)."""

    @abstractmethod
    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch | pa.Table:
        """Transform one batch. Reject bad rows with ``self.context.reject``."""

    def output_schema(self, schema: pa.Schema) -> pa.Schema | None:
        """The schema of the batches :meth:`apply` makes of batches of ``schema``, or ``None``
        when the transform can't tell without rows (the default: the checks after it are
        skipped). Called once a run is planned, before any row is read.

        Raises:
            ConfigError: an option names a column that ``schema`` lacks (see
                :meth:`~Stage.require_columns`), or can't apply to it.
        """
        return None


class Sink(Stage, ABC):
    """Where rows go.

    The runner calls :meth:`prepare` once per run before any chunk, :meth:`write` once per
    chunk (again if the chunk is retried, possibly in another process), then :meth:`finalize`
    once when every chunk is written, or :meth:`abort` when the run is cancelled.

    ``write`` must be idempotent: writing the same chunk of the same run twice leaves one copy,
    and a write that fails half-way leaves nothing behind.
    """

    def check_schema(self, schema: pa.Schema) -> None:
        """Refuse rows of ``schema`` before anything is written: called once a run is planned,
        before :meth:`prepare`, when the schema reaching the sink is known. The default accepts
        any schema; a sink whose options name columns (a merge key, partitioning) checks them.

        Raises:
            ConfigError: an option names a column that ``schema`` lacks (see
                :meth:`~Stage.require_columns`).
        """

    def prepare(self) -> None:
        """Make the target ready for the run's chunks (staging tables, directories)."""

    @abstractmethod
    def write(self, chunk: Chunk, batches: Iterable[pa.RecordBatch]) -> int:
        """Write the chunk's batches; return the number of rows written."""

    def finalize(self) -> None:
        """Make the run's rows visible as the mode says (swap in a replaced table, merge)."""

    def staged(self) -> list[str]:
        """What :meth:`prepare` and :meth:`write` staged for this run that :meth:`abort` would
        drop: names a person can look up (a table, a directory), for the message of a failed run,
        which keeps them for ``etl retry``. Optional: nothing, by default."""
        return []

    def abort(self) -> None:
        """The run was cancelled: remove what :meth:`prepare` staged. (A failed run is not
        aborted: what it staged waits for ``etl retry``, or ``etl cancel``, which aborts it.)"""
