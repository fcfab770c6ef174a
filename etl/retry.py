"""Retry delays (exponential backoff with a cap and jitter) and the clock that waits them out."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Protocol

from etl.config import RetrySpec

__all__ = ["Clock", "RetryPolicy", "SystemClock"]


class Clock(Protocol):
    """Time as the runner sees it; tests inject a fake one."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed chunk again.

    The delay after failed attempt *n* (1-based) is ``backoff * factor ** (n - 1)``, capped at
    ``max_backoff``. With jitter *j* (``true`` means 0.5) the delay is drawn uniformly from
    ``[(1 - j) * d, d]``: never longer than the capped delay, never shorter than its
    ``1 - j`` share, so that many workers failing together do not retry in step.

    One policy decides every retry of a run: its chunks' attempts, its finalizing, and the
    reaper's verdict on a chunk whose workers keep dying. Its defaults are the job's ``retry:``
    defaults (:class:`~etl.config.RetrySpec`), and nowhere else.
    """

    attempts: int
    backoff: float
    factor: float
    max_backoff: float
    jitter: float

    @classmethod
    def from_spec(cls, spec: RetrySpec) -> RetryPolicy:
        jitter = (0.5 if spec.jitter else 0.0) if isinstance(spec.jitter, bool) else float(spec.jitter)
        return cls(spec.attempts, spec.backoff, spec.factor, spec.max_backoff, jitter)

    def should_retry(self, attempt: int, transient: bool) -> bool:
        """Whether a chunk whose attempt number ``attempt`` failed gets another one."""
        return transient and attempt < self.attempts

    def ceiling(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` before jitter."""
        try:
            raw = self.backoff * self.factor ** (attempt - 1)
        except OverflowError:
            raw = self.max_backoff
        return min(raw, self.max_backoff)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay after failed attempt ``attempt`` (1-based), jitter applied."""
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        draw = (rng or random).random()
        return ceiling * (1.0 - self.jitter * draw)
