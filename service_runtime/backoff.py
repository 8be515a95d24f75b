"""Exponential backoff: the one delay schedule every retry loop in mcufleet follows.

Pure: this module imports no event loop and reads no clock. The random source (for jitter) and
the sleep are injected, so a test drives a loop with a recording sleep and a seeded random, and
the rollout machine, which must stay deterministic, uses the bare formula.

Users:
- `service_runtime.mqtt` reconnects to the broker (half jitter: a fleet of gateways reconnecting
  after a broker restart spreads out over the delay instead of arriving together);
- `controller.memfault` retries 5xx answers and timeouts;
- `agent.ota` reconnects to a device during an upload and while MCUboot swaps;
- `controller.rollout_engine.machine` spaces a device's attempts (`exponential_delay_s`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


def exponential_delay_s(retry: int, initial_s: float, factor: float = 2.0, max_s: float = math.inf) -> float:
    """The delay before retry number `retry` (1 is the first): `initial_s * factor ** (retry - 1)`, capped.

    A `retry` below 1 counts as the first (the machine's attempt counter starts at 0 or 1).
    """
    try:
        return float(min(initial_s * float(factor) ** max(0, retry - 1), max_s))
    except OverflowError:  # a long retry series: far past any cap
        return max_s


@dataclass
class Backoff:
    """A retry loop's delays: `initial_s`, doubling (by `factor`) up to `max_s`, optionally jittered.

    With `jitter` j, each delay d is drawn uniformly from [d * (1 - j), d] with the injected
    `random` (a callable giving floats in [0, 1), such as `random.Random().random`).
    """

    initial_s: float
    max_s: float
    sleep: Callable[[float], Awaitable[object]]
    factor: float = 2.0
    jitter: float = 0.0
    random: Callable[[], float] | None = None
    _retry: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")
        if self.jitter and self.random is None:
            raise ValueError("a jittered backoff needs a random source")
        if self.initial_s < 0 or self.max_s < 0 or self.factor < 1:
            raise ValueError("backoff delays must be >= 0 and the factor >= 1")

    @property
    def retries(self) -> int:
        """How many delays were handed out since the last `reset()`."""
        return self._retry

    @property
    def upcoming_s(self) -> float:
        """The next delay before jitter, without taking it (what a caller reports as retry-after)."""
        return exponential_delay_s(self._retry + 1, self.initial_s, self.factor, self.max_s)

    def next_delay_s(self) -> float:
        """Take the next delay (jittered when configured)."""
        delay_s = self.upcoming_s
        self._retry += 1
        if self.jitter and self.random is not None:
            delay_s = delay_s * (1 - self.jitter) + delay_s * self.jitter * self.random()
        return delay_s

    async def wait(self, at_least_s: float = 0.0) -> float:
        """Sleep the next delay (or `at_least_s` when longer, e.g. a server's Retry-After); return it."""
        delay_s = max(self.next_delay_s(), at_least_s)
        await self.sleep(delay_s)
        return delay_s

    def reset(self) -> None:
        """Start again from `initial_s` (after a success)."""
        self._retry = 0
