"""sd_notify datagrams reach a real unix socket, and nothing happens outside systemd."""

from __future__ import annotations

import socket
from pathlib import Path

from service_runtime.systemd import SystemdNotifier


def test_ready_and_watchdog_are_sent_to_the_notify_socket(tmp_path: Path) -> None:
    """READY and WATCHDOG arrive as datagrams; the watchdog interval is half of WATCHDOG_USEC."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert notifier.ready("connected") and notifier.watchdog()
        assert listener.recv(256) == b"READY=1\nSTATUS=connected"
        assert listener.recv(256) == b"WATCHDOG=1"
    assert notifier.watchdog_interval_s == 2.0


def test_outside_systemd_nothing_is_sent() -> None:
    """Without NOTIFY_SOCKET every call reports False and raises nothing."""
    notifier = SystemdNotifier({})
    assert not notifier.enabled and not notifier.ready() and notifier.watchdog_interval_s == 0.0
