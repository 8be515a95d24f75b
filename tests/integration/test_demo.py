"""`mcufleet demo` runs the whole system to its summary, as `make demo` does (scaled down)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_a_rollout_to_its_summary() -> None:
    """A scaled-down demo completes its rollout, prints the summary and the metrics endpoints."""
    script = Path(sys.executable).with_name("mcufleet")
    result = subprocess.run(
        [str(script), "demo", "--devices", "10", "--gateways", "2", "--timeout", "120"],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        env={"COLUMNS": "120", "PATH": "/usr/sbin:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "completed" in result.stdout
    assert "devices updated" in result.stdout and "/metrics  (controller)" in result.stdout
    # Every device is in the plan (none left out because its report was still being written) ...
    waves = re.search(r"waves \[([\d, ]+)\], (\d+) excluded", result.stdout)
    assert waves is not None, result.stdout
    assert sum(int(n) for n in waves.group(1).split(",")) + int(waves.group(2)) == 10
    # ... and every planned device ends updated or failed with a reason.
    counts = [int(n) for n in re.findall(r"│ (?:devices updated|failed: \w+) +│ +(\d+) │", result.stdout)]
    assert sum(counts) == 10, result.stdout
    # The gate of each wave is shown with its numbers: one promote row per wave, its decided count.
    assert "wave gates" in result.stdout
    rows = re.findall(r"│ +(\d+) │ +promote │ +(\d+) │", result.stdout)
    assert [int(wave) for wave, _ in rows] == list(range(waves.group(1).count(",") + 1)), result.stdout
