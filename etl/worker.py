"""A worker: a Huey consumer executing our messages, plus a heartbeat and a reaper.

Every worker registers itself (host, pid, chunks in hand, last heartbeat) and runs the reaper,
which is safe to run in any number of workers at once: it re-queues chunks whose lease ran out
(their worker died), re-sends messages that were lost (Huey forgets a message once a worker has
taken it), and resumes runs whose progress stalled. A killed worker costs a retry, never a chunk.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from etl.errors import UsageError, describe
from etl.executor import Executor
from etl.settings import env_count, env_seconds
from etl.store import WorkerInfo
from etl.version import __version__

if TYPE_CHECKING:
    from etl.metrics import WorkerMetrics
    from etl.queue import Queue
    from etl.scheduler import Scheduler

__all__ = ["Worker", "WorkerOptions"]


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker behaves; every figure in seconds.

    Attributes:
        concurrency: chunks this process works on at once (threads).
        lease: how long a chunk stays ours without a renewal (renewed every third of it).
        reaper_interval: how often the reaper looks for lost chunks and stalled runs.
        heartbeat: how often the worker says it is alive; it counts as gone after three misses.
        lost_after: a queued chunk whose message is in no queue after this long is sent again.
        grace: on SIGTERM/SIGINT, how long a chunk in hand may take to finish before it is given
            back to the queue.
        keep_runs: finished runs kept per final state (completed, failed, cancelled); older
            ones are deleted as new ones finish, so that the store does not grow without bound.
        scheduler_lease: how long the scheduler's lease lasts without renewal: when the worker
            firing the schedules dies, another takes over within this time.
    """

    concurrency: int = 1
    lease: float = 15.0
    reaper_interval: float = 5.0
    heartbeat: float = 5.0
    lost_after: float = 20.0
    grace: float = 30.0
    keep_runs: int = 1000
    scheduler_lease: float = 30.0

    @classmethod
    def from_env(cls, concurrency: int = 1, env: dict[str, str] | None = None) -> WorkerOptions:
        """The options ``ETL_*_SECONDS`` and ``ETL_KEEP_RUNS`` set.

        Raises:
            UsageError: a value that is not a number of seconds (more than 0; the grace period
                may be 0) or, for ``ETL_KEEP_RUNS``, a whole number.
        """
        env = dict(os.environ if env is None else env)

        def seconds(name: str, default: float) -> float:
            return env_seconds(env, name, default, positive=name != "ETL_GRACE_SECONDS")

        return cls(
            concurrency=concurrency,
            lease=seconds("ETL_LEASE_SECONDS", cls.lease),
            reaper_interval=seconds("ETL_REAPER_SECONDS", cls.reaper_interval),
            heartbeat=seconds("ETL_HEARTBEAT_SECONDS", cls.heartbeat),
            lost_after=seconds("ETL_LOST_AFTER_SECONDS", cls.lost_after),
            grace=seconds("ETL_GRACE_SECONDS", cls.grace),
            keep_runs=env_count(env, "ETL_KEEP_RUNS", cls.keep_runs),
            scheduler_lease=seconds("ETL_SCHEDULER_LEASE_SECONDS", cls.scheduler_lease),
        )


class _ToLoguru(logging.Handler):
    """Huey logs through the standard library; its lines go to loguru, once."""

    def emit(self, record: logging.LogRecord) -> None:
        level: Any = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR") else record.levelno
        logger.opt(exception=record.exc_info if record.exc_info else None).log(level, "huey: {}", record.getMessage())


def route_huey_logs(level: int = logging.WARNING) -> None:
    huey_logger = logging.getLogger("huey")
    huey_logger.handlers[:] = [_ToLoguru()]
    huey_logger.setLevel(level)
    huey_logger.propagate = False


