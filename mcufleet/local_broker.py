"""A throwaway mosquitto for `mcufleet demo`: a free loopback port, its own store, stopped on exit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from mcufleet.errors import LocalBrokerError

START_TIMEOUT_S = 10.0
SEARCH_PATH = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalBroker:
    """mosquitto on 127.0.0.1 with persistence in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or next((p for p in SEARCH_PATH if os.access(p, os.X_OK)), None)
        if binary is None:
            raise LocalBrokerError(
                "mosquitto not found: run `make demo` (it installs it) or apt-get install mosquitto"
            )
        self.binary = binary
        self.host, self.port = "127.0.0.1", free_port()
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir / 'data'}/\nautosave_interval 5\nmax_queued_messages 200000\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        with self.log.open("ab") as log:
            # The binary comes from PATH or the Debian location, the config is ours: nothing untrusted.
            self._process = subprocess.Popen(  # noqa: S603
                [self.binary, "-c", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalBrokerError(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise LocalBrokerError(f"mosquitto did not start within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stop (SIGTERM) and wait."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
