"""A small simulated world for end-to-end tests: devices, a Memfault emulator, a broker, agents.

`ControllerProbe` stands in for the controller where a test drives the agent directly: it publishes
commands exactly as the contract describes and collects results, progress and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import tomli_w
from prometheus_client import CollectorRegistry

from agent.factory import build_agent
from agent.link.device_link import DeviceLink, udp_link
from agent.service import AgentService
from agent.settings import (
    AgentSettings,
    DiscoveryConfig,
    DownloadConfig,
    JobsConfig,
    MetricsConfig,
    MqttConfig,
    UdpDevice,
)
from controller.factory import build_controller
from controller.operator_cli import read_plan, send_request
from controller.service import ControllerService
from controller.settings import (
    ControllerSettings,
    MemfaultConfig,
    OperatorAuthConfig,
    OperatorKey,
    OperatorRole,
    SchedulerConfig,
    StoreConfig,
)
from controller.settings import MetricsConfig as ControllerMetrics
from controller.settings import MqttConfig as ControllerMqtt
from schemas import (
    Artifact,
    CreateRollout,
    DeviceReport,
    DeviceSerial,
    JobId,
    JobProgress,
    JobResult,
    OtaCommand,
    ReplyStatus,
    RequestId,
    RolloutId,
    RolloutPlan,
    RolloutSpec,
    StartRollout,
    TopicKind,
    TopicTree,
    channels,
)
from service_runtime.mqtt import Inbound, MqttSession, MqttSettings, Outbound, Subscription, TlsSettings
from service_runtime.mqtt_metrics import MqttMetrics
from simulator.cloud import CloudEmulator
from simulator.device import FirmwareOptions
from simulator.fleet import DeviceSpec, Fleet, firmware_image
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker

TREE = TopicTree()
WAIT_S = 30.0
FAST_FIRMWARE = FirmwareOptions(reset_delay_s=0.01, boot_time_s=0.05, swap_time_s=0.05)
PROJECT_KEY = "project-key-1"
HARDWARE = "nrf52840dk"


def fleet_of(serials: list[str], *, version: str = "1.0.0") -> Fleet:
    """Devices on a fast loopback link with quick reboots."""
    return Fleet(
        tuple(
            DeviceSpec(
                s,
                image_version=version,
                firmware=FAST_FIRMWARE,
                project_key=PROJECT_KEY,
                hardware_version=HARDWARE,
            )
            for s in serials
        )
    )


def agent_settings(
    gateway_id: str,
    broker: MosquittoBroker,
    state_dir: Path,
    endpoints: list[tuple[str, int]],
    *,
    tls: TlsSettings | None = None,
) -> AgentSettings:
    """An agent config for the test world (downloads from loopback allowed, short timeouts)."""
    return AgentSettings(
        gateway_id=gateway_id,
        state_dir=str(state_dir),
        mqtt=MqttConfig(host=broker.host, port=broker.port, **_tls_fields(tls)),
        metrics=MetricsConfig(enabled=False),
        discovery=DiscoveryConfig(refresh_interval_s=60.0, retry_interval_s=0.5, smp_timeout_s=1.0),
        udp_devices=tuple(UdpDevice(host, port) for host, port in endpoints),
        jobs=JobsConfig(first_chunk_timeout_s=5.0, chunk_timeout_s=1.0, reboot_timeout_s=15.0),
        downloads=DownloadConfig(allowed_hosts=("127.0.0.1",), allow_http=True, allow_private_addresses=True),
    )


def _tls_fields(tls: TlsSettings | None) -> dict[str, Any]:
    """The `ca_file`, `cert_file` and `key_file` config fields of `tls` (none without TLS)."""
    if tls is None:
        return {}
    return {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file}


@contextlib.asynccontextmanager
async def running_agent(
    settings: AgentSettings, registry: CollectorRegistry | None = None
) -> AsyncIterator[AgentService]:
    """An AgentService running in this process until the block ends."""
    service = build_agent(settings, registry=registry or CollectorRegistry())
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.session.connected.wait(), WAIT_S)
        yield service
    finally:
        await service.stop()
        await asyncio.wait_for(task, WAIT_S)


@dataclass
class ControllerProbe:
    """Publishes commands like the controller and records what gateways say."""

    session: MqttSession
    results: dict[str, JobResult] = field(default_factory=dict)
    progress: list[JobProgress] = field(default_factory=list)
    reports: dict[str, DeviceReport] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, message: Inbound) -> None:
        payload = message.message
        if isinstance(payload, JobResult):
            self.results[payload.job_id] = payload
        elif isinstance(payload, JobProgress):
            self.progress.append(payload)
        elif isinstance(payload, DeviceReport):
            self.reports[payload.device_serial] = payload
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def send(self, gateway_id: str, command: object) -> None:
        topic = TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id=gateway_id)
        payload = command if isinstance(command, bytes) else channels.encode(command)  # type: ignore[arg-type]
        self.session.publish(Outbound(topic, payload, qos=1))


@contextlib.asynccontextmanager
async def controller_probe(broker: MosquittoBroker) -> AsyncIterator[ControllerProbe]:
    """A probe subscribed to every gateway's results, progress and reports."""
    holder: list[ControllerProbe] = []

    async def handle(message: Inbound) -> None:
        await holder[0].on_message(message)

    session = MqttSession(
        MqttSettings(broker.host, broker.port, "probe-controller", session_expiry_s=0),
        tree=TREE,
        subscriptions=[
            Subscription(TREE.filter(kind))
            for kind in (TopicKind.JOB_RESULT, TopicKind.JOB_PROGRESS, TopicKind.DEVICE_REPORT)
        ],
        handler=handle,
        metrics=MqttMetrics(CollectorRegistry()),
    )
    probe = ControllerProbe(session)
    holder.append(probe)
    task = asyncio.create_task(session.run())
    try:
        await asyncio.wait_for(session.connected.wait(), WAIT_S)
        yield probe
    finally:
        await session.stop()
        await asyncio.wait_for(task, WAIT_S)


