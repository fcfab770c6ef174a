"""``etl worker --processes P``: a supervisor that keeps P worker processes running.

A worker's ``-w`` slots are threads of one Python process, so a transform in pure Python (which
holds the interpreter's lock) uses one core however many slots there are. The supervisor starts
P real ``etl worker`` processes (the same Python and options, ``-w`` threads each), so that such
jobs use P cores, and looks after them:

* **Restarts.** A worker process that dies (killed, crashed, exit 1) is started again: 1 s after
  a death following at least :attr:`RestartPolicy.healthy_after` seconds of work, else after a
  delay that doubles with each death in a row of that slot (1, 2, 4, … 60 s). A slot that died
  :attr:`RestartPolicy.give_up_after` times in a row, each time soon after it started, is given
  up: the supervisor stops the others gracefully and exits 1, so that systemd or Kubernetes see
  the failure and their own restart policy applies. A worker process that exits 2 (a bad
  configuration or usage: it would fail the same way each time) stops the supervisor at once,
  with exit 2.
* **Signals.** SIGTERM or SIGINT: each worker process is sent SIGTERM, finishes its chunks in
  hand within ``ETL_GRACE_SECONDS`` and gives the rest back; the supervisor exits 0 once all
  have stopped. A second signal SIGKILLs them and exits 1 (the reapers take their chunks back
  when the leases run out). Worker processes run in a process group of their own (Ctrl-C in a
  terminal reaches only the supervisor); one that gets a signal anyway (systemd signalling the
  whole control group) stops gracefully and ignores the signals that follow. One whose
  supervisor vanished (SIGKILLed) stops gracefully too.
* **Registration.** Each worker process registers itself as any worker does, naming its
  supervisor (``WorkerInfo.supervisor``), so that ``etl workers`` groups them. The supervisor
  itself holds no slot and is not registered.

The command line of each worker process (``--configs`` for the first only, ``--metrics-port``
served by the supervisor) is the CLI's to make: :class:`Supervisor` runs whatever it is given.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from etl.worker import Worker

__all__ = ["RestartPolicy", "SupervisedWorker", "Supervisor", "cpu_count", "supervisor_id"]

#: After SIGTERM, worker processes get the grace period and this much more to stop (giving back
#: their chunks, deregistering) before they are SIGKILLed.
STOP_MARGIN = 15.0
#: How often the supervisor looks at its processes (and a worker process at its supervisor).
POLL_SECONDS = 0.2


def supervisor_id() -> str:
    """An id like a worker's: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


