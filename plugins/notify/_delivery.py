"""Delivering a notification: each target sent from a short-lived daemon thread, retried with
backoff (or the server's ``Retry-After``) within the target's budget, every failure logged and
none raised; and waiting for the deliveries still in flight (:func:`flush`, called at exit).
"""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass
from typing import Any

from loguru import logger

from ._message import Message
from ._targets import BUDGET, _Target
from ._transport import _one_line, _Permanent, _Transient


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
