"""The fault knobs without HTTP: forced statuses, seeded errors and per-device rate limits."""

import pytest

from simulator.cloud import Endpoint, FaultInjector, ModelError


def test_forced_statuses_run_out_in_order() -> None:
    """Forced statuses answer exactly `count` requests each, first in first out."""
    faults = FaultInjector()
    faults.force(503, count=2, retry_after_s=2)
    faults.force(500, count=1, retry_after_s=None)
    statuses = [faults.failure_for(Endpoint.LATEST) for _ in range(4)]
    assert [(f.status, f.retry_after_s) if f else None for f in statuses] == [
        (503, 2),
        (503, 2),
        (500, None),
        None,
    ]


def test_downloads_are_spared_unless_included() -> None:
    """Faults hit artifact downloads only with include_downloads; the admin API never."""
    faults = FaultInjector()
    faults.force(503, count=10)
    assert faults.failure_for(Endpoint.ARTIFACT) is None
    assert faults.failure_for(Endpoint.ADMIN) is None
    faults.configure(include_downloads=True)
    assert faults.failure_for(Endpoint.ARTIFACT) is not None


def test_random_errors_follow_the_rate_and_the_seed() -> None:
    """About error_rate of requests fail, in the same places for the same seed."""
    runs = []
    for _ in range(2):
        faults = FaultInjector(seed=7)
        faults.configure(error_rate=0.25)
        runs.append([faults.failure_for(Endpoint.LATEST) is not None for _ in range(1000)])
    assert runs[0] == runs[1]
    assert 200 <= sum(runs[0]) <= 300


def test_rate_limit_is_per_device_over_a_sliding_minute() -> None:
    """The limit+1-th request in 60 s is refused with the seconds until the oldest leaves the window."""
    faults = FaultInjector()
    faults.configure(rate_limit_per_minute=2)
    assert faults.admit("A", 0.0) is None
    assert faults.admit("A", 10.0) is None
    assert faults.admit("A", 20.0) == 40
    assert faults.admit("B", 20.0) is None
    assert faults.admit("A", 60.5) is None


def test_bad_knobs_raise_model_error() -> None:
    """Unknown knobs and values out of range are refused, and leave the settings alone."""
    faults = FaultInjector()
    with pytest.raises(ModelError):
        faults.configure(error_rate=2.0)
    with pytest.raises(ModelError):
        faults.configure(colour="red")
    with pytest.raises(ModelError):
        faults.force(200)
    assert faults.settings.error_rate == 0.0
    faults.configure(latency_ms=5)
    faults.reset()
    assert faults.settings.latency_ms == 0.0
