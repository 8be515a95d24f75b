"""Session epochs that only grow, even across restarts and a lost state file (Sparkplug's bdSeq idea).

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
        if self._path is None:
            return 0
        try:
            return max(0, int(self._path.read_text().strip()))
        except (OSError, ValueError):
            # A missing or corrupt file only loses the floor; the clock floor still holds.
            return 0

    def _write(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        staging = self._path.with_suffix(".tmp")
        with staging.open("w") as handle:
            handle.write(f"{self._last}\n")
            handle.flush()
            os.fsync(handle.fileno())
        staging.replace(self._path)
