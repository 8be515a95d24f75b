"""The one backoff schedule: doubling, the cap, jitter bounds, reset, the injected sleep."""

import asyncio
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service_runtime.backoff import Backoff, exponential_delay_s


async def _no_sleep(_delay_s: float) -> None:
    return None


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=3.0, sleep=_no_sleep)
    assert [backoff.next_delay_s() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.retries == 5
    backoff.reset()
    assert backoff.upcoming_s == 0.5
    assert backoff.next_delay_s() == 0.5


def test_upcoming_does_not_advance() -> None:
    backoff = Backoff(initial_s=1.0, max_s=10.0, sleep=_no_sleep)
    assert backoff.upcoming_s == 1.0
    assert backoff.upcoming_s == 1.0
    backoff.next_delay_s()
    assert backoff.upcoming_s == 2.0


def test_half_jitter_matches_random_uniform() -> None:
    # The MQTT session drew `rng.uniform(d / 2, d)`: the helper must give the same numbers.
    seeded, reference = random.Random(7), random.Random(7)
    backoff = Backoff(initial_s=0.5, max_s=30.0, sleep=_no_sleep, jitter=0.5, random=seeded.random)
    delay = 0.5
    for _ in range(12):
        assert backoff.next_delay_s() == reference.uniform(delay / 2, delay)
        delay = min(delay * 2, 30.0)


@given(
    initial_s=st.floats(0.001, 10),
    max_s=st.floats(0.001, 100),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
    count=st.integers(1, 40),
)
def test_jittered_delays_stay_within_bounds(
    initial_s: float, max_s: float, jitter: float, seed: int, count: int
) -> None:
    backoff = Backoff(
        initial_s=initial_s, max_s=max_s, sleep=_no_sleep, jitter=jitter, random=random.Random(seed).random
    )
    for retry in range(1, count + 1):
        ceiling = exponential_delay_s(retry, initial_s, 2.0, max_s)
        delay = backoff.next_delay_s()
        assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling + 1e-9
        assert delay <= max_s + 1e-9


def test_formula_for_the_machine() -> None:
    assert exponential_delay_s(0, 30.0, 2.0) == 30.0  # attempt 0 counts as the first
    assert exponential_delay_s(1, 30.0, 2.0) == 30.0
    assert exponential_delay_s(3, 30.0, 2.0) == 120.0
    assert exponential_delay_s(3, 30.0, 1.5) == pytest.approx(67.5)
    assert exponential_delay_s(100_000, 30.0, 2.0, 3600.0) == 3600.0
    assert exponential_delay_s(100_000, 30.0, 2.0) == math.inf


def test_wait_sleeps_the_delay_or_the_floor() -> None:
    slept: list[float] = []

    async def record(delay_s: float) -> None:
        slept.append(delay_s)

    backoff = Backoff(initial_s=1.0, max_s=8.0, sleep=record)
    assert asyncio.run(backoff.wait()) == 1.0
    assert asyncio.run(backoff.wait(at_least_s=5.0)) == 5.0
    assert slept == [1.0, 5.0]
    assert backoff.upcoming_s == 4.0


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(initial_s=1.0, max_s=2.0, sleep=_no_sleep, jitter=1.5)
    with pytest.raises(ValueError, match="random source"):
        Backoff(initial_s=1.0, max_s=2.0, sleep=_no_sleep, jitter=0.5)
    with pytest.raises(ValueError, match="factor"):
        Backoff(initial_s=1.0, max_s=2.0, sleep=_no_sleep, factor=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        Backoff(initial_s=-1.0, max_s=2.0, sleep=_no_sleep)
