"""`mcufleet demo`: the whole system on one machine, driven as an operator would drive it.

It starts a throwaway mosquitto, the Memfault cloud emulator with a new release, a simulated fleet
(BLE-like links, overlapping gateway coverage, a few faulty devices), one agent per gateway and the
controller on SQLite; then creates, previews and starts a three-wave rollout over MQTT, shows live
progress, and ends with a summary and the `/metrics` addresses. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from agent.factory import build_agent
from agent.service import AgentService
from agent.settings import AgentSettings, DiscoveryConfig, DownloadConfig, JobsConfig, LogConfig, UdpDevice
from agent.settings import MetricsConfig as AgentMetrics
from agent.settings import MqttConfig as AgentMqtt
from controller.factory import build_controller
from controller.operator_cli import read_plan, send_request
from controller.service import ControllerService
from controller.settings import ControllerSettings, MemfaultConfig, SchedulerConfig, StoreConfig
from controller.settings import MetricsConfig as ControllerMetrics
from controller.settings import MqttConfig as ControllerMqtt
from mcufleet.errors import DemoError, McufleetError
from mcufleet.local_broker import MosquittoBroker, free_port
from schemas import (
    CreateRollout,
    FlowSpec,
    GateSpec,
    JobResult,
    ReplyStatus,
    RequestId,
    RetrySpec,
    RolloutId,
    RolloutPlan,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    StartRollout,
    TopicKind,
    TopicTree,
    WaveSpec,
    channels,
)
from service_runtime.logs import configure_logging
from service_runtime.metrics_http import MetricsServer
from simulator.cloud import CloudEmulator
from simulator.device import FaultPlan, FirmwareOptions, LinkProfile
from simulator.fleet import DeviceSpec, Fleet, firmware_image
from simulator.server import FleetServer

PROJECT_KEY = "demo-project-key"
HARDWARE = ("nrf52840dk", "nrf5340dk", "nrf54l15dk")
TARGET = "1.1.0"
IMAGE_PAYLOAD_BYTES = 24_000
BLE_LIKE = LinkProfile(
    name="ble", latency_s=0.015, bandwidth_bytes_per_s=40_000, buf_size_bytes=512, buf_count=4
)
LOSSY_BLE = LinkProfile(
    name="ble-lossy", latency_s=0.02, bandwidth_bytes_per_s=30_000, loss_rate=0.02, buf_size_bytes=512
)
FIRMWARE = FirmwareOptions(reset_delay_s=0.1, boot_time_s=0.3, swap_time_s=0.5)
TERMINAL = {RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.PAUSED}


@dataclass
class Observed:
    """What the demo saw on the bus."""

    results: dict[str, JobResult] = field(default_factory=dict)
    gateways_by_device: dict[str, set[str]] = field(default_factory=dict)
    state: RolloutState | None = None


def build_fleet(devices: int) -> Fleet:
    """Mixed hardware on BLE-like links; two bad builds and a few lossy links among them.

    Bad builds appear only in fleets of 30 or more, so a small demo's one-device canary is not one.
    """
    specs = []
    for index in range(devices):
        faulty = devices >= 30 and index % 29 == 7
        specs.append(
            DeviceSpec(
                f"DEMO-{index:03d}",
                hardware_version=HARDWARE[index % len(HARDWARE)],
                image_version="1.0.0",
                project_key=PROJECT_KEY,
                link=LOSSY_BLE if index % 17 == 5 else BLE_LIKE,
                faults=FaultPlan(bad_build_versions=frozenset({TARGET})) if faulty else FaultPlan(),
                firmware=FIRMWARE,
                image_payload_size_bytes=IMAGE_PAYLOAD_BYTES,
            )
        )
    return Fleet(tuple(specs))


def rollout_spec() -> RolloutSpec:
    """Three waves (canary, half, all), a failure gate, and radio-friendly flow limits."""
    return RolloutSpec(
        software_type="app",
        target_version=TARGET,
        waves=[WaveSpec(percent=10, soak_s=2), WaveSpec(percent=50, soak_s=2), WaveSpec(percent=100)],
        gates=GateSpec(success_threshold=0.8, failure_threshold=0.3, failure_min_sample=5),
        flow=FlowSpec(max_in_flight=16, max_in_flight_per_gateway=2),
        retry=RetrySpec(max_attempts=3, backoff_s=3.0),
    )


def run(argv: Sequence[str]) -> int:
    """Entry point of `mcufleet demo`."""
    parser = argparse.ArgumentParser(prog="mcufleet demo", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=170.0, help="seconds the rollout may take")
    args = parser.parse_args(list(argv))
    if args.devices < 1 or args.gateways < 1:
        parser.error("--devices and --gateways must be at least 1")
    configure_logging(os.environ.get("MCUFLEET_DEMO_LOG", "warning"), json_lines=False)
    console = Console()
    try:
        return asyncio.run(demo(args.devices, args.gateways, args.timeout, console))
    except KeyboardInterrupt:
        console.print("[yellow]stopped[/yellow]")
        return 130
    except McufleetError as error:
        console.print(f"[red]{error}[/red]")
        return 1


async def demo(devices: int, gateways: int, timeout_s: float, console: Console) -> int:
    """Run the demo; 0 when the rollout completed."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcufleet-demo-") as scratch:
        workdir = Path(scratch)
        broker = MosquittoBroker(workdir / "broker", autosave_interval_s=5)
        broker.start()
        try:
            async with world(broker, workdir, devices, gateways, console) as (controller, endpoints):
                return await operate(
                    broker, controller, endpoints, DemoRun(devices, timeout_s, started, console)
                )
        finally:
            broker.stop()


