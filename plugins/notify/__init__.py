"""Notifications when a run completes, fails or is cancelled: signed webhooks, Slack, email.

A job lists its targets under the top-level ``notify:`` key (registered through
``etl_register_job_keys``); the lifecycle hooks ``etl_after_job_run`` and ``etl_on_job_error``
send each target a summary of the run. See ``docs/notifications.md``.

Sending never fails the run. Each target is sent from a short-lived daemon thread, so a slow
endpoint holds up neither the run nor a worker's slot; each delivery has a time budget that
bounds its attempts and the waits between them. Before the process exits, an ``atexit`` hook
waits for the deliveries still in flight, each up to the end of its budget, so that an
``etl run`` in process delivers before it returns to the shell. Embedding programs that end
with ``os._exit`` call :func:`flush` first.
"""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from etl import hookimpl

from ._message import Message, _event, signature, summarize
from ._targets import BUDGET, EmailTarget, SlackTarget, Target, WebhookTarget, _Target
from ._transport import _one_line, _Permanent, _Transient

if TYPE_CHECKING:
    from etl import Job, RunInfo, RunResult

__all__ = ["EmailTarget", "SlackTarget", "Target", "WebhookTarget", "flush", "signature"]

# -- Sending --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Delivery:
    thread: threading.Thread
    deadline: float  # time.monotonic() by which it has given up


_pending: set[_Delivery] = set()
_lock = threading.Lock()
_atexit_registered = False
#: How long past its budget a delivery's thread is waited for (one attempt's socket calls may
#: overrun a little).
_GRACE = 1.0


def deliver(target: _Target, message: Message, log: Any = logger) -> bool:
    """Send ``message`` to ``target``, retrying within its budget. Never raises.

    Returns:
        Whether it was delivered.
    """
    name = target.describe()
    try:
        timeout, budget = target.limits()
    except Exception as exc:
        log.error("notification to {} not sent: {}", name, exc)
        return False
    deadline = time.monotonic() + budget
    attempts = target.retries + 1
    for attempt in range(1, attempts + 1):
        remaining = deadline - time.monotonic()
        try:
            target.send(message, timeout=min(timeout, remaining))
        except _Transient as exc:
            delay = exc.retry_after if exc.retry_after is not None else target.backoff * 2 ** (attempt - 1)
            if attempt == attempts:
                log.error("notification to {} failed after {} attempt(s): {}; {}", name, attempt, exc, target.check())
                return False
            if time.monotonic() + delay >= deadline:
                log.error(
                    "notification to {} failed: {}; giving up after {} attempt(s) (a retry would end past its "
                    "budget of {:g}s); {}",
                    name,
                    exc,
                    attempt,
                    budget,
                    target.check(),
                )
                return False
            log.warning(
                "notification to {} failed (attempt {}/{}): {}; retrying in {:g}s", name, attempt, attempts, exc, delay
            )
            time.sleep(delay)
        except Exception as exc:
            log.error("notification to {} failed: {}", name, exc if isinstance(exc, _Permanent) else _one_line(exc))
            return False
        else:
            log.info("notified {} ({})", name, message.event)
            return True
    return False  # pragma: no cover (the loop returns)


def _start(target: _Target, message: Message, log: Any) -> None:
    global _atexit_registered

    def work() -> None:
        try:
            deliver(target, message, log)
        except Exception as exc:  # a bug here must not surface as a thread's traceback
            log.opt(exception=exc).error("notification to {} failed: {}", target.describe(), _one_line(exc))
        finally:
            with _lock:
                _pending.discard(delivery)

    thread = threading.Thread(target=work, name=f"etl-notify-{target.type}", daemon=True)
    try:
        budget = target.limits()[1]
    except Exception:
        budget = BUDGET  # deliver() says what is wrong, and gives up at once
    delivery = _Delivery(thread, time.monotonic() + budget + _GRACE)
    with _lock:
        if not _atexit_registered:
            atexit.register(_flush_at_exit)
            _atexit_registered = True
        _pending.add(delivery)
    thread.start()


def flush(timeout: float | None = None) -> bool:
    """Wait for the notifications in flight: each up to the end of its budget (and a second),
    all of them up to ``timeout`` seconds (no limit but their budgets when ``None``).

    Returns:
        Whether every one has finished: sent, or given up and logged as such.
    """
    limit = None if timeout is None else time.monotonic() + timeout
    abandoned = False
    while True:
        with _lock:
            waiting = sorted(_pending, key=lambda d: d.deadline)
        if not waiting:
            return not abandoned
        delivery = waiting[0]
        until = delivery.deadline if limit is None else min(delivery.deadline, limit)
        delivery.thread.join(max(until - time.monotonic(), 0.0))
        if delivery.thread.is_alive():
            if limit is not None and time.monotonic() >= limit:
                return False
            with _lock:  # stuck past its budget (a DNS lookup that hangs): wait no more for it
                _pending.discard(delivery)
            abandoned = True


def _flush_at_exit() -> None:
    with _lock:
        count = len(_pending)
    if not count:
        return
    logger.info("waiting for {} notification(s) to be sent", count)
    if not flush():
        logger.warning("exiting with notification(s) still unsent")


# -- Hooks ----------------------------------------------------------------------------------


@hookimpl
def etl_register_job_keys() -> dict[str, Any]:
    return {"notify": list[Target]}


@hookimpl
def etl_after_job_run(job: Job, run: RunInfo, result: RunResult) -> None:
    _notify(job, run, result, None)


@hookimpl
def etl_on_job_error(job: Job, run: RunInfo, error: BaseException, result: RunResult) -> None:
    _notify(job, run, result, error)


@hookimpl
def etl_on_job_cancel(job: Job, run: RunInfo, result: RunResult) -> None:
    _notify(job, run, result, None)


def _notify(job: Job, run: RunInfo, result: RunResult, error: BaseException | None) -> None:
    log = logger.bind(job=job.name, run=run.id)
    try:
        state = _event(result, error)
        targets = [t for t in job.extras.get("notify") or () if state in t.when]
        if not targets:
            return
        summary = summarize(job, run, result, error)
        for target in targets:
            _start(target, summary, log)
    except Exception as exc:  # a notification never fails a run
        log.opt(exception=exc).error("notifications not sent: {}", _one_line(exc))
