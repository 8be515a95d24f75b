"""`mcufleet sim`: argument handling in-process, and a real run stopped by SIGTERM."""

import io
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.cli import run
from tests.simulator.frames import reply, request


def test_unreadable_fleet_file_is_a_usage_error(tmp_path: Path) -> None:
    """A missing fleet file exits 2 with the path in the message."""
    err = io.StringIO()
    assert run(["--fleet", str(tmp_path / "nope.toml")], err=err) == 2
    assert "nope.toml" in err.getvalue()


def test_base_address_outside_loopback_is_refused() -> None:
    """An address outside 127.0.0.0/8 for the one-address-per-device mode fails before serving."""
    err = io.StringIO()
    assert run(["--devices", "2", "--base-address", "127.255.255.255"], err=err) == 1
    assert "outside 127.0.0.0/8" in err.getvalue()


@pytest.mark.integration
def test_sim_serves_prints_endpoints_and_stops_on_sigterm() -> None:
    """The command prints one endpoint per device, answers SMP on them, and exits 0 on SIGTERM."""
    code = "import sys; from simulator.cli import run; sys.exit(run(sys.argv[1:]))"
    args = ["--devices", "3", "--seed", "4", "--port-per-device", "--base-address", "127.0.0.1"]
    with subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(4)]
        assert lines[0].split() == ["serial", "hardware", "version", "link", "endpoint"]
        host, port = lines[1].split()[-1].rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(request(128, 0), (host, int(port)))
            info = reply(udp.recv(2048))[1]
        assert info["device_serial"] == lines[1].split()[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
