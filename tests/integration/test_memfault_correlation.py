"""Rollouts against the Memfault emulator's hard cases: per-device faults, outages, deltas, hops, md5.

Real broker, simulated devices, agents, the controller and the cloud emulator over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from agent.firmware import inspect_image
from agent.service import AgentService
from controller.operator_cli import read_plan, send_request
from schemas import (
    CreateRollout,
    FlowSpec,
    OtaCommand,
    PauseRollout,
    ReplyStatus,
    RequestId,
    ResumeRollout,
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
from simulator.device import BootOutcome
from simulator.fleet import firmware_image
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.integration.test_gateway_trust import controller_heard_by_one_gateway
from tests.integration.world import (
    HARDWARE,
    PROJECT_KEY,
    TREE,
    WAIT_S,
    agent_settings,
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


def one_wave(target: str = "1.1.0") -> RolloutSpec:
    """Every device in one wave, all at once."""
    return RolloutSpec(
        software_type="app",
        target_version=target,
        waves=[WaveSpec(percent=100)],
        flow=FlowSpec(max_in_flight=10, max_in_flight_per_gateway=5),
    )


@contextlib.asynccontextmanager
async def gateways_for(
    broker: MosquittoBroker,
    devices: FleetServer,
    tmp_path: Path,
    heard: dict[str, list[str]],
    delta_capable: frozenset[str] = frozenset(),
) -> AsyncIterator[list[AgentService]]:
    """One agent per entry of `heard` (gateway id -> serials); those in `delta_capable` apply deltas."""
    async with contextlib.AsyncExitStack() as stack:
        agents = []
        for gateway_id, serials in heard.items():
            settings = agent_settings(
                gateway_id, broker, tmp_path / gateway_id, [devices.endpoints[s] for s in serials]
            )
            if gateway_id in delta_capable:
                settings = msgspec.structs.replace(settings, delta_capable_hardware=(HARDWARE,))
            agents.append(await stack.enter_async_context(running_agent(settings)))
        yield agents


async def create(client: aiomqtt.Client, rollout_id: str, spec: RolloutSpec) -> RolloutPlan:
    """Create a rollout and wait for its plan."""
    request = CreateRollout(
        request_id=RequestId(f"{rollout_id}-c"), rollout_id=RolloutId(rollout_id), spec=spec
    )
    reply = await send_request(client, TREE, request, 15)
    assert reply is not None and reply.status is ReplyStatus.ACCEPTED, reply
    plan = await read_plan(client, TREE, rollout_id, WAIT_S)
    assert plan is not None, f"no plan for {rollout_id}"
    return plan


async def start(client: aiomqtt.Client, rollout_id: str, plan: RolloutPlan) -> None:
    """Start a rollout on its plan."""
    request = StartRollout(
        request_id=RequestId(f"{rollout_id}-s"), rollout_id=RolloutId(rollout_id), plan_id=plan.plan_id
    )
    reply = await send_request(client, TREE, request, 15)
    assert reply is not None and reply.status is ReplyStatus.ACCEPTED, reply


async def completed(client: aiomqtt.Client, rollout_id: str) -> RolloutState:
    """The rollout's state once it completed."""
    state: RolloutState = await latest(
        client, TopicKind.ROLLOUT_STATE, rollout_id, lambda s: s.status is RolloutStatus.COMPLETED
    )
    return state


def active_hash(devices: FleetServer, serial: str) -> bytes:
    """The MCUboot hash of the image a device runs."""
    return next(s for s in devices.device(serial).image_states() if s.active).hash_sha256


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [("status", 500, "http_500"), ("status", 404, "http_404"), ("garbage", 500, "malformed")],
)
async def test_one_device_memfault_cannot_answer_leaves_the_other_nine_updating(
    broker: MosquittoBroker, tmp_path: Path, kind: str, status: int, reason: str
) -> None:
    """A device answered 500/404/garbage is excluded with the reason in the plan and /metrics; nine update."""
    serials = [f"DEV-{i:02d}" for i in range(10)]
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as devices,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        gateways_for(broker, devices, tmp_path, {"gw-0": serials[:5], "gw-1": serials[5:]}),
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0")
        cloud.faults.fault_device("DEV-03", kind, status=status)
        await wait_until(lambda: registry_has(controller, 10))
        plan = await create(client, "r-iso", one_wave())
        excluded = {str(e.device_serial): e.reason for e in plan.excluded}
        assert list(excluded) == ["DEV-03"] and reason in excluded["DEV-03"], excluded
        assert (plan.memfault_devices, plan.memfault_answered) == (10, 10)
        await start(client, "r-iso", plan)
        state = await completed(client, "r-iso")
        readings = controller.metrics_readings()
    assert state.counts.succeeded == 9 and state.counts.failed == 0
    assert readings.memfault_unanswered_by_reason.get(reason, 0) >= 1
    assert not devices.device("DEV-03").boots
    assert all(devices.device(s).running_version == "1.1.0" for s in serials if s != "DEV-03")


