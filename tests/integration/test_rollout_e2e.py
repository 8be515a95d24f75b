"""Rollouts end to end: real broker, simulated devices, agents, the controller and the cloud emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.operator_cli import send_request
from schemas import (
    FlowSpec,
    GateSpec,
    PauseRollout,
    ReplyStatus,
    RequestId,
    RolloutId,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    TopicKind,
    WaveSpec,
)
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome, FaultPlan
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    TREE,
    create_and_start,
    gateways,
    latest,
    operator_client,
    publish_release,
    registry_has,
    running_controller,
    simulated_devices,
    wait_until,
)

pytestmark = pytest.mark.integration


def three_waves(**overrides: object) -> RolloutSpec:
    return RolloutSpec(
        software_type="app",
        target_version="1.1.0",
        waves=[WaveSpec(percent=10), WaveSpec(percent=50), WaveSpec(percent=100)],
        flow=FlowSpec(max_in_flight=12, max_in_flight_per_gateway=2),
        **overrides,  # type: ignore[arg-type]
    )


async def test_three_wave_rollout_over_three_gateways_updates_every_device(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """30 devices, 3 gateways, 3 waves: every device ends confirmed on 1.1.0, flashed once."""
    serials = [f"DEV-{i:02d}" for i in range(30)]
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as devices,
        running_controller(
            broker, cloud.base_url, f"sqlite:///{tmp_path / 'controller.sqlite3'}"
        ) as controller,
        gateways(broker, devices, tmp_path, 3),
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0")
        await wait_until(lambda: registry_has(controller, 30))
        plan = await create_and_start(client, "r-1", three_waves())
        assert [len(w.devices) for w in plan.waves] == [3, 12, 15]
        state = await latest(
            client, TopicKind.ROLLOUT_STATE, "r-1", lambda s: s.status is RolloutStatus.COMPLETED
        )
    assert state.counts.succeeded == 30
    for serial in serials:
        device = devices.device(serial)
        running = next(s for s in device.image_states() if s.active)
        assert running.version == "1.1.0" and running.confirmed, serial
        assert [b.outcome for b in device.boots].count(BootOutcome.SWAPPED) == 1, serial


async def test_a_bad_build_trips_the_gate_and_pauses(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Reverting canaries pause the rollout; devices outside the canary are never touched."""
    serials = [f"DEV-{i:02d}" for i in range(20)]
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as devices,
        running_controller(
            broker, cloud.base_url, f"sqlite:///{tmp_path / 'controller.sqlite3'}"
        ) as controller,
        gateways(broker, devices, tmp_path, 2),
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0")
        for serial in serials:
            devices.device(serial).faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
        await wait_until(lambda: registry_has(controller, 20))
        spec = three_waves(gates=GateSpec(failure_min_sample=2, failure_threshold=0.2))
        await create_and_start(client, "r-bad", spec)
        state: RolloutState = await latest(
            client, TopicKind.ROLLOUT_STATE, "r-bad", lambda s: s.status is RolloutStatus.PAUSED
        )
        assert "failure gate" in state.paused_reason and state.current_wave == 0
        reply = await send_request(
            client, TREE, PauseRollout(request_id=RequestId("p-again"), rollout_id=RolloutId("r-bad")), 15
        )
    assert reply is not None and reply.status is ReplyStatus.REJECTED and reply.reason == "invalid_state"
    touched = [s for s in serials if devices.device(s).boots]
    assert 0 < len(touched) <= 2
    assert all(devices.device(s).running_version == "1.0.0" for s in serials)
