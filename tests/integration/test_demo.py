"""`mcufleet demo` runs the whole system to its summary, as `make demo` does (scaled down)."""

from __future__ import annotations

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