@contextlib.asynccontextmanager
async def world(
    broker: MosquittoBroker, workdir: Path, devices: int, gateways: int, console: Console
) -> AsyncIterator[tuple[ControllerService, list[str]]]:
    """Cloud, devices, agents and controller, all stopped when the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(CloudEmulator())
        cloud.add_project(PROJECT_KEY)
        cloud.add_release(
            PROJECT_KEY, TARGET, {hw: firmware_image(TARGET, IMAGE_PAYLOAD_BYTES) for hw in HARDWARE}
        )
        cloud.activate(PROJECT_KEY, TARGET)
        fleet = await stack.enter_async_context(
            FleetServer(build_fleet(devices), base_host="127.0.0.1", port_per_device=True)
        )
        endpoints: list[str] = []
        serials = sorted(fleet.endpoints)
        for gateway in range(gateways):
            heard = [
                fleet.endpoints[s]
                for i, s in enumerate(serials)
                if gateway in (i % gateways, (i + 1) % gateways)
            ]
            port = free_port()
            settings = AgentSettings(
                gateway_id=f"gw-{gateway}",
                state_dir=str(workdir / f"gw-{gateway}"),
                mqtt=AgentMqtt(host=broker.host, port=broker.port),
                metrics=AgentMetrics(port=port),
                log=LogConfig(level="warning", json=False),
                discovery=DiscoveryConfig(refresh_interval_s=120.0, retry_interval_s=1.0, smp_timeout_s=1.5),
                udp_devices=tuple(UdpDevice(host, device_port) for host, device_port in heard),
                jobs=JobsConfig(concurrency=2, chunk_timeout_s=2.0),
                downloads=DownloadConfig(
                    allowed_hosts=("127.0.0.1",), allow_http=True, allow_private_addresses=True
                ),
            )
            await stack.enter_async_context(_agent(settings))
            endpoints.append(f"http://127.0.0.1:{port}/metrics  (agent gw-{gateway})")
        controller_port = free_port()
        controller = await stack.enter_async_context(
            _controller(broker, cloud.base_url, workdir, controller_port)
        )
        endpoints.insert(0, f"http://127.0.0.1:{controller_port}/metrics  (controller)")
        console.print(
            f"[bold]mcufleet demo[/bold]: broker {broker.host}:{broker.port}, "
            f"Memfault emulator {cloud.base_url}, "
            f"{devices} devices, {gateways} gateways"
        )
        yield controller, endpoints


@contextlib.asynccontextmanager
async def _agent(settings: AgentSettings) -> AsyncIterator[AgentService]:
    registry = CollectorRegistry()
    service = build_agent(settings, registry=registry)
    metrics = MetricsServer(registry, "127.0.0.1", settings.metrics.port)
    metrics.start()
    task = asyncio.create_task(service.run(), name=f"agent-{settings.gateway_id}")
    try:
        yield service
    finally:
        await service.stop()
        await task
        metrics.stop()


@contextlib.asynccontextmanager
async def _controller(
    broker: MosquittoBroker, cloud_url: str, workdir: Path, port: int
) -> AsyncIterator[ControllerService]:
    settings = ControllerSettings(
        controller_id="controller-1",
        mqtt=ControllerMqtt(host=broker.host, port=broker.port, username=""),
        store=StoreConfig(url=f"sqlite:///{workdir / 'controller.sqlite3'}"),
        memfault=MemfaultConfig(base_url=cloud_url, requests_per_s=500.0),
        metrics=ControllerMetrics(port=port),
        scheduler=SchedulerConfig(tick_interval_s=0.25, throughput_bytes_per_s=30_000.0, reboot_s=3.0),
    )
    registry = CollectorRegistry()
    async with build_controller(settings, registry=registry) as service:
        metrics = MetricsServer(registry, "127.0.0.1", port)
        metrics.start()
        task = asyncio.create_task(service.run(), name="controller")
        try:
            yield service
        finally:
            await service.stop()
            await task
            metrics.stop()


@dataclass(frozen=True)
class DemoRun:
    """One demo's parameters."""

    devices: int
    timeout_s: float
    started: float
    console: Console


