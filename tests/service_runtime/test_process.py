"""The shared process bootstrap, run as the services are run: `mcufleet agent|controller` processes."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from service_runtime.process import EXIT_CONFIG
from tests.harness.cli import mcufleet_command, run_mcufleet

START_WAIT_S = 30.0


def _controller(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_mcufleet("controller", "--config", str(config), *args)


def test_check_config_prints_the_services_summary(tmp_path: Path) -> None:
    """`--check-config` validates and prints the service's own summary line."""
    path = tmp_path / "controller.toml"
    path.write_text('controller_id = "c-9"\n[store]\nurl = "sqlite:///tmp/c.sqlite3"\n')
    result = _controller(path, "--check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "configuration OK: controller c-9, store sqlite:///tmp/c.sqlite3\n"


def test_an_invalid_config_is_one_line_and_ex_config(tmp_path: Path) -> None:
    """A config error names the program and the key, and exits 78 before anything starts."""
    path = tmp_path / "controller.toml"
    path.write_text("[scheduler]\ntick_interval_s = -1\n")
    result = _controller(path)
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.startswith("mcufleet controller: invalid configuration: ")
    assert "$.scheduler.tick_interval_s" in result.stderr


def test_the_services_error_root_is_logged_and_ex_config(tmp_path: Path) -> None:
    """A setting only the running service can judge (an unknown store scheme) stops it with 78."""
    path = tmp_path / "controller.toml"
    path.write_text('[store]\nurl = "nosuch://x"\n[metrics]\nenabled = false\n')
    result = _controller(path)
    assert result.returncode == EXIT_CONFIG
    (line,) = [json.loads(line) for line in result.stderr.splitlines() if "controller stopped" in line]
    assert line["level"] == "error" and "nosuch://x" in line["error"]


def test_sigterm_stops_the_service_gracefully(tmp_path: Path) -> None:
    """SIGTERM asks the running agent to stop; it ends with status 0 (no broker needed to run)."""
    path = tmp_path / "agent.toml"
    path.write_text(
        f'gateway_id = "gw-term"\nstate_dir = "{tmp_path / "state"}"\n'
        # Port 1 on loopback refuses at once: the session keeps retrying while the agent runs.
        '[mqtt]\nhost = "127.0.0.1"\nport = 1\n[metrics]\nport = 0\n'
    )
    with subprocess.Popen(
        mcufleet_command("agent", "--config", str(path)), stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stderr is not None
            # The first refused connection shows the service is running (signal handlers are
            # installed before it starts).
            for line in process.stderr:
                if "mqtt connection lost" in line:
                    break
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=START_WAIT_S) == 0
        finally:
            if process.poll() is None:
                process.kill()