def cpu_count() -> int:
    """The CPUs this process may use (``--processes auto``): those of its affinity mask, capped
    by the CPU quota of its cgroup (a container's CPU limit, rounded up); at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, quota) if quota else count)


def _cgroup_cpu_quota() -> int | None:
    """The CPU limit of this process's cgroup (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``), in
    whole CPUs rounded up; ``None`` without one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            candidates = [Path("/sys/fs/cgroup", path.lstrip("/"), "cpu.max"), Path("/sys/fs/cgroup/cpu.max")]
            for candidate in candidates:
                try:
                    quota, period = candidate.read_text().split()[:2]
                except (OSError, ValueError):
                    continue
                return None if quota == "max" else math.ceil(int(quota) / int(period))
        elif "cpu" in controllers.split(","):  # cgroup v1
            base = Path("/sys/fs/cgroup", controllers, path.lstrip("/"))
            for directory in (base, Path("/sys/fs/cgroup", controllers)):
                try:
                    quota_us = int((directory / "cpu.cfs_quota_us").read_text())
                    period_us = int((directory / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                return None if quota_us <= 0 else math.ceil(quota_us / period_us)
    return None


@dataclass(frozen=True)
class RestartPolicy:
    """When a worker process that died is started again, in seconds.

    Attributes:
        first_delay: the pause before a restart after a death following a healthy run.
        max_delay: the longest pause: the delay doubles with each death in a row, up to this.
        healthy_after: a process that ran this long had a good start: its slot's count of
            deaths in a row starts again from one.
        give_up_after: a slot whose process died this many times in a row, each within
            ``healthy_after`` of its start, is given up: the supervisor stops (exit 1).
    """

    first_delay: float = 1.0
    max_delay: float = 60.0
    healthy_after: float = 60.0
    give_up_after: int = 10

    def delay(self, deaths: int) -> float:
        """The pause before the next start of a slot whose process died ``deaths`` times in a row."""
        return min(self.first_delay * 2 ** max(deaths - 1, 0), self.max_delay)


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    #: Deaths in a row, each soon after a start (reset by a healthy run).
    deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    """Keeps ``processes`` child processes running (``command(slot)`` each), restarts those that
    die, and stops them all on SIGTERM/SIGINT. :meth:`run` returns the exit code."""

    def __init__(
        self,
        command: Callable[[int], list[str]],
        processes: int,
        *,
        env: Mapping[str, str] | None = None,
        grace: float = 30.0,
        policy: RestartPolicy | None = None,
        id: str | None = None,
    ) -> None:
        self.command = command
        self.env = dict(os.environ if env is None else env)
        self.grace = grace
        self.policy = policy or RestartPolicy()
        self.id = id or supervisor_id()
        self.slots = [_Slot(i) for i in range(processes)]
        self._stopping = False
        self._kill = False
        self._code = 0
        self._deadline: float | None = None

    # -- control -----------------------------------------------------------------------------

    def stop(self, *, now: bool = False, code: int = 0) -> None:
        """Stop every process: gracefully (SIGTERM, then SIGKILL after the grace period), or at
        once (SIGKILL). Safe from a signal handler or another thread: it only sets flags, which
        the loop reads within :data:`POLL_SECONDS` (a lock taken in a signal handler can deadlock
        with the same lock held by the interrupted code)."""
        self._code = self._code or code
        self._kill = self._kill or now
        self._stopping = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            logger.warning("second {}: killing the worker processes now", name)
            self.stop(now=True, code=1)
            return
        logger.info("{}: the worker processes finish their chunks in hand (up to {}s), then stop", name, self.grace)
        self.stop()

    def pids(self) -> list[int]:
        """The process ids of the worker processes running now."""
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    # -- the loop ----------------------------------------------------------------------------

    def run(self, *, install_signals: bool = True) -> int:
        """Start the processes and look after them until stopped; the exit code: 0 after a
        graceful stop, 1 after a second signal or a slot given up, 2 after a process exited 2."""
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        for slot in self.slots:
            self._start(slot)
        logger.info("supervisor {} started {} worker process(es)", self.id, len(self.slots))
        while True:
            now = time.monotonic()
            for slot in self.slots:
                self._look_after(slot, now)
            if self._stopping:
                self._signal_children(now)
                if not self.pids():
                    break
            time.sleep(POLL_SECONDS)
        logger.info("supervisor {} stopped", self.id)
        return self._code

    def _start(self, slot: _Slot) -> None:
        slot.restart_at = None
        slot.started = time.monotonic()
        try:
            # A process group of its own: a terminal's Ctrl-C reaches the supervisor only, and the
            # supervisor decides what each worker process is told.
            slot.proc = subprocess.Popen(
                self.command(slot.index), env=self.env, stdin=subprocess.DEVNULL, process_group=0
            )
        except OSError as exc:
            logger.error("worker process {} could not be started: {}", slot.index, exc)
            slot.proc = None
            self._died(slot, "could not start", time.monotonic())

    def _look_after(self, slot: _Slot, now: float) -> None:
        if slot.proc is not None and (code := slot.proc.poll()) is not None:
            pid, slot.proc = slot.proc.pid, None
            if self._stopping:
                if code not in (0, -signal.SIGKILL):
                    logger.warning("worker process {} (pid {}) stopped with {}", slot.index, pid, _how(code))
                return
            if code == 2:
                logger.error(
                    "worker process {} (pid {}) exited 2: a bad configuration or usage (its error is above), "
                    "which a restart would not mend; stopping",
                    slot.index,
                    pid,
                )
                self.stop(code=2)
                return
            self._died(slot, f"pid {pid}: {_how(code)}", now)
        if slot.restart_at is not None and not self._stopping and now >= slot.restart_at:
            self._start(slot)

    def _died(self, slot: _Slot, how: str, now: float) -> None:
        """Count a death and schedule the restart, or give the slot up."""
        ran = now - slot.started
        slot.deaths = 1 if ran >= self.policy.healthy_after else slot.deaths + 1
        if slot.deaths >= self.policy.give_up_after:
            logger.error(
                "worker process {} died {} times in a row, each within {:.0f}s of its start (last: {}); "
                "giving up: stopping the others",
                slot.index,
                slot.deaths,
                self.policy.healthy_after,
                how,
            )
            self.stop(code=1)
            return
        delay = self.policy.delay(slot.deaths)
        slot.restart_at = now + delay
        logger.warning(
            "worker process {} died after {:.1f}s ({}); starting it again in {:.0f}s",
            slot.index,
            ran,
            how,
            delay,
        )

    def _signal_children(self, now: float) -> None:
        """Once stopping: SIGTERM each process once; SIGKILL those still running at the deadline
        (or at once after a second signal)."""
        if self._deadline is None:
            self._deadline = now + self.grace + STOP_MARGIN
            for slot in self.slots:
                slot.restart_at = None
                _send(slot.proc, signal.SIGTERM)
        if self._kill or now >= self._deadline:
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is None:
                    if not self._kill:
                        logger.error(
                            "worker process {} (pid {}) did not stop within {:.0f}s; killing it",
                            slot.index,
                            slot.proc.pid,
                            self.grace + STOP_MARGIN,
                        )
                    _send(slot.proc, signal.SIGKILL)


def _send(proc: subprocess.Popen | None, signum: int) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signum)  # not reaped yet: the pid is still this process's


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class SupervisedWorker(Worker):
    """A worker process started by a supervisor: it names the supervisor in its registration,
    stops gracefully at the first signal and ignores the signals that follow (only the supervisor
    stops it at once, with SIGKILL), and stops gracefully when its supervisor is gone."""

    def __init__(self, *args: Any, supervisor: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info.supervisor = supervisor
        self._parent = os.getppid()

    def start(self, *, install_signals: bool = True) -> None:
        super().start(install_signals=install_signals)
        threading.Thread(target=self._watch_parent, name="supervisor-watch", daemon=True).start()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop.is_set():
            logger.info("{}: already stopping", signal.Signals(signum).name)
            return
        super()._on_signal(signum, frame)

    def _watch_parent(self) -> None:
        while not self._stop.wait(1.0):
            if os.getppid() != self._parent:
                logger.warning("the supervisor (pid {}) is gone; stopping", self._parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return
