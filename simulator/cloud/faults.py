"""Injected misbehaviour: latency, random 503s, rate limits, forced statuses, per-device faults (pure).

The clock and the random generator are the caller's: `now_s` is an argument and the generator is
seeded, so a test run is reproducible.
"""

import enum
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


class DeviceFaultKind(enum.StrEnum):
    """How the latest-release API misbehaves for one device serial."""

    STATUS = "status"
    """An error status with a JSON error body (404, 500...)."""
    GARBAGE = "garbage"
    """A 200 whose body is not JSON."""
    TRUNCATED = "truncated"
    """A 200 carrying the first half of the real release JSON."""


class DeviceFault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One device's fault (body of `PUT /_emulator/faults/devices/{serial}`)."""

    kind: DeviceFaultKind = DeviceFaultKind.STATUS
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 500
    """The status answered when `kind` is `status`."""


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
        self.device_faults: dict[str, DeviceFault] = {}
        """Faults by device serial, applied to that device's latest-release requests only."""

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
        self.device_faults.clear()

    def fault_device(
        self, device_serial: str, kind: DeviceFaultKind | str = DeviceFaultKind.STATUS, status: int = 500
    ) -> DeviceFault:
        """Make the latest-release API misbehave for this device only (until `clear_device`).

        Raises:
            ModelError: an unknown kind or a status outside 400..599.
        """
        try:
            fault = msgspec.convert({"kind": str(kind), "status": status}, DeviceFault)
        except msgspec.ValidationError as error:
            raise ModelError(f"bad device fault: {error}") from None
        self.device_faults[device_serial] = fault
        return fault

    def clear_device(self, device_serial: str) -> None:
        """The device is answered normally again."""
        self.device_faults.pop(device_serial, None)

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
