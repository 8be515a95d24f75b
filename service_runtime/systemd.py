"""systemd `Type=notify` support without a dependency: READY, STOPPING and WATCHDOG datagrams.

The protocol is one datagram per state change on the unix socket named by `NOTIFY_SOCKET`
(sd_notify(3)); outside systemd the variable is unset and every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class SystemdNotifier:
    """Sends sd_notify messages when running under systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in the abstract namespace (a leading NUL byte).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(watchdog_usec) / 2_000_000 if watchdog_usec.isdigit() else 0.0
        """How often to ping the watchdog (half its timeout), or 0 when no watchdog is configured."""

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening."""
        return bool(self._address)

    def notify(self, state: str) -> bool:
        """Send `state` (for example `READY=1`); False when not under systemd or the send failed."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd the service is up."""
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """Ping the watchdog: the main loop is alive."""
        return self.notify("WATCHDOG=1")
