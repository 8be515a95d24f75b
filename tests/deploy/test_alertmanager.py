"""deploy/alertmanager passes amtool, routes every shipped alert, and inhibits what a broker outage causes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER_CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"
RULES = ROOT / "deploy/prometheus/rules/mcufleet.rules.yml"
BROKER_ALERT = "McufleetBrokerUnreachable"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's amtool (from prometheus-alertmanager) and return its result."""
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool not found: run `make test` (it installs Debian's prometheus-alertmanager)")
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False, timeout=60)


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of deploy/prometheus/rules."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_amtool_accepts_the_config() -> None:
    """`amtool check-config` accepts deploy/alertmanager/alertmanager.yml."""
    result = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_every_alert_reaches_its_receiver(rule: dict[str, Any]) -> None:
    """Critical alerts page the on-call receiver; every other alert goes to the operators."""
    labels = {"alertname": rule["alert"], "rollout": "r-1", "gateway": "gw-1", "site": "site-a"}
    labels |= rule.get("labels", {})
    expected = "fleet-oncall" if labels["severity"] == "critical" else "fleet-operators"
    result = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={expected}",
        *(f"{name}={value}" for name, value in labels.items()),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_per_gateway_alerts_are_inhibited_during_a_broker_outage() -> None:
    """The inhibition source is a shipped alert, and every alert about one gateway is its target.

    An alert is about one gateway when its summary names `$labels.gateway`; it must carry
    `scope: gateway`, which the inhibition rule targets (the live test proves the suppression).
    """
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert BROKER_ALERT in rules
    inhibitions = [
        rule for rule in config["inhibit_rules"] if rule["source_matchers"] == [f'alertname="{BROKER_ALERT}"']
    ]
    assert [rule["target_matchers"] for rule in inhibitions] == [['scope="gateway"']]
    per_gateway = {
        name for name, rule in rules.items() if "$labels.gateway" in rule["annotations"]["summary"]
    }
    scoped = {name for name, rule in rules.items() if rule.get("labels", {}).get("scope") == "gateway"}
    assert per_gateway and per_gateway == scoped


def test_prometheus_sends_to_the_shipped_alertmanager() -> None:
    """prometheus.yml's alerting target is the compose service that runs this config, on its port."""
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        target
        for alertmanager in prometheus["alerting"]["alertmanagers"]
        for static in alertmanager["static_configs"]
        for target in static["targets"]
    ]
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())["services"]
    assert targets == ["alertmanager:9093"]
    service = compose["alertmanager"]
    assert "../alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in service["volumes"]
    assert "9093:9093" in service["ports"]
