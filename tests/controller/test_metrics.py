"""The controller's metrics: readings in, series out; a scrape only reads; latencies never pile up."""

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.samples import Sample

from controller.factory import build_controller
from controller.memfault import MemfaultClient, MemfaultStats
from controller.memfault_answers import DeviceQuery
from controller.metrics import (
    LATENCY_BUCKETS_S,
    MEMFAULT_STATUSES,
    OPERATOR_OPS,
    ControllerCollector,
    ControllerReadings,
    RolloutReading,
)
from controller.service import ControllerService
from controller.settings import ControllerSettings, MemfaultConfig, StoreConfig
from schemas import GateVerdict, JobOutcome, ReasonCode, ReplyStatus, RolloutStatus


def _registry(readings: ControllerReadings) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ControllerCollector(lambda: readings))
    return registry


def test_the_collector_exposes_the_readings_it_is_handed() -> None:
    """Each reading appears under its series name and labels, with its value."""
    registry = _registry(
        ControllerReadings(
            leader=True,
            gateways_online=2,
            devices=5,
            devices_by_version={("app", "1.0.0"): 5},
            report_gaps=1,
            memfault_requests_by_status={"200": 9, "418": 1},
            rollouts_by_status={RolloutStatus.RUNNING: 1},
            jobs={(JobOutcome.FAILED.value, ReasonCode.EXPIRED.value): 2},
            commands_dispatched=4,
            rollouts={"r-1": RolloutReading({"pending": 3, "succeeded": 2}, current_wave=1)},
        )
    )
    value = registry.get_sample_value
    assert value("mcufleet_controller_leader") == 1
    assert value("mcufleet_controller_gateways", {"state": "online"}) == 2
    assert value("mcufleet_controller_devices_by_version", {"software_type": "app", "version": "1.0.0"}) == 5
    assert value("mcufleet_controller_report_gaps_total") == 1
    assert value("mcufleet_controller_memfault_requests_total", {"status": "200"}) == 9
    assert value("mcufleet_controller_memfault_requests_total", {"status": "418"}) == 1
    assert value("mcufleet_controller_rollouts", {"status": RolloutStatus.RUNNING.value}) == 1
    labels = {"outcome": JobOutcome.FAILED.value, "reason": ReasonCode.EXPIRED.value}
    assert value("mcufleet_controller_jobs_total", labels) == 2
    assert value("mcufleet_controller_commands_dispatched_total") == 4
    assert value("mcufleet_controller_rollout_devices", {"rollout": "r-1", "state": "succeeded"}) == 2
    assert value("mcufleet_controller_rollout_current_wave", {"rollout": "r-1"}) == 1


def test_known_label_sets_start_at_zero() -> None:
    """Empty readings still give every known status, outcome, verdict and op a series at 0."""
    value = _registry(ControllerReadings()).get_sample_value
    for status in MEMFAULT_STATUSES:
        assert value("mcufleet_controller_memfault_requests_total", {"status": status}) == 0
    for outcome in JobOutcome:
        for reason in ReasonCode:
            labels = {"outcome": outcome.value, "reason": reason.value}
            assert value("mcufleet_controller_jobs_total", labels) == 0
    for verdict in GateVerdict:
        assert value("mcufleet_controller_gate_decisions_total", {"verdict": verdict.value}) == 0
    for op in OPERATOR_OPS:
        for answer in ReplyStatus:
            assert value("mcufleet_controller_operator_requests_total", {"op": op, "status": answer}) == 0
    for status in RolloutStatus:
        assert value("mcufleet_controller_rollouts", {"status": status.value}) == 0


class SteppingClock:
    """A monotonic clock where every Memfault request takes `step_s`."""

    def __init__(self, step_s: float) -> None:
        self.now_s = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        return self.now_s

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.now_s += self.step_s
        return httpx.Response(204, headers={"memfault-reason": "latest"})


Built = tuple[ControllerService, SteppingClock, CollectorRegistry]


@pytest.fixture
async def controller(
    tmp_path: Path,
) -> AsyncIterator[tuple[ControllerService, SteppingClock, CollectorRegistry]]:
    """A constructed (not running) controller whose Memfault answers 204 in 0.3 s of fake time."""
    clock = SteppingClock(0.3)
    registry = CollectorRegistry()
    store_url = f"sqlite:///{tmp_path / 'controller.sqlite3'}"
    settings = ControllerSettings(
        controller_id="controller-metrics",
        store=StoreConfig(url=store_url),
        memfault=MemfaultConfig(base_url="https://api.test"),
    )
    async with build_controller(
        settings, registry=registry, memfault_transport=httpx.MockTransport(clock.handler), clock=clock
    ) as service:
        yield service, clock, registry


def _samples(memfault: MemfaultClient) -> list[Sample]:
    (family,) = memfault.latency.collect()
    return family.samples


async def _ask(memfault: MemfaultClient, times: int) -> None:
    for index in range(times):
        await memfault.latest_release(DeviceQuery(f"S{index}", "hw", "app", "1.0.0", "key"), fresh=True)


async def test_a_scrape_changes_nothing(
    controller: Built,
) -> None:
    """Scraping twice returns the same text, latency histogram included, and keeps counting after."""
    service, _, registry = controller
    memfault = service.coordinator.memfault
    await _ask(memfault, 3)
    stats = dataclasses.asdict(memfault.stats)
    first, second = generate_latest(registry), generate_latest(registry)
    assert first == second
    assert dataclasses.asdict(memfault.stats) == stats
    name = "mcufleet_controller_memfault_latency_seconds"
    assert registry.get_sample_value(f"{name}_count") == 3
    assert registry.get_sample_value(f"{name}_bucket", {"le": "0.5"}) == 3
    assert registry.get_sample_value(f"{name}_bucket", {"le": "0.25"}) == 0
    assert registry.get_sample_value(f"{name}_sum") == pytest.approx(0.9)
    assert registry.get_sample_value("mcufleet_controller_memfault_requests_total", {"status": "204"}) == 3
    await _ask(memfault, 1)
    assert registry.get_sample_value(f"{name}_count") == 4


async def test_latency_readings_do_not_grow_when_never_scraped(
    controller: Built,
) -> None:
    """With nobody scraping (metrics disabled), many requests leave the latency readings one size."""
    service, _, _ = controller
    memfault = service.coordinator.memfault
    await _ask(memfault, 1)
    size = len(_samples(memfault))
    await _ask(memfault, 300)
    samples = _samples(memfault)
    assert len(samples) == size == len(LATENCY_BUCKETS_S) + 1 + 3  # buckets, +Inf, count, sum, created
    assert next(s.value for s in samples if s.name.endswith("_count")) == 301
    # Nothing per request is kept elsewhere: the client's stats are counters and a bounded status map.
    kinds = {field.name: field.type for field in dataclasses.fields(MemfaultStats)}
    assert all("list" not in str(kind) for kind in kinds.values()), kinds
    assert set(memfault.stats.requests_by_status) == {"204"}
