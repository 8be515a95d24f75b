"""A real mosquitto for one test: persistent, on a free port, with restart, crash and pause helpers.

Persistence is on with a one-second autosave so a SIGKILL loses at most a second of state, as in
production with its short autosave (deploy/mosquitto/). Started as root, mosquitto would drop to
user `mosquitto` and then fail to write its store, hence `user root` in that case.
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

from tests.harness.ports import free_tcp_port

START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0
SEARCH_PATH: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


class BrokerUnavailable(RuntimeError):
    """mosquitto is not installed or did not start; the message says what to do."""


def find_mosquitto() -> str:
    """Locate the mosquitto binary or explain how to install it."""
    found = shutil.which("mosquitto") or next((p for p in SEARCH_PATH if os.access(p, os.X_OK)), None)
    if found is None:
        raise BrokerUnavailable(
            "mosquitto not found: run `make test` (it installs it) or apt-get install mosquitto"
        )
    return found


class MosquittoBroker:
    """One mosquitto process with its own config, store and log in `workdir`."""

    def __init__(
        self, workdir: Path, *, extra_config: str = "", port: int | None = None, config: str | None = None
    ) -> None:
        """Prepare a broker in `workdir`; `config` replaces the generated test config entirely."""
        self.binary = find_mosquitto()
        self.workdir = workdir
        self.port = port or free_tcp_port()
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
            "autosave_interval 1\n"
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
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"mosquitto exited with {self._process.returncode}:\n{self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
            else:
                return
        raise BrokerUnavailable(
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
