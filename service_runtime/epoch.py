"""Epochs that only grow across restarts: session epochs (Sparkplug's bdSeq idea) and the fence floor.

Every MQTT connection gets a new epoch, carried by its birth and its will, so consumers can drop a
will that arrives after a newer birth. The epoch is at least the wall clock in milliseconds, so a
gateway whose state file was wiped still starts above every epoch it ever used (clocks on gateways
are NTP-synchronised; the file covers a clock that stepped back).
"""

from __future__ import annotations

import os
from pathlib import Path


class EpochCounter:
    """Hands out strictly increasing epochs and remembers the last one in a file (optional)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._last = self._read()

    @property
    def last(self) -> int:
        """The last epoch handed out (0 before the first)."""
        return self._last

    def advance(self, now_ms: int) -> int:
        """Return a new epoch greater than every earlier one and not below `now_ms`."""
        self._last = max(self._last + 1, now_ms)
        self._write()
        return self._last

    def _read(self) -> int:
        # A missing or corrupt file only loses the floor; the clock floor still holds.
        return _read_int(self._path)

    def _write(self) -> None:
        _write_int(self._path, self._last)


class FenceEpoch:
    """The highest controller epoch a gateway has obeyed, kept across restarts (optional file).

    A command carrying a lower epoch comes from a controller that lost its lease and is refused.
    The floor must survive a restart of the agent, or a paused former leader that wakes up while the
    agent restarts could still be obeyed; it is written atomically (temporary file, fsync, rename),
    so a crash leaves either the old or the new value. A missing or corrupt file starts at 0.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._highest = _read_int(path)

    @property
    def highest(self) -> int:
        """The highest epoch admitted so far."""
        return self._highest

    def admit(self, epoch: int) -> bool:
        """Whether a command with `epoch` may be obeyed; a higher epoch raises the floor durably."""
        if epoch < self._highest:
            return False
        if epoch > self._highest:
            self._highest = epoch
            _write_int(self._path, epoch)
        return True


def _read_int(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return max(0, int(path.read_text().strip()))
    except (OSError, ValueError):
        return 0


def _write_int(path: Path | None, value: int) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    with staging.open("w") as handle:
        handle.write(f"{value}\n")
        handle.flush()
        os.fsync(handle.fileno())
    staging.replace(path)
    # The rename itself is durable only once the directory is synced.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
