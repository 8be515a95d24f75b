"""Injected misbehaviour: latency, random 503s, per-device rate limits and forced statuses (pure).

The clock and the random generator are the caller's: `now_s` is an argument and the generator is
seeded, so a test run is reproducible.
"""

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from simulator.cloud.counters import Endpoint
from simulator.cloud.errors import ModelError

RATE_WINDOW_S: Final = 60.0
RELEASE_ENDPOINTS: Final = frozenset({Endpoint.LATEST, Endpoint.LATEST_URL})


class FaultSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The fault knobs (also the body of the admin API's `PUT /_emulator/faults`)."""

    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 0.0
    """Added before every affected request is handled."""
    error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    """Fraction of affected requests answered 503 with `Retry-After: 1`."""
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Latest-release requests allowed per device in any 60 s; more get 429 (None: unlimited)."""
    include_downloads: bool = False
    """Whether latency, errors and forced statuses also hit artifact downloads."""


class ForcedStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The next `count` affected requests answer `status` (body of `POST /_emulator/faults/force`)."""

    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 503
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    retry_after_s: Annotated[int, msgspec.Meta(ge=0, le=86_400)] | None = 2
    """The `Retry-After` header in seconds (None: no header)."""


@dataclass(frozen=True, slots=True)
class InjectedFailure:
    """An answer the fault injector imposes instead of the real one."""

    status: int
    retry_after_s: int | None
    message: str


@dataclass(slots=True)
class _ForcedRun:
    forced: ForcedStatus
    remaining: int


class FaultInjector:
    """Holds the fault knobs and decides, request by request, whether to misbehave."""

    def __init__(self, seed: int = 0) -> None:
        self.settings = FaultSettings()
        self._seed = seed
        self._random = random.Random(seed)
        self._forced: deque[_ForcedRun] = deque()
        self._recent_s_by_device: dict[str, deque[float]] = {}

    def configure(self, /, **knobs: object) -> FaultSettings:
        """Change some knobs (names and ranges as in `FaultSettings`); the others keep their value.

        Raises:
            ModelError: an unknown knob or a value out of range.
        """
        return self.update(knobs)

    def update(self, changes: Mapping[str, object]) -> FaultSettings:
        """Like `configure`, with the knobs in a mapping (as the admin API receives them).

        Raises:
            ModelError: an unknown knob or a value out of range.
        """
        merged = msgspec.structs.asdict(self.settings) | dict(changes)
        try:
            self.settings = msgspec.convert(merged, FaultSettings)
        except msgspec.ValidationError as error:
            raise ModelError(f"bad fault settings: {error}") from None
        return self.settings

    def force(self, status: int = 503, count: int = 1, retry_after_s: int | None = 2) -> None:
        """Answer the next `count` affected requests with `status` (after those already forced).

        Raises:
            ModelError: a status outside 400..599 or a count below 1.
        """
        try:
            forced = msgspec.convert(
                {"status": status, "count": count, "retry_after_s": retry_after_s}, ForcedStatus
            )
        except msgspec.ValidationError as error:
            raise ModelError(f"bad forced status: {error}") from None
        self._forced.append(_ForcedRun(forced, forced.count))

    @property
    def forced_remaining(self) -> int:
        """Requests still to be answered with a forced status."""
        return sum(run.remaining for run in self._forced)

    def reset(self) -> None:
        """Back to a well-behaved server (the random generator is re-seeded)."""
        self.settings = FaultSettings()
        self._random = random.Random(self._seed)
        self._forced.clear()
        self._recent_s_by_device.clear()

    def affects(self, endpoint: Endpoint) -> bool:
        """Whether latency, errors and forced statuses apply to this endpoint."""
        return endpoint in RELEASE_ENDPOINTS or (
            endpoint is Endpoint.ARTIFACT and self.settings.include_downloads
        )

    def failure_for(self, endpoint: Endpoint) -> InjectedFailure | None:
        """A forced or random failure for this request, or None to handle it normally."""
        if not self.affects(endpoint):
            return None
        if self._forced:
            run = self._forced[0]
            run.remaining -= 1
            if run.remaining == 0:
                self._forced.popleft()
            return InjectedFailure(run.forced.status, run.forced.retry_after_s, "forced by the emulator")
        if self.settings.error_rate and self._random.random() < self.settings.error_rate:
            return InjectedFailure(503, 1, "Service temporarily unavailable")
        return None

    def admit(self, device_serial: str, now_s: float) -> int | None:
        """Count a latest-release request of a device; the `Retry-After` seconds when over the limit."""
        limit = self.settings.rate_limit_per_minute
        if limit is None:
            return None
        recent = self._recent_s_by_device.setdefault(device_serial, deque())
        while recent and recent[0] <= now_s - RATE_WINDOW_S:
            recent.popleft()
        if len(recent) >= limit:
            return max(1, math.ceil(recent[0] + RATE_WINDOW_S - now_s))
        recent.append(now_s)
        return None
