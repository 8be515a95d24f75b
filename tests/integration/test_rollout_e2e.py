"""Rollouts end to end: real broker, simulated devices, agents, the controller and the cloud emulator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.service import AgentService
from controller.operator_cli import read_plan, send_request
from controller.service import ControllerService
from schemas import (
    CreateRollout,
    FlowSpec,
    GateSpec,
    PauseRollout,
    ReplyStatus,
    RequestId,
    RolloutId,
    RolloutPlan,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    StartRollout,
    TopicKind,
    WaveSpec,
    channels,
)
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome, FaultPlan
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    TREE,
    agent_settings,
    operator_client,
    publish_release,
    running_agent,
    running_controller,
    simulated_devices,
    wait_until,
)

pytestmark = pytest.mark.integration
ROLLOUT_WAIT_S = 120.0


@contextlib.asynccontextmanager
async def gateways(
    broker: MosquittoBroker, devices: FleetServer, tmp_path: Path, count: int
) -> AsyncIterator[list[AgentService]]:
    """`count` agents; device i is heard by gateway i % count and by the next one (overlap)."""
    serials = sorted(devices.endpoints)
    async with contextlib.AsyncExitStack() as stack:
        agents = []
        for index in range(count):
            heard = [
                devices.endpoints[s] for i, s in enumerate(serials) if index in (i % count, (i + 1) % count)
            ]
            settings = agent_settings(f"gw-{index}", broker, tmp_path / f"gw-{index}", heard)
            agents.append(await stack.enter_async_context(running_agent(settings)))
        yield agents


async def registry_has(controller: ControllerService, devices: int, links_per_device: int = 1) -> bool:
    """Whether the controller knows `devices` devices, their keys, and enough gateways for each."""
    store = controller.store
    known = await controller.executor.call(store.devices)
    if any(len(device.links) < links_per_device for device in known):
        return False
    keys = await controller.executor.call(store.project_keys)
    gateways = await controller.executor.call(store.gateways)
    return (
        len(known) >= devices
        and len(keys) >= devices
        and all(g.online for g in gateways)
        and len(gateways) >= 1
    )


async def latest(
    client: aiomqtt.Client,
    kind: TopicKind,
    rollout_id: str,
    predicate: Callable[[Any], bool],
    timeout_s: float = ROLLOUT_WAIT_S,
) -> Any:
    """Follow a retained rollout topic until `predicate(message)` holds."""
    topic = TREE.topic(kind, rollout_id=rollout_id)
    await client.subscribe(topic, qos=1)
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            if message.topic.value != topic or not isinstance(message.payload, bytes) or not message.payload:
                continue
            decoded = channels.decode(kind, message.payload, topic)
            if predicate(decoded):
                await client.unsubscribe(topic)
                return decoded
    raise AssertionError("unreachable")


def three_waves(**overrides: object) -> RolloutSpec:
    return RolloutSpec(
        software_type="app",
        target_version="1.1.0",
        waves=[WaveSpec(percent=10), WaveSpec(percent=50), WaveSpec(percent=100)],
        flow=FlowSpec(max_in_flight=12, max_in_flight_per_gateway=2),
        **overrides,  # type: ignore[arg-type]
    )


async def create_and_start(client: aiomqtt.Client, rollout_id: str, spec: RolloutSpec) -> RolloutPlan:
    """Create, wait for the plan, start it: as an operator does."""
    reply = await send_request(
        client,
        TREE,
        CreateRollout(
            request_id=RequestId(f"{rollout_id}-create"), rollout_id=RolloutId(rollout_id), spec=spec
        ),
        15,
    )
    assert reply is not None and reply.status is ReplyStatus.ACCEPTED, reply
    plan = await read_plan(client, TREE, rollout_id, ROLLOUT_WAIT_S)
    assert plan is not None, "no plan published"
    reply = await send_request(
        client,
        TREE,
        StartRollout(
            request_id=RequestId(f"{rollout_id}-start"),
            rollout_id=RolloutId(rollout_id),
            plan_id=plan.plan_id,
        ),
        15,
    )
    assert reply is not None and reply.status is ReplyStatus.ACCEPTED, reply
    return plan


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
