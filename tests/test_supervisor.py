"""The supervisor's restart policy and stops, over small Python processes (no queue needed);
`etl worker --processes` with real workers is tested in tests/background/test_supervisor.py."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from etl.supervisor import RestartPolicy, Supervisor, cpu_count

QUICK = RestartPolicy(first_delay=0.05, max_delay=0.2, healthy_after=30.0, give_up_after=4)


def python(code: str, log: Path) -> list[str]:
    """A child that appends its pid to ``log``, then runs ``code``."""
    prologue = f"import os, signal, sys, time; open({str(log)!r}, 'a').write(f'{{os.getpid()}}\\n'); "
    return [sys.executable, "-c", prologue + code]


def starts(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def supervise(supervisor: Supervisor) -> tuple[threading.Thread, list[int]]:
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(supervisor.run(install_signals=False)), daemon=True)
    thread.start()
    return thread, code


def wait_until(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def gone(pid: int) -> bool:
    """Whether no process has this id (a child reaped, not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_restart_delay_doubles_up_to_its_cap():
    policy = RestartPolicy(first_delay=1.0, max_delay=60.0)
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_process_that_dies_is_started_again(tmp_path):
    log = tmp_path / "starts"
    supervisor = Supervisor(lambda slot: python("time.sleep(0.3); sys.exit(1)", log), 1, policy=QUICK)
    thread, code = supervise(supervisor)
    wait_until(lambda: len(starts(log)) >= 3)
    supervisor.stop()
    thread.join(10)
    assert code == [0]


def test_a_process_that_keeps_dying_at_start_is_given_up(tmp_path):
    log = tmp_path / "starts"
    supervisor = Supervisor(lambda slot: python("sys.exit(1)" if slot == 1 else "time.sleep(60)", log), 2, policy=QUICK)
    thread, code = supervise(supervisor)
    thread.join(15)
    assert code == [1], "given up after 4 deaths in a row: the supervisor stops, exit 1"
    assert len(starts(log)) == 1 + 4  # slot 0 once, slot 1 four times
    assert not supervisor.pids(), "the healthy process was stopped too"


def test_a_process_that_exits_2_stops_the_supervisor_with_exit_2(tmp_path):
    log = tmp_path / "starts"
    supervisor = Supervisor(lambda slot: python("sys.exit(2)" if slot else "time.sleep(60)", log), 2, policy=QUICK)
    thread, code = supervise(supervisor)
    thread.join(15)
    assert code == [2]
    assert len(starts(log)) == 2, "a bad configuration is not retried"


def test_a_stop_sends_sigterm_once_and_waits_for_every_process(tmp_path):
    log, stopped = tmp_path / "starts", tmp_path / "stopped"
    # Each child takes 0.5 s to stop after SIGTERM, and counts the SIGTERMs it got.
    child = (
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda *a: got.append(1))\n"
        "while not got: time.sleep(0.01)\n"
        "time.sleep(0.5)\n"
        f"open({str(stopped)!r}, 'a').write(f'{{len(got)}}\\n')\n"
    )
    supervisor = Supervisor(lambda slot: python(child, log), 3, policy=QUICK, grace=5)
    thread, code = supervise(supervisor)
    wait_until(lambda: len(starts(log)) == 3)
    time.sleep(0.3)  # the children have set their handlers
    supervisor.stop()
    thread.join(10)
    assert code == [0]
    assert stopped.read_text().split() == ["1", "1", "1"], "each process got one SIGTERM and stopped on its own"


def test_a_second_stop_kills_at_once(tmp_path):
    log = tmp_path / "starts"
    ignores_sigterm = "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    supervisor = Supervisor(lambda slot: python(ignores_sigterm, log), 2, policy=QUICK, grace=60)
    thread, code = supervise(supervisor)
    wait_until(lambda: len(starts(log)) == 2)
    time.sleep(0.3)
    supervisor.stop()
    time.sleep(0.5)
    assert len(supervisor.pids()) == 2, "still finishing (they ignore SIGTERM here)"
    started = time.monotonic()
    supervisor.stop(now=True, code=1)
    thread.join(10)
    assert code == [1] and time.monotonic() - started < 5
    assert all(gone(int(pid)) for pid in starts(log))


def test_the_supervisor_stops_on_sigterm_in_its_main_thread(tmp_path):
    log = tmp_path / "starts"
    supervisor = Supervisor(lambda slot: python("time.sleep(60)", log), 1, policy=QUICK)
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert supervisor.run() == 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert len(starts(log)) == 1


def test_auto_is_the_cpus_this_process_may_use():
    assert 1 <= cpu_count() <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cpu_count() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "0 is not in the range 1 to 256"), ("many", "'many' is not a number of processes")],
)
def test_a_bad_number_of_processes_is_a_usage_error(cli, value, message):
    result = cli("worker", "--processes", value)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