@dataclass
class Release:
    """A release in the emulator and the command fields that point at it."""

    version: str
    image: bytes
    url: str

    @property
    def artifact(self) -> Artifact:
        import hashlib  # noqa: PLC0415 (local: only this property needs it)

        return Artifact(
            url=self.url, size_bytes=len(self.image), sha256=hashlib.sha256(self.image).hexdigest()
        )


def publish_release(cloud: CloudEmulator, version: str, payload_size_bytes: int = 24_000) -> Release:
    """Add and activate a release whose artifact is a real MCUboot image of `version`."""
    image = firmware_image(version, payload_size_bytes)
    with contextlib.suppress(Exception):
        cloud.add_project(PROJECT_KEY)
    release = cloud.add_release(PROJECT_KEY, version, {HARDWARE: image})
    cloud.activate(PROJECT_KEY, version)
    return Release(version, image, cloud.artifact_url(release.artifacts[0].id))


def ota_command(
    job_id: str,
    serial: str,
    release: Release,
    *,
    deadline_s: float = 120.0,
    artifact: Artifact | None = None,
    attempt: int = 1,
) -> OtaCommand:
    """A command as the controller would send it."""
    now = datetime.now(UTC)
    return OtaCommand(
        job_id=JobId(job_id),
        device_serial=DeviceSerial(serial),
        attempt=attempt,
        issued_at=now,
        deadline=now + timedelta(seconds=deadline_s),
        artifact=artifact or release.artifact,
        target_version=release.version,
    )


@contextlib.asynccontextmanager
async def simulated_devices(serials: list[str]) -> AsyncIterator[FleetServer]:
    """Devices running 1.0.0, each on its own loopback port."""
    async with FleetServer(fleet_of(serials), base_host="127.0.0.1", port_per_device=True) as server:
        yield server


def link_to(server: FleetServer, serial: str) -> DeviceLink:
    """A UDP link to one simulated device."""
    host, port = server.endpoints[serial]
    return udp_link(host, port, timeout_s=1.0)


