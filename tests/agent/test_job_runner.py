"""The job runner and a whole agent built by `build_agent`, in memory: no broker, no socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.factory import build_agent
from agent.jobs import JobRunner, RunnerSettings
from agent.journal import Journal
from agent.link.device_link import DeviceLink
from agent.settings import (
    AgentSettings,
    DiscoveryConfig,
    DownloadConfig,
    JobsConfig,
    MetricsConfig,
    UdpDevice,
)
from agent.smp import commands
from schemas import (
    CancelJob,
    DeviceReport,
    GatewayId,
    JobId,
    JobOutcome,
    JobPhase,
    JobProgress,
    JobResult,
    ReasonCode,
    TopicKind,
    channels,
)
from simulator.image import parse_mcuboot_image
from tests.agent.memory_link import MemoryDevice, MemoryMqtt, memory_mqtt, memory_transports
from tests.agent.ota_world import (
    ARTIFACT_HOST,
    FAST_JOB,
    artifact_client,
    command,
    fetcher,
    image,
    memory_device,
)

GATEWAY = GatewayId("gw-mem")


@dataclass
class RecordingPublisher:
    """The MQTT side of the runner, in memory: results and progress as published.

    A finishing result is journaled first, as `AgentService.deliver_result` does.
    """

    journal: Journal
    results: list[JobResult] = field(default_factory=list)
    progress: list[JobProgress] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def deliver_result(self, result: JobResult, *, finish_job: bool) -> None:
        """Record a result."""
        if finish_job:
            self.journal.finish(
                result.job_id, result.outcome, 0.0, ("memory", channels.encode(result), 1, False)
            )
        self.results.append(result)
        self.changed.set()

    def publish_progress(self, progress: JobProgress) -> None:
        """Record progress."""
        self.progress.append(progress)

    async def result_of(self, job_id: str, timeout_s: float = 20.0) -> JobResult:
        """The first result published for `job_id`, waiting for it."""
        async with asyncio.timeout(timeout_s):
            while True:
                found = next((r for r in self.results if r.job_id == job_id), None)
                if found is not None:
                    return found
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def _no_lock(_serial: str) -> AsyncIterator[None]:
    yield


@contextlib.asynccontextmanager
async def running_runner(
    tmp_path: Path, devices: dict[str, MemoryDevice], journal: Journal | None = None
) -> AsyncIterator[tuple[JobRunner, RecordingPublisher]]:
    """A started runner over memory links to `devices` (by serial), with a journal in `tmp_path`."""
    journal = journal or Journal(tmp_path / "journal.sqlite3")
    publisher = RecordingPublisher(journal)
    links: dict[str, DeviceLink] = {serial: d.link(timeout_s=0.5) for serial, d in devices.items()}
    async with artifact_client() as http:
        runner = JobRunner(
            GATEWAY,
            settings=RunnerSettings(concurrency=2, upload_slots=1, queue_size=4, job=FAST_JOB),
            journal=journal,
            fetcher=fetcher(http, tmp_path / "cache"),
            publisher=publisher,
            find_link=links.get,
            device_lock=_no_lock,
            now=lambda: datetime.now(UTC),
            monotonic=asyncio.get_running_loop().time,
        )
        await runner.start()
        try:
            yield runner, publisher
        finally:
            await runner.stop()
            journal.close()


async def test_the_runner_runs_a_job_and_reports_it_once(tmp_path: Path) -> None:
    """A submitted job runs to SUCCEEDED; the same job id again repeats the outcome, no second flash."""
    device = memory_device()
    async with running_runner(tmp_path, {"M1": device}) as (runner, publisher):
        await runner.submit(command("j1", "M1"))
        first = await publisher.result_of("j1")
        publisher.results.clear()
        await runner.submit(command("j1", "M1"))
        repeated = await publisher.result_of("j1")
    assert (first.outcome, first.reason, first.uploads) == (JobOutcome.SUCCEEDED, ReasonCode.OK, 1)
    assert (repeated.outcome, repeated.reason) == (JobOutcome.SUCCEEDED, ReasonCode.DUPLICATE_JOB)
    assert len(device.device.boots) == 1
    assert publisher.progress[0].phase is JobPhase.QUEUED


async def test_the_runner_refuses_expired_and_unknown_jobs_with_a_reason(tmp_path: Path) -> None:
    """Past its deadline: EXPIRED; a device this gateway does not reach: UNKNOWN_DEVICE; nothing runs."""
    device = memory_device()
    async with running_runner(tmp_path, {"M1": device}) as (runner, publisher):
        await runner.submit(command("j-old", "M1", deadline_s=-1))
        await runner.submit(command("j-ghost", "GHOST"))
        expired, ghost = await publisher.result_of("j-old"), await publisher.result_of("j-ghost")
    assert (expired.outcome, expired.reason) == (JobOutcome.REJECTED, ReasonCode.EXPIRED)
    assert (ghost.outcome, ghost.reason) == (JobOutcome.REJECTED, ReasonCode.UNKNOWN_DEVICE)
    assert device.sent_frames == []


async def _request_test_boot(device: MemoryDevice, image_hash: bytes) -> None:
    """Mark slot 1 pending from outside the runner (what a job did before the agent crashed)."""
    session = await device.link().connect()
    try:
        reply = await session.request(
            lambda seq: commands.encode_state_write(seq, image_hash=image_hash, confirm=False)
        )
        reply.raise_for_error()
    finally:
        await session.close()


async def test_a_resumed_job_past_its_test_request_is_not_canceled_while_queued(tmp_path: Path) -> None:
    """Journal at REBOOTING, test image pending: a cancel before a worker picks it up is ignored."""
    target = image("1.1.0")
    device = memory_device(staged=target)
    await _request_test_boot(device, parse_mcuboot_image(target).hash_sha256)
    journal = Journal(tmp_path / "journal.sqlite3")
    resumed, fresh = command("j-resumed", "M1"), command("j-fresh", "M2")
    for job in (resumed, fresh):
        journal.accept(job, 0.0)
    journal.set_phase(resumed.job_id, JobPhase.REBOOTING)
    other = memory_device("M2")
    async with running_runner(tmp_path, {"M1": device, "M2": other}, journal) as (runner, publisher):
        # start() queued both; no worker has run yet, so both cancels find them queued.
        runner.cancel(CancelJob(job_id=JobId("j-resumed")))
        runner.cancel(CancelJob(job_id=JobId("j-fresh")))
        kept, canceled = await publisher.result_of("j-resumed"), await publisher.result_of("j-fresh")
    assert (kept.outcome, kept.reason) == (JobOutcome.SUCCEEDED, ReasonCode.OK)
    assert device.device.running_version == "1.1.0"
    assert canceled.outcome is JobOutcome.CANCELED
    assert other.sent_frames == []


async def test_build_agent_assembles_an_agent_that_updates_a_device_in_memory(tmp_path: Path) -> None:
    """The factory with in-memory transports and MQTT: report, command, result, as over the broker."""
    device = memory_device("M1")
    sessions: list[MemoryMqtt] = []
    settings = AgentSettings(
        gateway_id="gw-mem",
        state_dir=str(tmp_path / "agent"),
        metrics=MetricsConfig(enabled=False),
        discovery=DiscoveryConfig(refresh_interval_s=60.0, retry_interval_s=0.2, smp_timeout_s=0.5),
        udp_devices=(UdpDevice("M1"),),
        jobs=JobsConfig(first_chunk_timeout_s=2.0, chunk_timeout_s=0.5, reboot_timeout_s=5.0),
        downloads=DownloadConfig(
            allowed_hosts=(ARTIFACT_HOST,), allow_http=True, allow_private_addresses=True
        ),
    )
    async with artifact_client() as http:
        agent = build_agent(
            settings,
            http_transport=http,
            transports=memory_transports({"M1": device}),
            mqtt=memory_mqtt(sessions),
        )
        task = asyncio.create_task(agent.run())
        try:
            (mqtt,) = sessions
            await mqtt.wait_for(lambda: _reported(mqtt, "M1"))
            await mqtt.deliver(command("j1", "M1"))
            await mqtt.wait_for(lambda: any(r.job_id == "j1" for r in _results(mqtt)))
        finally:
            await agent.stop()
            await asyncio.wait_for(task, 10.0)
    (result,) = _results(mqtt)
    assert (result.outcome, result.reason, result.running_version) == (
        JobOutcome.SUCCEEDED,
        ReasonCode.OK,
        "1.1.0",
    )
    assert device.device.running_version == "1.1.0"


def _reported(mqtt: MemoryMqtt, serial: str) -> bool:
    return any(
        isinstance(r, DeviceReport) and r.device_serial == serial
        for r in mqtt.messages(TopicKind.DEVICE_REPORT)
    )


def _results(mqtt: MemoryMqtt) -> list[JobResult]:
    return [r for r in mqtt.messages(TopicKind.JOB_RESULT) if isinstance(r, JobResult)]
