"""`mcufleet agent --check-config`: a valid config passes, a typo stops the agent naming the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

from service_runtime.process import EXIT_CONFIG
from tests.harness.cli import run_mcufleet


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return run_mcufleet("agent", "--config", str(path), "--check-config")


def test_valid_config_passes(tmp_path: Path) -> None:
    """A complete config is accepted and summarised."""
    path = tmp_path / "agent.toml"
    path.write_text(
        'gateway_id = "gw-1"\n[mqtt]\nhost = "broker.example"\nport = 8883\n'
        '[[udp_devices]]\nhost = "127.0.0.2"\n[jobs]\nconcurrency = 3\n'
    )
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert "gateway gw-1, 1 UDP devices" in result.stdout


def test_typo_is_refused_with_the_key_named(tmp_path: Path) -> None:
    """An unknown key exits with EX_CONFIG and names the table and the key."""
    path = tmp_path / "agent.toml"
    path.write_text('gateway_id = "gw-1"\n[jobs]\nconcurency = 3\n')
    result = _check(path)
    assert result.returncode == EXIT_CONFIG
    assert "$.jobs" in result.stderr and "concurency" in result.stderr


def test_out_of_range_value_is_refused(tmp_path: Path) -> None:
    """Constraints are checked: a port above 65535 is an error naming the field."""
    path = tmp_path / "agent.toml"
    path.write_text('gateway_id = "gw-1"\n[mqtt]\nport = 70000\n')
    result = _check(path)
    assert result.returncode == EXIT_CONFIG and "$.mqtt.port" in result.stderr
