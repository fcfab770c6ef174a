"""The queue: a Huey instance carrying run ids and chunk indexes, beside our run store.

Messages are ``etl.plan(run_id)``, ``etl.chunk(run_id, index)``, ``etl.finalize(run_id)`` and
``etl.abort(run_id)``: never rows, never credentials. What they act on lives in the
:class:`~etl.store.RunStore`. With ``ETL_SECRET_KEY`` set, messages are signed (and so is what
they act on: :mod:`etl.records`), so that someone who can write to Redis cannot make workers run
a forged task; once a process has used a key, processes without it may not send or execute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from loguru import logger

from etl import records
from etl.errors import TransientError, UsageError, hide, hide_passwords
from etl.kv import RedisKV, SqliteKV
from etl.redisconn import Connector, release
from etl.settings import QueueSettings, queue_settings
from etl.store import RunRecord, RunStore

if TYPE_CHECKING:
    import huey as huey_module

    from etl.config import Job
    from etl.runs import RunInfo
    from etl.stages import Plan

__all__ = ["Queue", "open_queue", "open_store"]

TASKS = ("etl.plan", "etl.chunk", "etl.finalize", "etl.abort")
#: How long a process trusts what it found of the queue's key before it looks again.
KEY_RECHECK_SECONDS = 30.0


#: How long a worker's blocking read (``BRPOP``) waits for a message before it looks again.
READ_TIMEOUT = 2


def _unrevoked(base: type[huey_module.Huey]) -> type[huey_module.Huey]:
    """``base`` without its look-ups of revoked tasks: two round trips a message (``HMGET``
    before running it, ``HDEL`` after) that find nothing, since etl revokes no Huey task. A run
    is stopped in the run store (``etl cancel``), which every message reads before it acts."""

    class Unrevoked(base):  # type: ignore[misc, valid-type]
        def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
            return False

        def delete(self, key: str) -> bool:
            if key.startswith("r:"):  # a task's revocation flag (Task.revoke_id): never set
                return False
            return bool(super().delete(key))

    Unrevoked.__name__ = Unrevoked.__qualname__ = base.__name__
    return Unrevoked


def _huey(settings: QueueSettings) -> huey_module.Huey:
    from huey import RedisHuey, SqliteHuey
    from huey.serializer import SignedSerializer

    serializer = SignedSerializer(secret=settings.secret, salt="etl") if settings.secret else None
    if settings.kind == "embedded":
        settings.directory.mkdir(parents=True, exist_ok=True)
        return _unrevoked(SqliteHuey)(
            settings.name, filename=str(settings.directory / "queue.db"), results=False, serializer=serializer
        )
    # Huey's recipe for Sentinel (or any pool of ours): hand it the connection pool. Its
    # blocking read waits READ_TIMEOUT on the server, so the pool's reply timeout is that
    # much longer: a socket timing out first would drop the message BRPOP was popping.
    pool = Connector(settings).pool(blocking=READ_TIMEOUT)
    return _unrevoked(RedisHuey)(
        settings.name,
        connection_pool=pool,
        results=False,
        serializer=serializer,
        blocking=True,
        read_timeout=READ_TIMEOUT,
    )


class Queue:
    """The run store and the Huey instance of one set of queue settings.

    Task functions are bound with :meth:`bind`, by the process that executes them (a worker);
    a process that only submits never imports the stages.
    """

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self.store = open_store(settings)
        self.huey = _huey(settings)
        self.handlers: dict[str, Callable[..., Any]] = {}
        self._tasks = {name: self.huey.task(name=name, retries=0)(self._dispatcher(name)) for name in TASKS}
        #: Signs and checks what workers act on, with ``ETL_SECRET_KEY``.
        self.signer = records.Signer(settings.secret)
        self._refusal: str | None = None
        self._key_checked = -KEY_RECHECK_SECONDS

    def _dispatcher(self, name: str) -> Callable[..., Any]:
        def task(*args: Any) -> Any:
            handler = self.handlers.get(name)
            if handler is None:
                raise RuntimeError(f"this process executes no {name} messages (no handler bound)")
            return handler(*args)

        task.__name__ = name.replace(".", "_")
        return task

    @property
    def embedded(self) -> bool:
        return self.settings.kind == "embedded"

    def bind(self, handlers: dict[str, Callable[..., Any]]) -> None:
        """Give the tasks their bodies in this process (``etl.chunk`` → a function of
        ``(run_id, index)``, ...): only a worker executes messages."""
        self.handlers.update(handlers)

    def check(self) -> None:
        """Fail with one clear line when the queue can't be reached or refuses us."""
        self.store.kv.ping()

    # -- the queue's key -----------------------------------------------------------------

    def refusal(self, *, fresh: bool = False) -> str | None:
        """Why this process must not send messages or execute runs on this queue (it lacks the
        key the queue's processes share, or has another: :func:`etl.records.key_refusal`), or
        ``None``. Looked up again after ``KEY_RECHECK_SECONDS`` (at once when ``fresh``); a keyed
        process records its key's id if the store has none."""
        now = time.monotonic()
        if fresh or now - self._key_checked >= KEY_RECHECK_SECONDS:
            self._refusal = records.key_refusal(self.store, self.settings.secret)
            self._key_checked = now
        return self._refusal

    def check_key(self, *, fresh: bool = False) -> None:
        """Raise :class:`~etl.errors.UsageError` (exit 2) if :meth:`refusal` gives a reason."""
        why = self.refusal(fresh=fresh)
        if why is not None:
            raise UsageError(why)

    # -- sending messages ----------------------------------------------------------------

    def send(self, name: str, *args: Any, delay: float = 0.0) -> None:
        """Put a message on the queue (signed with ``ETL_SECRET_KEY``).

        Raises:
            UsageError: the queue is keyed, and this process lacks its key.
            TransientError: Redis could not be reached (with what was tried).
        """
        self.check_key()
        task = self._tasks[name]
        started = time.monotonic()
        try:
            if delay > 0:
                task.schedule(args=args, delay=delay)
            else:
                task(*args)
        except Exception as exc:
            if self.embedded or not _unreachable(exc):
                raise
            raise TransientError(Connector(self.settings).unreachable(exc, time.monotonic() - started)) from None

    def dispatch(self, run: RunRecord, slots: int, delay: float = 0.0) -> list[int]:
        """Queue as many of the run's pending chunks as its parallelism allows (:meth:`parallelism`)."""
        indices = self.store.dispatch(run.id, self.parallelism(run, slots))
        self.send_chunks(run.id, indices, delay)
        return indices

    @staticmethod
    def parallelism(run: RunRecord, slots: int) -> int:
        """How many of the run's chunks may be in flight at once: its ``max_parallel``, or else
        ``slots`` (the live workers' slots)."""
        return run.max_parallel or max(slots, 1)

    def send_chunks(self, run_id: str, indices: Sequence[int], delay: float = 0.0) -> None:
        """Send the messages of chunks just queued."""
        for index in indices:
            self.send("etl.chunk", run_id, index, delay=delay)

    def in_transit(self) -> set[tuple[str, tuple[Any, ...]]]:
        """The messages waiting in the queue or its schedule, as (task name, args)."""
        found = set()
        for message in [*self.huey.pending(), *self.huey.scheduled()]:
            found.add((message.name, tuple(message.args)))
        return found

    # -- submitting runs -------------------------------------------------------------------

    def submit(
        self,
        job: Job,
        *,
        params: dict[str, str] | None = None,
        sets: list[str] | None = None,
        run_id: str | None = None,
        window: Mapping[str, Any] | None = None,
        planned: tuple[RunInfo, Plan] | None = None,
        **fields: Any,
    ) -> RunRecord:
        """Record a run of ``job`` (as written: ``${VAR}`` are resolved by each worker) and send
        its plan message. With ``planned`` (a run counted and planned already), its plan is
        recorded too, and the worker that takes the plan message starts the run without counting
        or planning it again.

        Raises:
            UsageError: the job declares ``concurrency:`` and that many runs are unfinished.
        """
        record = self.record(job, params=params, sets=sets, run_id=run_id, window=window, **fields)
        busy = self.store.create_run(record, limit=job.spec.concurrency)
        if busy is not None:
            raise records.busy(job, busy)
        if planned is not None:
            records.record_plan(self.store, record.id, *planned, activate=False, secret=self.settings.secret)
        logger.bind(job=job.name, run=record.id).info("queued run {} of {}", record.id, job.name)
        self.send("etl.plan", record.id)
        return record

    def record(self, job: Job, **fields: Any) -> RunRecord:
        """A new run of ``job``, signed with this queue's key, not yet stored.

        Raises:
            UsageError: the queue is keyed, and this process lacks its key.
        """
        self.check_key()
        return records.new_record(job, secret=self.settings.secret, **fields)

    def close(self) -> None:
        """Let go of the run store's connections and the queue's (Huey's storage keeps a Redis
        pool, or a SQLite connection, that it never closes itself)."""
        self.store.kv.close()
        storage = self.huey.storage
        if self.embedded:
            storage.close()
        else:
            release(storage.pool)


def _unreachable(error: Exception) -> bool:
    import redis

    return isinstance(error, redis.ConnectionError | redis.TimeoutError)


def open_store(settings: QueueSettings) -> RunStore:
    """The run store of the settings (runs, ledgers, workers, marks, schedules), without Huey."""
    hide(settings.secret)  # no error or log line shows the key or the queue's password
    hide_passwords(settings.url)
    if settings.kind == "embedded":
        kv: Any = SqliteKV(settings.directory / "state.db")
    else:
        kv = RedisKV(settings)
    return RunStore(kv, prefix=settings.name)


def open_queue(settings: QueueSettings | None = None) -> Queue:
    """The queue of the environment's settings (``ETL_QUEUE_URL``, ``REDIS_*``, or embedded)."""
    return Queue(settings or queue_settings())
