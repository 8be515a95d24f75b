"""The Prometheus material passes promtool: config, rules, and a unit test for every alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy/prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run `make test` (it installs Debian's prometheus package)")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, check=False, timeout=120, cwd=PROMETHEUS
    )


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "rules/mcufleet.rules.yml"),
        ("test", "rules", "tests/mcufleet.test.yml"),
    ],
    ids=["config", "rules", "rule-tests"],
)
def test_promtool_accepts(args: tuple[str, ...]) -> None:
    """The file passes promtool (for the tests file: every alert unit test passes)."""
    result = _promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_a_runbook() -> None:
    """Each alert appears in the promtool tests and links to a runbook section that exists."""
    rules = yaml.safe_load((PROMETHEUS / "rules/mcufleet.rules.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    tests = (PROMETHEUS / "tests/mcufleet.test.yml").read_text()
    operations = (ROOT / "docs/operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in operations.splitlines()
        if line.startswith("#")
    }
    for alert in alerts:
        assert f"alertname: {alert['alert']}" in tests, alert["alert"]
        runbook = alert["annotations"]["runbook"]
        assert runbook.split("#")[1] in anchors, runbook