async def operate(
    broker: MosquittoBroker, controller: ControllerService, endpoints: list[str], run: DemoRun
) -> int:
    """Wait for the inventory, then create, preview, start and watch the rollout; print the summary."""
    devices, timeout_s, started, console = run.devices, run.timeout_s, run.started, run.console
    tree = TopicTree()
    with console.status("discovering devices through the gateways..."):
        while True:
            # Reports (the registry) and credentials (the keys) travel separately: wait for both,
            # or the plan would leave out devices whose reports are still being written.
            keys = len(await controller.executor.call(controller.store.project_keys))
            known = len(await controller.executor.call(controller.store.devices))
            if min(keys, known) >= devices:
                break
            await asyncio.sleep(0.2)
    console.print(f"controller knows {devices} devices and their Memfault project keys")
    rollout_id = f"demo-{uuid.uuid4().hex[:6]}"
    observed = Observed()
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier=f"demo-operator-{rollout_id}",
    ) as client:
        await client.subscribe(tree.filter(TopicKind.JOB_RESULT), qos=1)
        create = CreateRollout(
            request_id=RequestId(f"{rollout_id}-c"),
            operator="demo",
            rollout_id=RolloutId(rollout_id),
            spec=rollout_spec(),
        )
        reply = await send_request(client, tree, create, 15)
        if reply is None or reply.status is not ReplyStatus.ACCEPTED:
            console.print(f"[red]create refused: {reply}[/red]")
            return 1
        plan = await read_plan(client, tree, rollout_id, 60.0)
        if plan is None:
            console.print("[red]no plan published[/red]")
            return 1
        console.print(
            f"plan {plan.plan_id}: waves {[len(w.devices) for w in plan.waves]}, "
            f"{len(plan.excluded)} excluded, "
            f"estimated {plan.estimated_duration_s:.0f} s"
        )
        start = StartRollout(
            request_id=RequestId(f"{rollout_id}-s"),
            operator="demo",
            rollout_id=RolloutId(rollout_id),
            plan_id=plan.plan_id,
        )
        reply = await send_request(client, tree, start, 15)
        if reply is None or reply.status is not ReplyStatus.ACCEPTED:
            console.print(f"[red]start refused: {reply}[/red]")
            return 1
        rollout_started = time.monotonic()
        await client.subscribe(tree.topic(TopicKind.ROLLOUT_STATE, rollout_id=rollout_id), qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await _watch(client, tree, rollout_id, observed, console)
    elapsed = time.monotonic() - rollout_started
    _summary(observed, plan, elapsed, time.monotonic() - started, endpoints, console)
    return 0 if observed.state is not None and observed.state.status is RolloutStatus.COMPLETED else 1


async def _retained(client: aiomqtt.Client, topic: str, kind: TopicKind) -> object:
    await client.subscribe(topic, qos=1)
    async for message in client.messages:
        if message.topic.value == topic and isinstance(message.payload, bytes) and message.payload:
            await client.unsubscribe(topic)
            return channels.decode(kind, message.payload, topic)
    raise DemoError("the broker connection ended")


async def _watch(
    client: aiomqtt.Client, tree: TopicTree, rollout_id: str, observed: Observed, console: Console
) -> None:
    state_topic = tree.topic(TopicKind.ROLLOUT_STATE, rollout_id=rollout_id)
    columns = (
        TextColumn("{task.description:>8}"),
        BarColumn(),
        TextColumn("{task.completed:>3}/{task.total:<3} {task.fields[detail]}"),
    )
    tasks: dict[int, TaskID] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        async for message in client.messages:
            if not isinstance(message.payload, bytes) or not message.payload:
                continue
            topic = message.topic.value
            if topic == state_topic:
                state = channels.decode_as(TopicKind.ROLLOUT_STATE, message.payload, RolloutState)
                observed.state = state
                for wave in state.waves:
                    counts = wave.counts
                    done = (
                        counts.succeeded
                        + counts.failed
                        + counts.rejected
                        + counts.reverted
                        + counts.timed_out
                    )
                    done += counts.canceled + counts.unreachable
                    failed = done - counts.succeeded
                    detail = f"ok {counts.succeeded}  failed {failed}  in flight {counts.in_flight}"
                    if wave.index not in tasks:
                        tasks[wave.index] = progress.add_task(
                            f"wave {wave.index + 1}", total=wave.size, detail=""
                        )
                    progress.update(tasks[wave.index], completed=done, detail=detail)
                if state.status in TERMINAL:
                    return
            elif "/job/" in topic:
                result = channels.decode_as(TopicKind.JOB_RESULT, message.payload, JobResult)
                observed.results[result.job_id] = result
                observed.gateways_by_device.setdefault(result.device_serial, set()).add(result.gateway_id)


def gate_table(state: RolloutState) -> Table:
    """Each wave's gate verdict with the numbers behind it (docs/gates.md), to check by hand."""
    table = Table(title="wave gates")
    columns = ("wave", "verdict", "decided", "succeeded", "failed", "not counted", "failure rate", "bound")
    for column in columns:
        table.add_column(column, justify="right")
    for decision in state.gate_decisions:
        table.add_row(
            str(decision.wave),
            decision.verdict.value,
            str(decision.decided),
            str(decision.succeeded),
            str(decision.failed),
            str(decision.not_counted),
            f"{decision.failure_rate:.2f}",
            f"{decision.failure_lower_bound:.2f}",
        )
    return table


def _summary(  # noqa: PLR0917 (a report of six facts)
    observed: Observed,
    plan: RolloutPlan,
    elapsed_s: float,
    total_s: float,
    endpoints: list[str],
    console: Console,
) -> None:
    state = observed.state
    latest: dict[str, JobResult] = {}
    for result in observed.results.values():
        latest[result.device_serial] = result
    failures: dict[str, int] = {}
    for result in latest.values():
        if result.outcome != "succeeded":
            failures[result.reason] = failures.get(result.reason, 0) + 1
    updated = sum(1 for r in latest.values() if r.outcome == "succeeded")
    rerouted = sum(1 for gateways in observed.gateways_by_device.values() if len(gateways) > 1)
    image_bytes = plan.image_size_bytes or IMAGE_PAYLOAD_BYTES
    table = Table(title=f"rollout {plan.rollout_id}: {state.status if state else 'unknown'}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("devices updated", str(updated))
    for reason, count in sorted(failures.items()):
        table.add_row(f"failed: {reason}", str(count))
    table.add_row("rerouted through another gateway", str(rerouted))
    table.add_row("rollout time", f"{elapsed_s:.1f} s")
    table.add_row("demo time (set-up included)", f"{total_s:.1f} s")
    table.add_row("firmware throughput", f"{updated * image_bytes / max(elapsed_s, 0.001) / 1000:.1f} kB/s")
    if state is not None and state.paused_reason:
        table.add_row("paused because", state.paused_reason)
    console.print(table)
    if state is not None and state.gate_decisions:
        console.print(gate_table(state))
    console.print("metrics endpoints (while the demo runs):")
    for endpoint in endpoints:
        console.print(f"  {endpoint}")
