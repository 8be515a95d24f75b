"""Epochs that only grow, and the metrics endpoint served over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from service_runtime.epoch import EpochCounter
from service_runtime.metrics_http import MetricsServer


def test_epochs_grow_across_restarts_and_clock_steps(tmp_path: Path) -> None:
    """A restarted process continues above its last epoch even when the clock stepped back."""
    path = tmp_path / "epoch"
    first = EpochCounter(path)
    assert first.advance(now_ms=1_000) == 1_000
    assert first.advance(now_ms=1_000) == 1_001
    restarted = EpochCounter(path)
    assert restarted.advance(now_ms=10) == 1_002


def test_a_corrupt_epoch_file_falls_back_to_the_clock(tmp_path: Path) -> None:
    """A garbage state file costs only the floor it held; the clock still orders sessions."""
    path = tmp_path / "epoch"
    path.write_text("not a number")
    assert EpochCounter(path).advance(now_ms=5_000) == 5_000


@pytest.mark.integration
def test_metrics_are_scraped_over_http() -> None:
    """The endpoint serves the registry's samples in the Prometheus text format."""
    registry = CollectorRegistry()
    Counter("mcufleet_probe", "A probe counter", registry=registry).inc(3)
    server = MetricsServer(registry)
    server.start()
    try:
        body = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    finally:
        server.stop()
    assert "mcufleet_probe_total 3.0" in body
