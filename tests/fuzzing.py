"""What the fuzz tests share: how many examples they run, and a guard against a hang.

The suite runs a fixed, derandomized set of examples, a few seconds' worth; ``make fuzz``
sets ``ETL_FUZZ_EXAMPLES`` and runs that many new ones for each property, at random.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("ETL_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int) -> settings:
    """Hypothesis settings: ``examples`` in the suite (the same ones every run), or
    ``ETL_FUZZ_EXAMPLES`` new ones each run under ``make fuzz``."""
    return settings(
        max_examples=EXAMPLES or examples,
        derandomize=not EXAMPLES,
        deadline=None,  # a shared 2-core machine: time is measured by benchmarks, not asserted
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,  # tmp_path: one file, written again by each example
        ],
    )


def finishes(fn: Callable[[], Any], timeout: float = 120.0) -> Any:
    """``fn()``'s result, failing (instead of hanging the suite) if it runs past a generous
    ``timeout``: not a speed test, a guard against a hang."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")