@contextlib.asynccontextmanager
async def running_controller(
    broker: MosquittoBroker,
    cloud_url: str,
    store_url: str,
    controller_id: str = "controller-1",
    *,
    operator_keys: dict[str, str] | None = None,
    operator_auth: OperatorAuthConfig | None = None,
    tls: TlsSettings | None = None,
    registry: CollectorRegistry | None = None,
    allowed_project_keys: tuple[str, ...] = (),
    **scheduler: float,
) -> AsyncIterator[ControllerService]:
    """A ControllerService in this process, on its own store, talking to the cloud emulator.

    `operator_keys` (key id -> base64 public key) is shorthand for admin keys that speak for an
    operator named like the key; `operator_auth` configures identities, roles and skew in full.
    """
    if operator_keys:
        keys = {
            key_id: OperatorKey(public_key=public_key, operator=key_id, role=OperatorRole.ADMIN)
            for key_id, public_key in operator_keys.items()
        }
        operator_auth = OperatorAuthConfig(keys={**keys, **(operator_auth.keys if operator_auth else {})})
    settings = ControllerSettings(
        controller_id=controller_id,
        mqtt=ControllerMqtt(host=broker.host, port=broker.port, username="", **_tls_fields(tls)),
        store=StoreConfig(url=store_url),
        memfault=MemfaultConfig(
            base_url=cloud_url, requests_per_s=1000.0, allowed_project_keys=allowed_project_keys
        ),
        metrics=ControllerMetrics(enabled=False),
        scheduler=SchedulerConfig(**{"tick_interval_s": 0.2, "lease_ttl_s": 5.0, **scheduler}),
        operator_auth=operator_auth or OperatorAuthConfig(),
    )
    async with build_controller(settings, registry=registry) as service:
        task = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.session.connected.wait(), WAIT_S)
            yield service
        finally:
            await service.stop()
            await asyncio.wait_for(task, WAIT_S)


@contextlib.asynccontextmanager
async def operator_client(broker: MosquittoBroker) -> AsyncIterator[aiomqtt.Client]:
    """An operator's MQTT connection."""
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, identifier=f"op-{uuid.uuid4().hex[:6]}"
    ) as client:
        yield client


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_S, poll_s: float = 0.1
) -> None:
    """Poll an async condition (for state that lives in a database, where nothing can be awaited)."""
    async with asyncio.timeout(timeout_s):
        while not await predicate():  # noqa: ASYNC110 (database state offers nothing to await)
            await asyncio.sleep(poll_s)


ROLLOUT_WAIT_S = 120.0
"""How long a rollout test waits for a retained rollout topic to reach a state."""


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


def to_toml(document: Mapping[str, object]) -> str:
    """A config document as TOML (tomli-w); None values are left out, as TOML has no null."""
    return tomli_w.dumps(_without_none(document))


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [_without_none(item) for item in value]
    return value


class ProcessUnderTest:
    """`mcufleet <command> --config <file>` as a real process that a test can SIGKILL and restart."""

    def __init__(self, command: str, config: dict[str, object], workdir: Path) -> None:
        self.command = command
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{command}.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = workdir / f"{command}.log"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process (its output goes to the log file)."""
        script = Path(sys.executable).with_name("mcufleet")
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                str(script), self.command, "--config", str(self.config_path), stdout=log, stderr=log
            )

    async def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup, like a power cut."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._process = None

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but does nothing (a hung or descheduled host)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    async def stop(self) -> int | None:
        """SIGTERM and wait (the graceful path).

        Raises:
            AssertionError: the process ignored SIGTERM for WAIT_S (it is then killed, never left behind).
        """
        if self._process is None:
            return None
        process, self._process = self._process, None
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), WAIT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"{self.command} did not stop within {WAIT_S} s of SIGTERM") from None

    def log(self) -> str:
        """What the process printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def settings_document(settings: msgspec.Struct) -> dict[str, object]:
    """A settings Struct as a plain document (for `to_toml`)."""
    document = msgspec.to_builtins(settings)
    assert isinstance(document, dict)
    return document
