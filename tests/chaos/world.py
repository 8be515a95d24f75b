"""A whole system to break: broker, simulated devices, cloud emulator, an agent and a controller as processes.

The agent and the controller run as real `mcufleet` processes so a scenario can SIGKILL them; the
broker is the test's own mosquitto (crash, restart, SIGSTOP). Keepalives are short (5 s) so a
half-open link is noticed within a scenario. `ChaosWorld.finish` waits for the rollout to end and
checks the invariants (see `invariants.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import msgspec

from agent.settings import MqttConfig as AgentMqtt
from controller.settings import (
    ControllerSettings,
    MemfaultConfig,
    MetricsConfig,
    MqttConfig,
    SchedulerConfig,
    StoreConfig,
)
from controller.store.opening import open_store
from schemas import (
    FlowSpec,
    PhaseDeadlines,
    RetrySpec,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    TopicKind,
    WaveSpec,
)
from simulator.cloud import CloudEmulator
from simulator.device import FaultPlan, LinkProfile
from simulator.fleet import DeviceSpec, Fleet
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.harness.ports import free_tcp_port
from tests.integration.world import (
    FAST_FIRMWARE,
    HARDWARE,
    PROJECT_KEY,
    ControllerProbe,
    ProcessUnderTest,
    Release,
    agent_settings,
    controller_probe,
    create_and_start,
    latest,
    operator_client,
    publish_release,
    settings_document,
    wait_until,
)

ROLLOUT = "r-chaos"
TARGET = "1.1.0"
KEEPALIVE_S = 5
IMAGE_BYTES = 100_000
ROLLOUT_WAIT_S = 150.0
LINK = LinkProfile(
    name="medium", latency_s=0.001, bandwidth_bytes_per_s=100_000, buf_size_bytes=1024, buf_count=4
)
TERMINAL = {RolloutStatus.COMPLETED, RolloutStatus.ABORTED}


@dataclass
class ChaosWorld:
    """Handles on every component of a running scenario."""

    broker: MosquittoBroker
    devices: FleetServer
    cloud: CloudEmulator
    controller: ProcessUnderTest
    agent: ProcessUnderTest
    probe: ControllerProbe
    client: aiomqtt.Client
    release: Release
    store_url: str
    metrics_port: int
    serials: list[str]
    wall_minus_loop_s: float
    """Add to a simulator timestamp (loop time) to get wall-clock seconds."""
    agent_journal: Path
    """The agent's job journal: every command it accepted."""

    async def start_rollout(self) -> None:
        """Create and start one single-wave rollout over every device, as an operator does."""
        spec = RolloutSpec(
            software_type="app",
            target_version=TARGET,
            waves=[WaveSpec(percent=100)],
            flow=FlowSpec(max_in_flight=2, max_in_flight_per_gateway=2),
            retry=RetrySpec(max_attempts=4, backoff_s=1),
            deadlines=PhaseDeadlines(no_progress_s=15, job_total_s=60),
        )
        await create_and_start(self.client, ROLLOUT, spec)

    async def uploading(self, fraction: float = 0.2) -> None:
        """Wait until some device's upload is past `fraction` of the image."""
        threshold = fraction * len(self.release.image)
        await self.probe.wait_for(
            lambda: any(p.phase == "uploading" and p.bytes_done >= threshold for p in self.probe.progress),
            timeout_s=60,
        )

    async def finish(self) -> RolloutState:
        """The final retained state, once the rollout is over.

        It is read on a new connection: the broker may have been killed under the first one.
        """
        async with operator_client(self.broker) as client:
            state: RolloutState = await latest(
                client, TopicKind.ROLLOUT_STATE, ROLLOUT, lambda s: s.status in TERMINAL, ROLLOUT_WAIT_S
            )
        return state


def chaos_fleet(serials: list[str], faults: dict[str, FaultPlan]) -> Fleet:
    """Devices on a medium link with quick reboots; `faults` by serial."""
    return Fleet(
        tuple(
            DeviceSpec(
                serial,
                firmware=FAST_FIRMWARE,
                link=LINK,
                project_key=PROJECT_KEY,
                hardware_version=HARDWARE,
                faults=faults.get(serial, FaultPlan()),
            )
            for serial in serials
        )
    )


@contextlib.asynccontextmanager
async def chaos_world(
    broker: MosquittoBroker, tmp_path: Path, devices: int = 6, faults: dict[str, FaultPlan] | None = None
) -> AsyncIterator[ChaosWorld]:
    """Everything running, the registry filled; the rollout is not started yet."""
    serials = [f"DEV-{i}" for i in range(devices)]
    store_url = f"sqlite:///{tmp_path / 'controller.sqlite3'}"
    metrics_port = free_tcp_port()
    async with (
        CloudEmulator() as cloud,
        FleetServer(chaos_fleet(serials, faults or {}), base_host="127.0.0.1", port_per_device=True) as fleet,
        controller_probe(broker) as probe,
        operator_client(broker) as client,
    ):
        release = publish_release(cloud, TARGET, payload_size_bytes=IMAGE_BYTES)
        settings = ControllerSettings(
            controller_id="controller-1",
            mqtt=MqttConfig(host=broker.host, port=broker.port, username="", keepalive_s=KEEPALIVE_S),
            store=StoreConfig(url=store_url),
            memfault=MemfaultConfig(base_url=cloud.base_url, requests_per_s=1000.0),
            metrics=MetricsConfig(enabled=True, port=metrics_port),
            scheduler=SchedulerConfig(tick_interval_s=0.2, lease_ttl_s=3.0),
        )
        controller = ProcessUnderTest("controller", settings_document(settings), tmp_path / "controller")
        gateway = agent_settings("gw-0", broker, tmp_path / "gw-0", list(fleet.endpoints.values()))
        gateway = msgspec.structs.replace(
            gateway, mqtt=AgentMqtt(host=broker.host, port=broker.port, keepalive_s=KEEPALIVE_S)
        )
        agent = ProcessUnderTest("agent", settings_document(gateway), tmp_path / "agent")
        await controller.start()
        await agent.start()
        try:

            def registry_ready() -> bool:
                store = open_store(store_url)
                try:
                    return len(store.devices()) == devices and len(store.project_keys()) == devices
                finally:
                    store.db.close()

            await wait_until(lambda: asyncio.to_thread(registry_ready), timeout_s=30)
            yield ChaosWorld(
                broker=broker,
                devices=fleet,
                cloud=cloud,
                controller=controller,
                agent=agent,
                probe=probe,
                client=client,
                release=release,
                store_url=store_url,
                metrics_port=metrics_port,
                serials=serials,
                wall_minus_loop_s=time.time() - asyncio.get_running_loop().time(),
                agent_journal=tmp_path / "gw-0" / "journal.sqlite3",
            )
        finally:
            await agent.stop()
            await controller.stop()
