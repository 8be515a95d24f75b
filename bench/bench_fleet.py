"""Fleet makespan: 300 devices over 10 gateways on the BLE-like link, against its lower bound.

The whole system runs as it would in the field, each part in its own process: mosquitto, the
simulated devices (one `FleetServer` in a child process, every device with the upload bench's
BLE-like link: `buf_size` 512, `buf_count` 4, 15 ms one-way latency, 40,000 bytes/s each way, and
the simulator's default reset, swap and boot times), ten `mcufleet agent` processes each hearing
its own 30 devices (four jobs and two uploads at a time), and `mcufleet controller` on SQLite
(0.2 s scheduler tick). This process runs the Memfault cloud emulator, serving one release whose
image is a real MCUboot image of 131,144 bytes (128 KiB payload, as in the upload bench), and acts
as the operator over MQTT.

1. A single-device rollout (serial allow-list: `SOLO`, heard by gw-0) measures the time one
   device takes end to end through the system: `fleet.single_device_s`, from the start request
   being accepted to its succeeded result reaching this process.
2. A single-wave rollout over the other 300 devices (`max_in_flight` 40, four per gateway) measures
   `fleet.makespan_s`, from the start being accepted to the last succeeded result reaching this
   process. Every one of the 300 must succeed, or the benchmark raises.

Lower bound (the issue's): every image byte must cross some gateway's radio, and a gateway moves
at most `upload slots x link capacity` (`bench_upload.link_capacity`: a perfectly pipelined sender
on this link), so the uploads take at least total bytes / (sum of gateway capacities)
(`fleet.upload_bound_s`); after the last upload one device still needs its reboot and verify cycle
(`fleet.reboot_verify_s`), measured on the single device as the time from the end of its upload
(its `testing` progress) to its result's `finished_at`: test request, reset, swap and boot,
reconnect, verify and confirm. Nothing else is in the bound: no dispatch, download or handshake
before the first upload, and no uploader inefficiency. `fleet.makespan_vs_lower_bound`
(target <= 1.25) is the makespan over that bound; `fleet.speedup_vs_sequential` is
300 x `single_device_s` over the makespan.

Where the time goes (diagnostics, from the agents' progress timestamps in the fleet run; an upload
runs from its `uploading` progress, sent once it holds an upload slot, to its `testing` progress,
so it includes one image-state read):
- `fleet.first_upload_s`: start accepted to the first upload starting (dispatch, download, connect).
- `fleet.upload_vs_capacity`: image bytes over the mean upload time, over link capacity (the
  uploader's window and CPU contention on this machine); `fleet.single_upload_vs_capacity` is the
  same for the single device, uploading alone.
- `fleet.slot_occupancy`: upload-seconds over (upload slots x gateways x makespan).
- `fleet.slot_gap_s`: mean idle time per upload slot between its gateway's first upload start and
  last upload end (the dispatch pipeline failing to keep the radio busy).
- `fleet.tail_s`: from the last upload ending to the last result's `finished_at`.
- `fleet.gateway_finish_spread_s`: the spread of the gateways' last `finished_at` (imbalance).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
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
from schemas import FlowSpec, JobOutcome, JobPhase, JobResult, RolloutSpec, Selector, WaveSpec
from simulator.cloud import CloudEmulator
from simulator.fleet import DeviceSpec, Fleet
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    HARDWARE,
    PROJECT_KEY,
    ControllerProbe,
    ProcessUnderTest,
    controller_probe,
    create_and_start,
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
STARTUP_WAIT_S: Final = 90.0
SOLO_WAIT_S: Final = 60.0
FLEET_WAIT_S: Final = 300.0
"""Well inside the runner's 600 s per benchmark, so a stuck rollout fails here, with details, and
every process this benchmark started is stopped."""


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
        endpoints = await asyncio.to_thread(queue.get, True, STARTUP_WAIT_S)
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
        deadline = time.monotonic() + STARTUP_WAIT_S
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


@dataclass(frozen=True, slots=True)
class _Job:
    """One device's succeeded job, from the agent's progress and result timestamps."""

    serial: str
    gateway: str
    upload_start: datetime
    upload_end: datetime
    finished: datetime

    @property
    def upload_s(self) -> float:
        return (self.upload_end - self.upload_start).total_seconds()


def _succeeded(probe: ControllerProbe, serials: set[str]) -> dict[str, JobResult]:
    return {
        r.device_serial: r
        for r in probe.results.values()
        if r.outcome is JobOutcome.SUCCEEDED and r.device_serial in serials
    }


async def _until_succeeded(probe: ControllerProbe, serials: set[str], timeout_s: float) -> float:
    """Wait until every serial has a succeeded result; the monotonic time it happened.

    Raises:
        RuntimeError: not every device succeeded within `timeout_s` (with what happened instead).
    """
    try:
        await probe.wait_for(lambda: len(_succeeded(probe, serials)) == len(serials), timeout_s=timeout_s)
    except TimeoutError:
        done = _succeeded(probe, serials)
        others = collections.Counter(
            f"{r.outcome}/{r.reason}"
            for r in probe.results.values()
            if r.device_serial in serials and r.outcome is not JobOutcome.SUCCEEDED
        )
        missing = sorted(serials - done.keys())
        raise RuntimeError(
            f"{len(done)} of {len(serials)} devices succeeded within {timeout_s:.0f} s; other results "
            f"{dict(others)}; without success: {missing[:10]}{' ...' if len(missing) > 10 else ''}"
        ) from None
    return time.monotonic()


def _jobs(probe: ControllerProbe, serials: set[str]) -> list[_Job]:
    """The succeeded jobs of `serials` whose upload was seen (its last start and end for the job)."""
    marks: dict[tuple[str, JobPhase], datetime] = {}
    for progress in probe.progress:
        key = (progress.job_id, progress.phase)
        if progress.phase is JobPhase.UPLOADING and progress.bytes_done:
            continue  # byte progress during the upload; its start is the one at 0 bytes
        if key not in marks or progress.at > marks[key]:
            marks[key] = progress.at
    jobs = []
    for serial, result in _succeeded(probe, serials).items():
        start = marks.get((result.job_id, JobPhase.UPLOADING))
        end = marks.get((result.job_id, JobPhase.TESTING))
        if start is not None and end is not None and start < end:
            jobs.append(_Job(serial, result.gateway_id, start, end, result.finished_at))
    return jobs


def _slot_gap_s(jobs: Iterable[_Job]) -> float:
    """Mean idle time per upload slot inside each gateway's span of uploads.

    A sweep over each gateway's upload intervals adds up the time with fewer than `UPLOAD_SLOTS`
    uploads running (an interval ends one image-state read after its slot is free, so overlaps
    hide gaps shorter than that read).
    """
    by_gateway: dict[str, list[_Job]] = collections.defaultdict(list)
    for job in jobs:
        by_gateway[job.gateway].append(job)
    gaps = []
    for group in by_gateway.values():
        events = sorted([(j.upload_start, 1) for j in group] + [(j.upload_end, -1) for j in group])
        running, previous, idle_s = 0, events[0][0], 0.0
        for at, change in events:
            idle_s += max(0, UPLOAD_SLOTS - running) * (at - previous).total_seconds()
            running, previous = running + change, at
        gaps.append(idle_s / UPLOAD_SLOTS)
    return sum(gaps) / len(gaps)


def _finish_spread_s(jobs: Iterable[_Job]) -> float:
    last: dict[str, datetime] = {}
    for job in jobs:
        last[job.gateway] = max(last.get(job.gateway, job.finished), job.finished)
    return (max(last.values()) - min(last.values())).total_seconds()


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
                single_s = await _until_succeeded(probe, {SOLO}, SOLO_WAIT_S) - started
                solo_jobs = _jobs(probe, {SOLO})
                if not solo_jobs:
                    raise RuntimeError(f"no upload progress from {SOLO}: {probe.results}")
                single = solo_jobs[0]

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
                started, started_at = time.monotonic(), datetime.now(UTC)
                makespan_s = await _until_succeeded(probe, serials, FLEET_WAIT_S) - started
                updated = len(_succeeded(probe, serials))
                jobs = _jobs(probe, serials)
    finally:
        broker.crash()
    capacity = link_capacity(release.image, LINK).bytes_per_s
    image_bytes = len(release.image)
    upload_bound_s = len(serials) * image_bytes / (GATEWAYS * UPLOAD_SLOTS * capacity)
    reboot_verify_s = (single.finished - single.upload_end).total_seconds()
    lower_bound_s = upload_bound_s + reboot_verify_s
    upload_s = sum(j.upload_s for j in jobs)
    last_upload_end = max(j.upload_end for j in jobs)
    return {
        "fleet.devices_updated": float(updated),
        "fleet.image_bytes": float(image_bytes),
        "fleet.single_device_s": round(single_s, 2),
        "fleet.makespan_s": round(makespan_s, 2),
        "fleet.upload_bound_s": round(upload_bound_s, 2),
        "fleet.reboot_verify_s": round(reboot_verify_s, 2),
        "fleet.lower_bound_s": round(lower_bound_s, 2),
        "fleet.makespan_vs_lower_bound": round(makespan_s / lower_bound_s, 3),
        "fleet.speedup_vs_sequential": round(len(serials) * single_s / makespan_s, 2),
        "fleet.first_upload_s": round((min(j.upload_start for j in jobs) - started_at).total_seconds(), 2),
        "fleet.upload_vs_capacity": round(image_bytes * len(jobs) / upload_s / capacity, 3),
        "fleet.single_upload_vs_capacity": round(image_bytes / single.upload_s / capacity, 3),
        "fleet.slot_occupancy": round(upload_s / (GATEWAYS * UPLOAD_SLOTS * makespan_s), 3),
        "fleet.slot_gap_s": round(_slot_gap_s(jobs), 2),
        "fleet.tail_s": round((max(j.finished for j in jobs) - last_upload_end).total_seconds(), 2),
        "fleet.gateway_finish_spread_s": round(_finish_spread_s(jobs), 2),
    }


def run() -> dict[str, float]:
    """Every fleet figure, measured in this one run."""
    with tempfile.TemporaryDirectory() as scratch:
        return asyncio.run(_measure(Path(scratch)))