async def test_an_outage_pauses_dispatch_and_it_resumes_with_no_failed_device(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Memfault down at dispatch: the rollout says so and waits; back up, every device updates."""
    serials = [f"DEV-{i:02d}" for i in range(4)]
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as devices,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        gateways_for(broker, devices, tmp_path, {"gw-0": serials}),
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0")
        await wait_until(lambda: registry_has(controller, 4))
        plan = await create(client, "r-out", one_wave())
        assert not plan.excluded
        view = controller.coordinator.correlation
        view.settings = replace(view.settings, dispatch_max_age_s=0.0)  # every dispatch asks again
        cloud.faults.configure(error_rate=1.0)
        await start(client, "r-out", plan)
        paused = await latest(
            client, TopicKind.ROLLOUT_STATE, "r-out", lambda s: "memfault unavailable" in s.paused_reason
        )
        assert paused.status is RolloutStatus.RUNNING
        assert (paused.counts.in_flight, paused.counts.succeeded, paused.counts.failed) == (0, 0, 0)
        cloud.faults.reset()
        state = await completed(client, "r-out")
    assert state.counts.succeeded == 4
    assert (state.counts.failed, state.counts.rejected, state.counts.canceled) == (0, 0, 0)
    assert state.paused_reason == ""
    assert all(devices.device(s).running_version == "1.1.0" for s in serials)


async def test_a_delta_goes_to_the_device_that_applies_it_and_the_full_image_to_the_other(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Both devices run the From version; the delta-capable one installs the patch, the other the image."""
    full, patch = firmware_image("1.1.0", 24_000), firmware_image("1.1.0", 12_000)
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["DELTA", "FULL"]) as devices,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        gateways_for(broker, devices, tmp_path, {"gw-d": ["DELTA"], "gw-f": ["FULL"]}, frozenset({"gw-d"})),
        operator_client(broker) as client,
    ):
        cloud.add_project(PROJECT_KEY)
        cloud.add_release(
            PROJECT_KEY,
            "1.1.0",
            {HARDWARE: full},
            delta_bytes_by_hardware_and_base={(HARDWARE, "1.0.0"): patch},
        )
        cloud.activate(PROJECT_KEY, "1.1.0")
        await wait_until(lambda: registry_has(controller, 2))
        plan = await create(client, "r-delta", one_wave())
        await start(client, "r-delta", plan)
        state = await completed(client, "r-delta")
    assert state.counts.succeeded == 2
    assert active_hash(devices, "DELTA") == inspect_image(patch).image_hash
    assert active_hash(devices, "FULL") == inspect_image(full).image_hash