class Worker:
    """One worker process: ``start()`` it, then ``wait()`` or ``stop()``."""

    def __init__(
        self,
        queue: Queue,
        options: WorkerOptions | None = None,
        configs: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.queue = queue
        self.options = options or WorkerOptions()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self.info = WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.options.concurrency,
            started_at=queue.store.clock(),
            version=__version__,
        )
        self.executor = Executor(
            queue,
            self.id,
            lease=self.options.lease,
            slots=self.slots,
            keep_runs=self.options.keep_runs,
            metrics=metrics,
        )
        queue.bind(self.executor.handlers())
        self._stop = threading.Event()
        #: Why the worker stopped on its own: the queue's key is not its key.
        self.refused: str | None = None
        self._threads: list[threading.Thread] = []
        self.consumer: Any = None
        self._run_logs: int | None = None
        self.scheduler: Scheduler | None = None
        #: The live workers' slots, and when they were read (time.monotonic()).
        self._slots: tuple[float, int] | None = None
        if configs is not None:
            from etl.scheduler import Scheduler

            self.scheduler = Scheduler(queue, configs, self.id, lease=self.options.scheduler_lease)

    def slots(self) -> int:
        """Chunks all live workers can work on at once: a run's default parallelism. Read again
        once a heartbeat (each chunk asks: reading the workers' records each time cost more than
        a small chunk's work)."""
        now = time.monotonic()
        if self._slots is not None and now - self._slots[0] < self.options.heartbeat:
            return self._slots[1]
        try:
            workers = self.queue.store.workers(ttl=self.options.heartbeat * 3)
        except Exception:
            return self.options.concurrency
        slots = max(sum(w.concurrency for w in workers), 1)
        self._slots = (now, slots)
        return slots

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, install_signals: bool = True) -> None:
        from etl import logsetup
        from etl.jobs import state_dir

        route_huey_logs()
        self.queue.check()
        self.queue.check_key(fresh=True)  # a worker without the queue's key never starts
        self._run_logs = logsetup.add_run_logs(state_dir())
        self._beat()
        self.consumer = self.queue.huey.create_consumer(
            workers=self.options.concurrency,
            worker_type="thread",
            periodic=False,
            initial_delay=0.05,
            backoff=1.5,
            max_delay=0.5,
            check_worker_health=True,
            shutdown_timeout=self.options.grace,
        )
        self.consumer.start()
        if install_signals:
            # Both SIGTERM (systemd, Kubernetes) and SIGINT (Ctrl-C) shut down gracefully; a
            # second signal stops at once.
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        else:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        for name, target in (("heartbeat", self._heartbeat_loop), ("reaper", self._reaper_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.scheduler is not None:
            self.scheduler.start()
        logger.info(
            "worker {} started: {} slot(s), queue {}, lease {}s",
            self.id,
            self.options.concurrency,
            self.queue.settings.display,
            self.options.lease,
        )

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop.is_set():
            logger.warning("second {}: stopping now", signal.Signals(signum).name)
            os._exit(1)
        logger.info(
            "{}: finishing the chunks in hand (up to {}s), then stopping",
            signal.Signals(signum).name,
            self.options.grace,
        )
        self._stop.set()

    def wait(self) -> None:
        """Block until a signal (or :meth:`stop` from another thread) ends the worker.

        Raises:
            UsageError: the worker stopped because the queue became keyed with an
                ``ETL_SECRET_KEY`` it lacks.
        """
        while not self._stop.wait(0.2):
            pass
        self.stop()
        if self.refused is not None:
            raise UsageError(self.refused)

    def stop(self) -> None:
        """Stop taking messages, let chunks in hand finish within the grace period, give the
        rest back to the queue, and deregister."""
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.consumer is not None:
            self.consumer.stop(graceful=True)  # waits up to the grace period for chunks in hand
            released = self.executor.release_all()
            if released:
                logger.warning("gave back {} chunk(s) still in hand: {}", len(released), ", ".join(released))
            self.consumer = None
        for thread in self._threads:
            thread.join(timeout=2)
        try:
            self.queue.store.remove_worker(self.id)
        except Exception as exc:
            logger.warning("could not deregister: {}", describe(exc))
        self.executor.close()
        logger.info("worker {} stopped", self.id)
        if self._run_logs is not None:
            logger.remove(self._run_logs)
            self._run_logs = None

    # -- heartbeat and reaper ----------------------------------------------------------------

    def _beat(self) -> None:
        with self.executor._lock:
            self.info.current = sorted(self.executor.in_hand)
        self.queue.store.heartbeat(self.info)
        refused = self.queue.refusal(fresh=True)
        if refused is not None and self.refused is None:
            # A process with a key used the queue after this worker started without it.
            self.refused = refused
            logger.error("stopping: {}", refused)
            self._stop.set()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.options.heartbeat):
            try:
                self._beat()
            except Exception as exc:
                logger.warning("heartbeat failed: {}", describe(exc))

    def _reaper_loop(self) -> None:
        while not self._stop.wait(self.options.reaper_interval):
            try:
                self.reap()
            except Exception as exc:
                logger.warning("reaper: {}", describe(exc))

    def reap(self) -> None:
        """One pass of the reaper (safe in any number of workers at once)."""
        store, send, metrics = self.queue.store, self.queue.send, self.executor.metrics
        for run_id, index in store.expired_leases():
            run = store.get_run(run_id)
            if run is None:
                continue
            outcome = store.reclaim(run_id, index, max_attempts=run.attempts)
            log = logger.bind(job=run.job, run=run_id, chunk=index)
            if outcome == "requeued":
                log.warning("chunk {}: its worker stopped renewing the lease; queued again", index)
                send("etl.chunk", run_id, index)
                if metrics is not None:
                    metrics.chunk_retry(run.job)
            elif outcome == "failed":
                if run.in_process:
                    log.error("chunk {}: the process running the run stopped renewing its lease; the run failed", index)
                else:
                    log.error("chunk {}: its workers died on it {} times; the run failed", index, run.attempts)
                if metrics is not None:
                    metrics.chunk_failed(run.job)
                self.executor.reaped(run_id)
        transit: set | None = None
        for run_id, index in store.waiting_chunks(self.options.lost_after):
            if store.park(run_id, index):
                continue  # its run has failed or was cancelled: nothing is lost
            if (waiting := store.get_run(run_id)) is not None and waiting.in_process:
                continue  # the process that drives it sends no messages
            transit = self.queue.in_transit() if transit is None else transit
            if ("etl.chunk", (run_id, index)) not in transit:
                store.touch(run_id, index)
                send("etl.chunk", run_id, index)
                logger.bind(run=run_id, chunk=index).warning("chunk {}: its message was lost; sent again", index)
        for run_id in store.expired_finalizers():
            run = store.get_run(run_id)
            if run is not None and run.in_process:
                message = f"the process finalizing it ({run.finalizer}) stopped renewing its lease (killed, or stalled)"
                if store.fail_run(run_id, message):
                    logger.bind(job=run.job, run=run_id).error("{}; the run failed", message)
                    self.executor.reaped(run_id)
                continue
            send("etl.finalize", run_id)
        for run in store.list_runs(state="waiting", limit=200):
            if not run.in_process and store.clock() - run.created_at > self.options.lost_after:
                transit = self.queue.in_transit() if transit is None else transit
                if ("etl.plan", (run.id,)) not in transit:
                    send("etl.plan", run.id)
        for run in store.active_runs(limit=200):
            if run.in_process:
                continue
            if run.chunks_done == run.chunks_total and run.finalizer is None:
                send("etl.finalize", run.id)
            else:
                self.executor.dispatch(run)
        for run in store.list_runs(state="cancelled", limit=50):
            if not run.aborted and store.clock() - (run.finished_at or 0) > self.options.lost_after:
                transit = self.queue.in_transit() if transit is None else transit
                if ("etl.abort", (run.id,)) not in transit:
                    send("etl.abort", run.id)
        # Between runs a worker holds no connection or file lock.
        self.executor.close_idle(idle=2 * self.options.reaper_interval)
