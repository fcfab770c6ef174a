"""Retry delays: exponential, capped, jittered within bounds (property tests)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from etl.retry import RetryPolicy

policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 20),
    backoff=st.floats(0.0, 60.0),
    factor=st.floats(1.0, 10.0),
    max_backoff=st.floats(0.0, 3600.0),
    jitter=st.floats(0.0, 1.0),
)


@given(policies, st.integers(1, 200), st.integers(0, 2**32))
def test_a_delay_lies_between_its_jittered_floor_and_its_cap(policy, attempt, seed):
    delay = policy.delay(attempt, random.Random(seed))
    ceiling = policy.ceiling(attempt)
    assert ceiling <= policy.max_backoff
    assert (1 - policy.jitter) * ceiling - 1e-9 <= delay <= ceiling + 1e-9


@given(policies, st.integers(1, 100))
def test_ceilings_grow_until_the_cap(policy, attempt):
    assert policy.ceiling(attempt + 1) >= policy.ceiling(attempt)
    expected = min(policy.backoff * policy.factor ** (attempt - 1), policy.max_backoff)
    assert abs(policy.ceiling(attempt) - expected) <= 1e-9 * max(1.0, expected)


@given(policies, st.integers(1, 30), st.booleans())
def test_only_transient_errors_with_attempts_left_are_retried(policy, attempt, transient):
    assert policy.should_retry(attempt, transient) == (transient and attempt < policy.attempts)


def test_without_jitter_the_delays_are_exact():
    policy = RetryPolicy(attempts=5, backoff=1.0, factor=2.0, max_backoff=5.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
