"""The systemd units verify cleanly: `systemd-analyze verify` with any warning counted as a failure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy/systemd").glob("*.service"))
INSTALLED_PATH = "/opt/mcufleet/bin/mcufleet"


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_unit_verifies_without_warnings(unit: Path, tmp_path: Path) -> None:
    """The unit parses, names a real executable and uses only known directives (no stderr at all)."""
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        pytest.fail("systemd-analyze not found: run `make test` (it installs Debian's systemd package)")
    executable = Path(sys.executable).with_name("mcufleet")
    assert executable.exists(), "the venv's mcufleet entry point is missing"
    copy = tmp_path / unit.name
    text = unit.read_text()
    assert INSTALLED_PATH in text
    copy.write_text(text.replace(INSTALLED_PATH, str(executable)))
    result = subprocess.run(
        [analyzer, "verify", str(copy)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_units_are_notify_services_with_a_watchdog() -> None:
    """Both units wait for READY and are restarted by the watchdog when the main loop hangs."""
    assert {unit.name for unit in UNITS} == {"mcufleet-agent.service", "mcufleet-controller.service"}
    for unit in UNITS:
        text = unit.read_text()
        assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=always" in text
