"""The shared process bootstrap as the services run it (`mcufleet agent|controller`), and its task wait."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
from pathlib import Path

import pytest

from agent.cli import AGENT_PROCESS
from service_runtime.errors import BackgroundTaskFailed
from service_runtime.process import EXIT_CONFIG, EXIT_SOFTWARE, run_process, until_stopped
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


async def test_until_stopped_returns_at_the_stop_and_outlives_tasks_that_return() -> None:
    """Tasks that return are done, not failed; the wait ends when the stop is asked for."""
    stop = asyncio.Event()
    finished = asyncio.create_task(asyncio.sleep(0), name="finishes")
    forever = asyncio.create_task(asyncio.Event().wait(), name="forever")
    waiting = asyncio.create_task(until_stopped(stop, [finished, forever]))
    await finished
    await asyncio.sleep(0)
    assert not waiting.done()
    stop.set()
    await asyncio.wait_for(waiting, START_WAIT_S)
    assert not forever.done()
    forever.cancel()


async def test_until_stopped_raises_when_a_task_fails() -> None:
    """A failing background task ends the wait with its name and its exception as the cause."""

    async def writer() -> None:
        raise KeyError("store row")

    task = asyncio.create_task(writer(), name="ingest")
    with pytest.raises(BackgroundTaskFailed, match="ingest failed") as caught:
        await asyncio.wait_for(until_stopped(asyncio.Event(), [task]), START_WAIT_S)
    assert isinstance(caught.value.__cause__, KeyError)


def test_a_failed_background_task_exits_ex_software(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bootstrap logs the failure and exits 70, so systemd restarts the service."""

    async def serve(settings: object) -> None:
        raise BackgroundTaskFailed("ingest failed: KeyError('store row')")

    path = tmp_path / "agent.toml"
    path.write_text(f'gateway_id = "gw-fail"\nstate_dir = "{tmp_path / "state"}"\n')
    spec = dataclasses.replace(AGENT_PROCESS, serve=serve)
    assert run_process(spec, ["--config", str(path)], {}) == EXIT_SOFTWARE
    (line,) = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "agent failed" in line]
    assert line["level"] == "error" and "KeyError" in line["error"]