async def test_a_must_pass_through_chain_takes_a_device_through_two_hops(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """1.0.0 -> 1.5.0 (must pass through) -> 2.0.0 within one rollout, one job per hop."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["HOP"]) as devices,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        gateways_for(broker, devices, tmp_path, {"gw-0": ["HOP"]}),
        operator_client(broker) as client,
    ):
        cloud.add_project(PROJECT_KEY)
        cloud.add_release(
            PROJECT_KEY, "1.5.0", {HARDWARE: firmware_image("1.5.0", 20_000)}, must_pass_through=True
        )
        cloud.activate(PROJECT_KEY, "1.5.0")
        publish_release(cloud, "2.0.0")
        await wait_until(lambda: registry_has(controller, 1))
        plan = await create(client, "r-hop", one_wave("2.0.0"))
        assert [d.device_serial for d in plan.waves[0].devices] == ["HOP"]
        await start(client, "r-hop", plan)
        state = await completed(client, "r-hop")
    assert state.counts.succeeded == 1
    device = devices.device("HOP")
    assert device.running_version == "2.0.0"
    swapped = [boot.running_version for boot in device.boots if boot.outcome is BootOutcome.SWAPPED]
    assert swapped == ["1.5.0", "2.0.0"]


async def test_a_release_without_sha256_installs_with_md5_verified(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Memfault gives md5 and sha1 only: the command carries them and the device updates."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["MD5"]) as devices,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        gateways_for(broker, devices, tmp_path, {"gw-0": ["MD5"]}),
        operator_client(broker) as client,
        operator_client(broker) as spy,
    ):
        command_topic = TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-0")
        await spy.subscribe(command_topic, qos=1)
        cloud.add_project(PROJECT_KEY)
        cloud.add_release(
            PROJECT_KEY, "1.1.0", {HARDWARE: firmware_image("1.1.0", 24_000)}, without_sha256=True
        )
        cloud.activate(PROJECT_KEY, "1.1.0")
        await wait_until(lambda: registry_has(controller, 1))
        plan = await create(client, "r-md5", one_wave())
        await start(client, "r-md5", plan)
        state = await completed(client, "r-md5")
        command = await first_ota_command(spy, command_topic)
    assert state.counts.succeeded == 1
    assert devices.device("MD5").running_version == "1.1.0"
    artifact = command.artifact
    assert (artifact.sha256, len(artifact.md5 or ""), len(artifact.sha1 or "")) == (None, 32, 40)


async def test_a_slow_memfault_never_holds_the_scheduler_step(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Memfault 20 s slow: operator requests are answered meanwhile, and the rollout ends when it answers."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["SLOW"]) as devices,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        gateways_for(broker, devices, tmp_path, {"gw-0": ["SLOW"]}),
        operator_client(broker) as client,
    ):
        publish_release(cloud, "1.1.0")
        await wait_until(lambda: registry_has(controller, 1))
        plan = await create(client, "r-slow", one_wave())
        view = controller.coordinator.correlation
        view.settings = replace(view.settings, dispatch_max_age_s=0.0)
        cloud.faults.configure(latency_ms=20_000)
        await start(client, "r-slow", plan)
        # The device was due and now waits for its fresh answer (asked beside the step).
        await latest(client, TopicKind.ROLLOUT_STATE, "r-slow", lambda s: s.counts.waiting == 1)
        # The old dispatch awaited Memfault inside the step: this reply would have come after 20 s.
        for request in (
            PauseRollout(request_id=RequestId("slow-p"), rollout_id=RolloutId("r-slow")),
            ResumeRollout(request_id=RequestId("slow-r"), rollout_id=RolloutId("r-slow")),
        ):
            reply = await send_request(client, TREE, request, 10)
            assert reply is not None and reply.status is ReplyStatus.ACCEPTED, reply
        cloud.faults.configure(latency_ms=0)
        state = await completed(client, "r-slow")
    assert state.counts.succeeded == 1
    assert devices.device("SLOW").running_version == "1.1.0"


async def first_ota_command(spy: aiomqtt.Client, topic: str) -> OtaCommand:
    """The first OTA command seen on a gateway's command topic (rebirth requests pass by)."""
    async with asyncio.timeout(15):
        async for message in spy.messages:
            if isinstance(message.payload, bytes):
                command = channels.decode(TopicKind.GATEWAY_COMMAND, message.payload, topic)
                if isinstance(command, OtaCommand):
                    return command
    raise AssertionError("no OTA command")


async def test_a_reported_version_change_is_answered_without_waiting_for_a_fleet_scan(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Ingest tells the standing view of each batch's devices: a new version is asked at once."""
    async with controller_heard_by_one_gateway(broker, tmp_path) as (cloud, controller, gateway):
        publish_release(cloud, "1.1.0")
        view = controller.coordinator.correlation
        # The fleet scan is the slow safety net; it cannot be what answers within this test.
        assert view.settings.scan_s >= 10 * WAIT_S

        def answered_on(version: str) -> bool:
            standing = view.answer("D1")
            return standing is not None and standing.asked.current_version == version

        await gateway.hear("D1", PROJECT_KEY)
        await wait_until(lambda: asyncio.sleep(0, answered_on("1.0.0")))
        await gateway.hear("D1", PROJECT_KEY, version="1.1.0")
        await wait_until(lambda: asyncio.sleep(0, answered_on("1.1.0")))


async def test_a_release_activated_after_the_view_answered_is_planned_for_every_device(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Standing answers from before the release say "up to date": the plan asks again, includes all."""
    async with (
        controller_heard_by_one_gateway(broker, tmp_path) as (cloud, controller, gateway),
        operator_client(broker) as client,
    ):
        cloud.add_project(PROJECT_KEY)
        view = controller.coordinator.correlation
        for serial in ("D1", "D2"):
            await gateway.hear(serial, PROJECT_KEY)

        def answered() -> bool:
            return all(view.answer(serial) is not None for serial in ("D1", "D2"))

        await wait_until(lambda: asyncio.sleep(0, answered()))
        publish_release(cloud, "1.1.0")
        plan = await create(client, "r-late-release", one_wave())
    planned = {device.device_serial for wave in plan.waves for device in wave.devices}
    assert planned == {"D1", "D2"}, plan.excluded
    assert plan.excluded == []
