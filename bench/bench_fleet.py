"""Fleet makespan: 300 devices over 10 gateways on the BLE-like link, against its lower bound.

The whole system runs as it would in the field, each part in its own process: mosquitto, the
simulated devices (one `FleetServer` in a child process, every device with the upload bench's
BLE-like link: `buf_size` 512, `buf_count` 4, 15 ms one-way latency, 40,000 bytes/s each way, and
the simulator's default reset, swap and boot times), ten `mcufleet agent` processes each hearing
its own 30 devices (four jobs and two uploads at a time), and `mcufleet controller` on SQLite. This process
runs the Memfault cloud emulator and acts as the operator.

1. A single-device rollout (serial allow-list: `SOLO`, heard by gw-0) measures the time one
   device takes end to end through the system: `fleet.single_device_s`, from the start request
   being accepted to the device's succeeded result.
2. A single-wave rollout over the other 300 devices (four jobs per gateway, 40 in all) measures
   `fleet.makespan_s`, from the start being accepted to the last succeeded result.

Lower bound: every image byte must cross some gateway's radio, and a gateway moves at most
`upload slots x link capacity` (the capacity of `bench_upload.link_capacity`), so the uploads take
at least total bytes / (sum of gateway capacities); after the last upload one device still needs
its reboot and verify cycle, taken from the single-device run as its time minus its own upload
time at link capacity. `fleet.makespan_vs_lower_bound` (target <= 1.25) is makespan over that bound;
`fleet.speedup_vs_sequential` is 300 x `single_device_s` over the makespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import AsyncIterator
from multiprocessing.synchronize import Event as StopEvent
from pathlib import Path
from typing import Final

from agent.settings import (
    AgentSettings,
    DiscoveryConfig,
    DownloadConfig,
    JobsConfig,
    LogConfig,
    UdpDevice,
)
from agent.settings import MetricsConfig as AgentMetrics
from agent.settings import MqttConfig as AgentMqtt
from bench.bench_upload import LINK, link_capacity
from controller.settings import (
    ControllerSettings,
    MemfaultConfig,
    MetricsConfig,
    MqttConfig,
    SchedulerConfig,
    StoreConfig,
)
from controller.settings import LogConfig as ControllerLog
from controller.store.opening import open_store
from schemas import FlowSpec, JobOutcome, RolloutSpec, Selector, WaveSpec
from simulator.cloud import CloudEmulator
from simulator.fleet import DeviceSpec, Fleet
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.integration.test_rollout_e2e import create_and_start
from tests.integration.world import (
    HARDWARE,
    PROJECT_KEY,
    ControllerProbe,
    ProcessUnderTest,
    controller_probe,
    operator_client,
    publish_release,
    settings_document,
)

GATEWAYS: Final = 10
DEVICES_PER_GATEWAY: Final = 30
UPLOAD_SLOTS: Final = 2
"""Uploads at a time per gateway: the radio's share (the agent's `jobs.upload_slots`)."""
JOBS_PER_GATEWAY: Final = 4
"""Jobs at a time per gateway (the agent's `jobs.concurrency` and the rollout's per-gateway cap):
while two devices upload, two more download, reboot or confirm."""
PAYLOAD_BYTES: Final = 128 * 1024
TARGET: Final = "1.1.0"
SOLO: Final = "SOLO"
WAIT_S: Final = 600.0


def _serials() -> dict[str, list[str]]:
    """Device serials by gateway; gw-0 also hears SOLO."""
    heard = {f"gw-{g}": [f"D{g:02d}-{i:02d}" for i in range(DEVICES_PER_GATEWAY)] for g in range(GATEWAYS)}
    heard["gw-0"].append(SOLO)
    return heard


def _serve_devices(serials: list[str], endpoints: multiprocessing.Queue[object], stop: StopEvent) -> None:
    """The simulated devices, in their own process, until `stop` is set."""

    async def serve() -> None:
        fleet = Fleet(
            tuple(
                DeviceSpec(serial, link=LINK, project_key=PROJECT_KEY, hardware_version=HARDWARE)
                for serial in serials
            )
        )
        async with FleetServer(fleet, base_host="127.0.0.1", port_per_device=True) as server:
            endpoints.put(dict(server.endpoints))
            while not stop.is_set():  # noqa: ASYNC110 (the stop signal comes from another process)
                await asyncio.sleep(0.2)

    asyncio.run(serve())


@contextlib.asynccontextmanager
async def _processes(workdir: Path, broker: MosquittoBroker, cloud_url: str) -> AsyncIterator[str]:
    """Devices, agents and controller running; yields the store URL once the registry is full."""
    heard = _serials()
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[object] = context.Queue()
    stop = context.Event()
    simulator = context.Process(
        target=_serve_devices, args=([s for group in heard.values() for s in group], queue, stop)
    )
    simulator.start()
    processes: list[ProcessUnderTest] = []
    try:
        endpoints = await asyncio.to_thread(queue.get, True, 120)
        assert isinstance(endpoints, dict)
        for gateway, serials in heard.items():
            settings = AgentSettings(
                gateway_id=gateway,
                state_dir=str(workdir / gateway),
                mqtt=AgentMqtt(host=broker.host, port=broker.port),
                metrics=AgentMetrics(enabled=False),
                log=LogConfig(level="warning"),
                discovery=DiscoveryConfig(refresh_interval_s=600.0, retry_interval_s=1.0, smp_timeout_s=2.0),
                udp_devices=tuple(UdpDevice(*endpoints[serial]) for serial in serials),
                jobs=JobsConfig(concurrency=JOBS_PER_GATEWAY, upload_slots=UPLOAD_SLOTS),
                downloads=DownloadConfig(
                    allowed_hosts=("127.0.0.1",), allow_http=True, allow_private_addresses=True
                ),
            )
            processes.append(ProcessUnderTest("agent", settings_document(settings), workdir / gateway))
        store_url = f"sqlite:///{workdir / 'controller.sqlite3'}"
        controller = ControllerSettings(
            controller_id="controller-1",
            mqtt=MqttConfig(host=broker.host, port=broker.port, username=""),
            store=StoreConfig(url=store_url),
            memfault=MemfaultConfig(base_url=cloud_url, requests_per_s=1000.0),
            metrics=MetricsConfig(enabled=False),
            log=ControllerLog(level="warning"),
            scheduler=SchedulerConfig(tick_interval_s=0.2),
        )
        processes.append(
            ProcessUnderTest("controller", settings_document(controller), workdir / "controller")
        )
        for process in processes:
            await process.start()
        expected = sum(len(serials) for serials in heard.values())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            store = open_store(store_url)
            try:
                if len(store.devices()) == expected and len(store.project_keys()) == expected:
                    break
            finally:
                store.db.close()
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("the registry never held every device")
        yield store_url
    finally:
        for process in processes:
            with contextlib.suppress(Exception):
                await process.stop()
        stop.set()
        simulator.join(30)
        if simulator.is_alive():
            simulator.kill()


async def _until_succeeded(probe: ControllerProbe, serials: set[str]) -> float:
    """Wait until every serial has a succeeded result; the monotonic time it happened."""

    def done() -> bool:
        succeeded = {r.device_serial for r in probe.results.values() if r.outcome is JobOutcome.SUCCEEDED}
        return serials <= succeeded

    await probe.wait_for(done, timeout_s=WAIT_S)
    return time.monotonic()


async def _measure(workdir: Path) -> dict[str, float]:
    broker = MosquittoBroker(workdir / "broker", extra_config="max_queued_messages 10000\n")
    broker.start()
    try:
        async with CloudEmulator() as cloud:
            release = publish_release(cloud, TARGET, payload_size_bytes=PAYLOAD_BYTES)
            async with (
                _processes(workdir, broker, cloud.base_url),
                controller_probe(broker) as probe,
                operator_client(broker) as client,
            ):
                solo = RolloutSpec(
                    software_type="app",
                    target_version=TARGET,
                    selector=Selector(serial_allow=[SOLO]),  # type: ignore[list-item]
                )
                await create_and_start(client, "r-solo", solo)
                started = time.monotonic()
                single_s = await _until_succeeded(probe, {SOLO}) - started

                fleet = RolloutSpec(
                    software_type="app",
                    target_version=TARGET,
                    selector=Selector(serial_deny=[SOLO]),  # type: ignore[list-item]
                    waves=[WaveSpec(percent=100)],
                    flow=FlowSpec(
                        max_in_flight=GATEWAYS * JOBS_PER_GATEWAY, max_in_flight_per_gateway=JOBS_PER_GATEWAY
                    ),
                )
                serials = {s for group in _serials().values() for s in group} - {SOLO}
                await create_and_start(client, "r-fleet", fleet)
                started = time.monotonic()
                makespan_s = await _until_succeeded(probe, serials) - started
    finally:
        broker.crash()
    capacity = link_capacity(release.image, LINK).bytes_per_s
    image_bytes = len(release.image)
    upload_s = image_bytes / capacity
    lower_bound_s = len(serials) * image_bytes / (GATEWAYS * UPLOAD_SLOTS * capacity) + (single_s - upload_s)
    return {
        "fleet.devices_updated": float(len(serials)),
        "fleet.image_bytes": float(image_bytes),
        "fleet.single_device_s": round(single_s, 2),
        "fleet.makespan_s": round(makespan_s, 2),
        "fleet.lower_bound_s": round(lower_bound_s, 2),
        "fleet.makespan_vs_lower_bound": round(makespan_s / lower_bound_s, 3),
        "fleet.speedup_vs_sequential": round(len(serials) * single_s / makespan_s, 2),
    }


def run() -> dict[str, float]:
    """Every fleet figure, measured in this one run."""
    with tempfile.TemporaryDirectory() as scratch:
        return asyncio.run(_measure(Path(scratch)))
