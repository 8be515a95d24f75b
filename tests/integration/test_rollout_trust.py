"""Rollout decisions an operator can trust, over the real broker with agents and simulated devices.

Each test runs the controller, mosquitto, the cloud emulator, real agents and simulated SMP devices;
what varies is what the devices (or an agent's settings) do: see docs/gates.md for the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from agent.service import AgentService
from agent.settings import JobsConfig
from controller.operator_cli import send_request
from controller.service import ControllerService
from schemas import (
    DeviceJobState,
    FlowSpec,
    GateSpec,
    PenaltySpec,
    ReplyStatus,
    RequestId,
    RetryFailed,
    RetrySpec,
    RolloutId,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    TopicKind,
    WaveSpec,
)
from simulator.cloud import CloudEmulator
from simulator.device import FaultPlan, LinkProfile
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.harness.udp_proxy import SmpUdpProxy, is_image_upload, serve
from tests.integration.world import (
    TREE,
    agent_settings,
    create_and_start,
    latest,
    operator_client,
    publish_release,
    registry_has,
    running_agent,
    running_controller,
    simulated_devices,
    wait_until,
)

pytestmark = pytest.mark.integration
DARK = LinkProfile(loss_rate=1.0)


@contextlib.asynccontextmanager
async def agents(
    broker: MosquittoBroker,
    devices: FleetServer,
    tmp_path: Path,
    count: int,
    *,
    site: str = "",
    jobs: Callable[[int], JobsConfig | None] = lambda _: None,
) -> AsyncIterator[list[AgentService]]:
    """`count` agents that all hear every device (on `site`; `jobs(i)` replaces agent i's job settings)."""
    endpoints = [devices.endpoints[s] for s in sorted(devices.endpoints)]
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for index in range(count):
            settings = agent_settings(f"gw-{index}", broker, tmp_path / f"gw-{index}", endpoints)
            settings = msgspec.structs.replace(settings, site=site, jobs=jobs(index) or settings.jobs)
            running.append(await stack.enter_async_context(running_agent(settings)))
        yield running


@contextlib.asynccontextmanager
async def world(
    broker: MosquittoBroker, tmp_path: Path, devices: int, gateways: int, **agent_options: object
) -> AsyncIterator[tuple[ControllerService, FleetServer, aiomqtt.Client]]:
    """Controller, cloud with release 1.1.0, `devices` simulated devices, `gateways` agents, an operator."""
    serials = [f"DEV-{i:02d}" for i in range(devices)]
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as fleet,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        agents(broker, fleet, tmp_path, gateways, **agent_options),  # type: ignore[arg-type]
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0")
        await wait_until(lambda: registry_has(controller, devices, links_per_device=gateways))
        yield controller, fleet, client


def spec(**overrides: object) -> RolloutSpec:
    """One wave over every device with quick retries, unless overridden."""
    base: dict[str, object] = {
        "software_type": "app",
        "target_version": "1.1.0",
        "waves": [WaveSpec(percent=100)],
        "retry": RetrySpec(max_attempts=5, backoff_s=0.5, backoff_factor=1.0),
    }
    return RolloutSpec(**{**base, **overrides})  # type: ignore[arg-type]


def ended(state: RolloutState) -> bool:
    """Completed, paused or aborted."""
    return state.status in (RolloutStatus.COMPLETED, RolloutStatus.PAUSED, RolloutStatus.ABORTED)


async def test_two_failures_of_two_with_a_sample_of_five_never_promote(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A canary of two that both revert, min_sample 5 and no success threshold: held, the rest untouched."""
    async with world(broker, tmp_path, devices=8, gateways=2) as (_, fleet, client):
        for serial in fleet.endpoints:
            fleet.device(serial).faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
        gates = GateSpec(success_threshold=0.0, min_sample=5, failure_min_sample=10)
        await create_and_start(
            client, "r-short", spec(waves=[WaveSpec(count=2), WaveSpec(percent=100)], gates=gates)
        )
        state: RolloutState = await latest(client, TopicKind.ROLLOUT_STATE, "r-short", ended)
        touched = sum(1 for serial in fleet.endpoints if fleet.device(serial).boots)
    assert state.status is RolloutStatus.PAUSED and state.current_wave == 0
    decision = state.gate_decisions[-1]
    assert (decision.verdict.value, decision.decided, decision.failed, decision.short_sample) == (
        "pause",
        2,
        2,
        True,
    )
    assert state.paused_reason.startswith("gate: short sample: 2 decided, below 5")
    assert touched == 2  # the devices outside the canary were never touched


async def test_devices_nobody_reaches_do_not_move_the_gate_and_are_parked_until_retried(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Three dark devices: not counted (5/5 decided succeed, the wave completes), parked until retried."""
    async with world(broker, tmp_path, devices=8, gateways=2) as (controller, fleet, client):
        dark = sorted(fleet.endpoints)[:3]
        for serial in dark:
            fleet.device(serial).link_profile = DARK
        await create_and_start(client, "r-dark", spec())
        state: RolloutState = await latest(client, TopicKind.ROLLOUT_STATE, "r-dark", ended)
        assert state.status is RolloutStatus.COMPLETED, state.paused_reason
        decision = state.gate_decisions[-1]
        assert (decision.decided, decision.succeeded, decision.not_counted) == (5, 5, 3), decision
        assert (state.waves[0].decided, state.waves[0].not_counted, state.counts.parked) == (5, 3, 3)
        machine = controller.coordinator.machines["r-dark"]
        for serial in dark:
            record = machine.device(serial)
            assert (
                record is not None
                and record.state is DeviceJobState.PARKED
                and "parked: 2 failures" in record.reason
            )
            fleet.device(serial).link_profile = LinkProfile()
        reply = await send_request(
            client, TREE, RetryFailed(request_id=RequestId("retry-dark"), rollout_id=RolloutId("r-dark")), 15
        )
        assert reply is not None and reply.status is ReplyStatus.ACCEPTED, reply
        final: RolloutState = await latest(
            client,
            TopicKind.ROLLOUT_STATE,
            "r-dark",
            lambda s: s.status is RolloutStatus.COMPLETED and s.counts.succeeded == 8,
        )
    assert final.counts.parked == 0


async def test_a_device_that_never_returns_from_its_test_boot_is_a_failure_sent_once(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """DEV-00 goes dark after its reset: reboot_timeout, counted failed, never dispatched again."""
    async with world(broker, tmp_path, devices=3, gateways=1) as (controller, fleet, client):
        victim = fleet.device("DEV-00")

        async def darken_after_the_reset() -> None:
            while not victim.boots:  # noqa: ASYNC110 (the simulated device offers nothing to await)
                await asyncio.sleep(0.005)
            victim.link_profile = DARK

        watcher = asyncio.create_task(darken_after_the_reset())
        await create_and_start(client, "r-boot", spec(gates=GateSpec(success_threshold=0.5)))
        state: RolloutState = await latest(client, TopicKind.ROLLOUT_STATE, "r-boot", ended)
        await watcher
        record = controller.coordinator.machines["r-boot"].device("DEV-00")
    assert state.status is RolloutStatus.COMPLETED
    assert record is not None and (record.state, record.reason, record.attempts) == (
        DeviceJobState.FAILED,
        "reboot_timeout",
        1,
    )
    decision = state.gate_decisions[-1]
    assert (decision.decided, decision.succeeded, decision.failed) == (3, 2, 1)


class UploadDroppingProxy(SmpUdpProxy):
    """A lossy radio path: forwards SMP both ways but loses every image-upload request."""

    def to_device(self, frame: bytes) -> bytes | None:
        return None if is_image_upload(frame) else frame


async def test_a_gateway_that_keeps_failing_is_cooled_and_its_devices_move(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """gw-0 loses every upload: once three devices failed through it, it is cooled and gw-1 does the rest."""
    serials = [f"DEV-{i:02d}" for i in range(10)]
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as fleet,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        contextlib.AsyncExitStack() as stack,
        operator_client(broker) as client,
    ):
        proxies = []
        for serial in serials:
            transport, address = await serve(UploadDroppingProxy(fleet.endpoints[serial]))
            stack.callback(transport.close)
            proxies.append(address)
        direct = [fleet.endpoints[s] for s in serials]
        quick = JobsConfig(first_chunk_timeout_s=1.0, chunk_timeout_s=0.5, reboot_timeout_s=15.0)
        for gateway, endpoints in (("gw-0", proxies), ("gw-1", direct)):
            settings = agent_settings(gateway, broker, tmp_path / gateway, endpoints)
            # gw-0 gives up on a lost upload sooner: the test waits for its failures.
            jobs = quick if gateway == "gw-0" else settings.jobs
            await stack.enter_async_context(running_agent(msgspec.structs.replace(settings, jobs=jobs)))
        publish_release(cloud, "1.1.0")
        await wait_until(lambda: registry_has(controller, len(serials), links_per_device=2))
        rollout = spec(
            flow=FlowSpec(max_in_flight=10, max_in_flight_per_gateway=3),
            penalty=PenaltySpec(device_failures=3, gateway_failures=3, gateway_cooldown_s=600),
        )
        await create_and_start(client, "r-cool", rollout)
        state: RolloutState = await latest(client, TopicKind.ROLLOUT_STATE, "r-cool", ended)
        machine = controller.coordinator.machines["r-cool"]
    assert state.status is RolloutStatus.COMPLETED and state.counts.succeeded == len(serials), state
    gateways = {str(g.gateway_id): g for g in state.gateways}
    assert gateways["gw-0"].succeeded == 0 and gateways["gw-1"].succeeded == len(serials)
    assert gateways["gw-0"].cooled_until is not None and gateways["gw-0"].cooled_until > state.updated_at
    assert machine.gateway_record()["gw-0"][1] == 3  # cooled after its first three failures


async def test_the_per_site_cap_holds_with_two_gateways_on_one_site(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Two gateways on site A, a site cap of 2: never more than two jobs in flight on the site."""
    async with world(broker, tmp_path, devices=8, gateways=2, site="A") as (controller, _, client):
        peak = 0
        rollout = spec(flow=FlowSpec(max_in_flight=10, max_in_flight_per_gateway=4, max_in_flight_per_site=2))
        await create_and_start(client, "r-site", rollout)
        machine = controller.coordinator.machines["r-site"]
        async with asyncio.timeout(120):
            while machine.status is RolloutStatus.RUNNING:
                peak = max(peak, len(machine.in_flight()))
                await asyncio.sleep(0.002)
        state: RolloutState = await latest(client, TopicKind.ROLLOUT_STATE, "r-site", ended)
    assert state.status is RolloutStatus.COMPLETED and state.counts.succeeded == 8
    assert peak == 2
