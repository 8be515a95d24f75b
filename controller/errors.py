"""The controller's exception tree; adapters translate third-party errors into it.

ControllerError
 +-- MemfaultError              the Memfault cloud could not give an answer
 |    +-- MemfaultUnavailable   outage, rate limit or timeout; carries when to ask again
 |         +-- MemfaultRateLimited   429: this one device may not ask again yet
 +-- StoreError                 the state database refused or lost a write
 |    +-- StaleLease            another controller holds the leadership lease
 +-- RolloutError               an operator request that the rollout state forbids
 +-- ConfigError                a configuration value is missing or malformed
"""

from __future__ import annotations


class ControllerError(Exception):
    """Root of every error the controller raises on purpose."""


class MemfaultError(ControllerError):
    """The Memfault cloud could not give an answer."""


class MemfaultUnavailable(MemfaultError):
    """Memfault is down, rate-limiting or timing out; ask again after `retry_after_s`."""

    def __init__(self, retry_after_s: float, message: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MemfaultRateLimited(MemfaultUnavailable):
    """Memfault limits this one device's queries (429): ask it again after `retry_after_s`.

    The limit's scope is the device; other devices are not held back.
    """


class StoreError(ControllerError):
    """The state database refused or lost a write."""


class StaleLease(StoreError):
    """Another controller instance holds the leadership lease."""


class RolloutError(ControllerError):
    """An operator request that the rollout's current state forbids.

    Attributes:
        reason: the machine-readable reason sent back in the operator reply.
    """

    def __init__(self, message: str, reason: str = "invalid_state") -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(ControllerError):
    """A configuration value is missing or malformed."""
