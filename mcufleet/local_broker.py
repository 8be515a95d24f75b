"""mosquitto on a free loopback port with its own config, store and log: the demo's and the tests'.

Persistence is on with a short autosave (one second for tests: a SIGKILL loses at most a second of
state, as in production with its short autosave, deploy/mosquitto/). Started as root, mosquitto
would drop to user `mosquitto` and then fail to write its store, hence `user root` in that case.
The tests use the crash, pause and restart helpers to play broker faults.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Final

from mcufleet.errors import LocalBrokerError

START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0
SEARCH_PATH: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


def find_mosquitto() -> str:
    """Locate the mosquitto binary or explain how to install it."""
    found = shutil.which("mosquitto") or next((p for p in SEARCH_PATH if os.access(p, os.X_OK)), None)
    if found is None:
        raise LocalBrokerError(
            "mosquitto not found: run `make demo` or `make test` (both install it)"
            " or apt-get install mosquitto"
        )
    return found


class MosquittoBroker:
    """One mosquitto process with its own config, store and log in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        extra_config: str = "",
        port: int | None = None,
        config: str | None = None,
        autosave_interval_s: int = 1,
    ) -> None:
        """Prepare a broker in `workdir`; `config` replaces the generated config entirely."""
        self.binary = find_mosquitto()
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        run_as_root = "user root\n" if os.geteuid() == 0 else ""
        self.config_path.write_text(
            config
            if config is not None
            else f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir / 'data'}/\n"
            f"autosave_interval {autosave_interval_s}\n"
            # The shipped queue limits (deploy/mosquitto/mosquitto.conf): publishers now keep many
            # QoS 1 messages in flight, so a burst outruns mosquitto's default of 1000 queued.
            "max_queued_messages 200000\n"
            "max_queued_bytes 0\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
            f"{run_as_root}{extra_config}"
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start mosquitto and wait until it accepts TCP connections."""
        with self.log_path.open("ab") as log:
            # The binary comes from PATH or the Debian location, the config is ours: nothing untrusted.
            self._process = subprocess.Popen(  # noqa: S603
                [self.binary, "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalBrokerError(f"mosquitto exited with {self._process.returncode}:\n{self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
            else:
                return
        raise LocalBrokerError(
            f"mosquitto did not listen on port {self.port} in {START_TIMEOUT_S} s:\n{self.log()}"
        )

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): mosquitto writes its store, as on a planned restart."""
        self._signal_and_wait(signal.SIGTERM)

    def crash(self) -> None:
        """Kill (SIGKILL): what was not autosaved is lost, as on a power cut."""
        self._signal_and_wait(signal.SIGKILL)

    def restart(self) -> None:
        """Stop gracefully and start again on the same port with the same store."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers, a half-open link."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused broker (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        """The broker's log so far (shown when a test fails)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal_and_wait(self, signum: signal.Signals) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(signum)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._process = None


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
