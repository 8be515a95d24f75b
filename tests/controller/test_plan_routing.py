"""The canary's strata and plan-time routing: the preview's gateway column is what dispatch does."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rollout_engine.effects import Dispatch
from controller.rollout_engine.machine import RolloutMachine
from controller.rollout_engine.model import Candidate, FlowView, GatewayLink
from controller.rollout_engine.planner import plan_rollout
from schemas import FlowSpec, JobOutcome, ReasonCode, RolloutPlan, RolloutSpec, WaveSpec
from tests.controller.rollout_world import T0


def plan(
    devices: list[Candidate], waves: list[WaveSpec], gateway_success: dict[str, float] | None = None
) -> RolloutPlan:
    spec = RolloutSpec(software_type="app", target_version="2.0.0", waves=waves)
    return plan_rollout(
        "r1",
        "p1",
        spec,
        devices,
        T0,
        image_size_bytes=1000,
        throughput_bytes_per_s=1000,
        reboot_s=1,
        gateway_success=gateway_success,
    )


def fleet(count: int) -> list[Candidate]:
    """Devices over 3 hardware versions, 2 sites with 2 gateways each, 3 current versions; equal links."""
    devices = []
    for i in range(count):
        site = f"site-{i % 2}"
        links = (GatewayLink(f"{site}-gw-a", -60, site=site), GatewayLink(f"{site}-gw-b", -60, site=site))
        devices.append(Candidate(f"S{i:04d}", f"hw-{i % 3}", "app", f"1.{i % 5 % 3}.0", links, "2.0.0"))
    return devices


def test_the_canary_holds_every_hardware_site_gateway_and_version() -> None:
    """A canary of 6 from 300 devices: all 3 hardware versions, 2 sites, 4 gateways and 3 versions."""
    canary = plan(fleet(300), [WaveSpec(count=6), WaveSpec(percent=100)]).waves[0].devices
    by_serial = {c.serial: c for c in fleet(300)}
    assert {d.hardware_version for d in canary} == {"hw-0", "hw-1", "hw-2"}
    assert {by_serial[d.device_serial].current_version for d in canary} == {"1.0.0", "1.1.0", "1.2.0"}
    assert {d.gateway_id for d in canary} == {"site-0-gw-a", "site-0-gw-b", "site-1-gw-a", "site-1-gw-b"}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(20, 120))
def test_hardware_then_versions_are_all_in_before_any_twice(size: int, count: int) -> None:
    """Every hardware version before any twice; then every current version (as far as size allows)."""
    devices = fleet(count)
    canary = plan(devices, [WaveSpec(count=size), WaveSpec(percent=100)]).waves[0].devices
    by_serial = {c.serial: c for c in devices}
    hardware = Counter(d.hardware_version for d in canary)
    all_hardware = {c.hardware_version for c in devices}
    if len(canary) >= len(all_hardware):
        assert set(hardware) == all_hardware, hardware
    else:
        assert max(hardware.values()) == 1, hardware
    versions = {by_serial[d.device_serial].current_version for d in canary}
    all_versions = {c.current_version for c in devices}
    if len(canary) >= len(all_hardware) + len(all_versions):
        assert versions == all_versions, versions


def test_tied_links_are_spread_across_gateways() -> None:
    """Equal RSSI on both gateways of a site: the plan splits the site's devices between them."""
    planned = plan(fleet(100), [WaveSpec(percent=100)]).waves[0].devices
    per_gateway = Counter(d.gateway_id for d in planned)
    assert sorted(per_gateway.values()) == [25, 25, 25, 25]


def test_the_plan_scores_links_as_dispatch_does() -> None:
    """A gateway with a poor success record loses a 10 dB advantage, at plan time as at dispatch."""
    links = (GatewayLink("gw-strong", -50), GatewayLink("gw-weak", -60))
    devices = [Candidate("S1", "hw", "app", "1.0.0", links, "2.0.0")]
    assert plan(devices, [WaveSpec(percent=100)]).waves[0].devices[0].gateway_id == "gw-strong"
    shaky = plan(devices, [WaveSpec(percent=100)], gateway_success={"gw-strong": 0.2, "gw-weak": 1.0})
    assert shaky.waves[0].devices[0].gateway_id == "gw-weak"


def test_dispatch_follows_the_planned_gateway_on_a_tie() -> None:
    """With nothing in flight, every job goes through the gateway its plan row names."""
    devices = fleet(40)
    spec = RolloutSpec(
        software_type="app",
        target_version="2.0.0",
        waves=[WaveSpec(percent=100)],
        flow=FlowSpec(max_in_flight=1, max_in_flight_per_gateway=1),
    )
    rollout_plan = plan_rollout(
        "r1", "p1", spec, devices, T0, image_size_bytes=1000, throughput_bytes_per_s=1000, reboot_s=1
    )
    planned = {str(d.device_serial): str(d.gateway_id) for d in rollout_plan.waves[0].devices}
    machine = RolloutMachine.create("r1", spec, T0)
    machine.set_plan(rollout_plan)
    machine.start("p1", T0)
    links = {c.serial: c.links for c in devices}
    flow = FlowView(links=lambda serial: links[serial])
    sent: list[Dispatch] = []
    for _ in range(len(devices)):
        started = [e for e in machine.tick(T0, flow) if isinstance(e, Dispatch)]
        sent += started
        for job in started:
            machine.on_result(job.job_id, JobOutcome.SUCCEEDED, ReasonCode.OK, False, T0)
    assert len(sent) == len(devices)
    assert all(job.gateway_id == planned[job.serial] for job in sent)
