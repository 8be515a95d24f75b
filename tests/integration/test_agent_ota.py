"""The agent end to end: real broker, simulated devices over UDP, artifacts from the cloud emulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from schemas import JobOutcome, JobPhase, ReasonCode, TopicKind
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome, FaultPlan, LinkProfile
from simulator.fleet import DeviceSpec, Fleet
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    FAST_FIRMWARE,
    HARDWARE,
    PROJECT_KEY,
    TREE,
    WAIT_S,
    agent_settings,
    controller_probe,
    ota_command,
    publish_release,
    running_agent,
    simulated_devices,
)

pytestmark = pytest.mark.integration


async def test_a_command_updates_a_device_end_to_end(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Download, verify, upload, test, reset, verify, confirm: the device runs 1.1.0 confirmed."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["D1", "D2"]) as devices,
        controller_probe(broker) as probe,
    ):
        release = publish_release(cloud, "1.1.0")
        settings = agent_settings("gw-1", broker, tmp_path / "agent", list(devices.endpoints.values()))
        async with running_agent(settings):
            await probe.wait_for(lambda: {"D1", "D2"} <= set(probe.reports))
            assert probe.reports["D1"].current_version == "1.0.0"
            probe.send("gw-1", ota_command("job-1", "D1", release))
            await probe.wait_for(lambda: "job-1" in probe.results)
            # The inventory refresh after the job reports the new version.
            await probe.wait_for(lambda: probe.reports["D1"].current_version == "1.1.0")
    result = probe.results["job-1"]
    assert (result.outcome, result.reason, result.running_version) == (
        JobOutcome.SUCCEEDED,
        ReasonCode.OK,
        "1.1.0",
    )
    device = devices.device("D1")
    running = next(s for s in device.image_states() if s.active)
    assert running.version == "1.1.0" and running.confirmed
    assert [b.outcome for b in device.boots].count(BootOutcome.SWAPPED) == 1
    phases = [p.phase for p in probe.progress if p.job_id == "job-1"]
    assert phases[0] == "queued" and "uploading" in phases and "confirming" in phases
    assert devices.device("D2").running_version == "1.0.0"


async def test_duplicate_and_expired_commands_are_refused_with_a_reason(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A repeated job id repeats the outcome without a second flash; an expired command is rejected."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["D1"]) as devices,
        controller_probe(broker) as probe,
    ):
        release = publish_release(cloud, "1.1.0")
        settings = agent_settings("gw-1", broker, tmp_path / "agent", list(devices.endpoints.values()))
        async with running_agent(settings):
            await probe.wait_for(lambda: "D1" in probe.reports)
            probe.send("gw-1", ota_command("job-1", "D1", release))
            await probe.wait_for(lambda: "job-1" in probe.results)
            del probe.results["job-1"]
            probe.send("gw-1", ota_command("job-1", "D1", release))
            probe.send("gw-1", ota_command("job-old", "D1", release, deadline_s=-1))
            probe.send("gw-1", ota_command("job-ghost", "NOT-HERE", release))
            await probe.wait_for(lambda: {"job-1", "job-old", "job-ghost"} <= set(probe.results))
    repeated = probe.results["job-1"]
    assert (repeated.outcome, repeated.reason) == (JobOutcome.SUCCEEDED, ReasonCode.DUPLICATE_JOB)
    assert (probe.results["job-old"].outcome, probe.results["job-old"].reason) == (
        JobOutcome.REJECTED,
        ReasonCode.EXPIRED,
    )
    assert probe.results["job-ghost"].reason == ReasonCode.UNKNOWN_DEVICE
    assert [b.outcome for b in devices.device("D1").boots].count(BootOutcome.SWAPPED) == 1


async def test_an_artifact_with_the_wrong_hash_never_reaches_the_device(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The sha256 is checked after download and before any byte goes to the device."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["D1"]) as devices,
        controller_probe(broker) as probe,
    ):
        release = publish_release(cloud, "1.1.0")
        wrong = release.artifact.__class__(url=release.url, size_bytes=len(release.image), sha256="00" * 32)
        settings = agent_settings("gw-1", broker, tmp_path / "agent", list(devices.endpoints.values()))
        async with running_agent(settings):
            await probe.wait_for(lambda: "D1" in probe.reports)
            probe.send("gw-1", ota_command("job-bad", "D1", release, artifact=wrong))
            await probe.wait_for(lambda: "job-bad" in probe.results)
    result = probe.results["job-bad"]
    assert (result.outcome, result.reason, result.retryable) == (
        JobOutcome.REJECTED,
        ReasonCode.HASH_MISMATCH,
        False,
    )
    device = devices.device("D1")
    assert device.upload_session is None and device.slot_image(1) is None


async def test_a_bad_build_is_reported_as_reverted(broker: MosquittoBroker, tmp_path: Path) -> None:
    """An image that never comes up is swapped back by MCUboot; the result says REVERTED, not retryable."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["D1"]) as devices,
        controller_probe(broker) as probe,
    ):
        release = publish_release(cloud, "1.1.0")
        devices.device("D1").faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
        settings = agent_settings("gw-1", broker, tmp_path / "agent", list(devices.endpoints.values()))
        async with running_agent(settings):
            await probe.wait_for(lambda: "D1" in probe.reports)
            probe.send("gw-1", ota_command("job-1", "D1", release))
            await probe.wait_for(lambda: "job-1" in probe.results)
    result = probe.results["job-1"]
    assert (result.outcome, result.reason, result.retryable) == (
        JobOutcome.REVERTED,
        ReasonCode.REVERTED,
        False,
    )
    assert devices.device("D1").running_version == "1.0.0"


async def test_malformed_commands_are_rejected_and_the_agent_carries_on(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Garbage on the command topic is counted; the next valid command still runs."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["D1"]) as devices,
        controller_probe(broker) as probe,
    ):
        release = publish_release(cloud, "1.1.0")
        settings = agent_settings("gw-1", broker, tmp_path / "agent", list(devices.endpoints.values()))
        async with running_agent(settings) as agent:
            await probe.wait_for(lambda: "D1" in probe.reports)
            for garbage in (b"\x00\xff", b'{"kind": "ota"}', b'{"kind": "format_disk"}', b"[" * 10_000):
                probe.send("gw-1", garbage)
            probe.send("gw-1", ota_command("job-1", "D1", release))
            await probe.wait_for(lambda: "job-1" in probe.results)
            rejected = agent.mqtt_metrics.rejected.labels("payload")._value.get()
    assert rejected == 4
    assert probe.results["job-1"].outcome == JobOutcome.SUCCEEDED
    assert TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-1").endswith("/command")


async def test_the_project_key_only_travels_on_the_controller_credential_topic(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reports carry a fingerprint; the key itself is sent once, unretained, on the credential topic."""
    async with simulated_devices(["D1"]) as devices:
        settings = agent_settings("gw-1", broker, tmp_path / "agent", list(devices.endpoints.values()))
        # The spy listens before the agent starts: the credential is sent once, unretained.
        async with aiomqtt.Client(broker.host, broker.port, identifier="spy") as spy:
            await spy.subscribe("#", qos=1)
            seen: list[tuple[str, bytes, bool]] = []
            async with running_agent(settings), asyncio.timeout(WAIT_S):
                async for message in spy.messages:
                    assert isinstance(message.payload, bytes)
                    seen.append((message.topic.value, message.payload, message.retain))
                    if "/credential/" in message.topic.value:
                        break
    key = PROJECT_KEY.encode()
    credential = [(t, r) for t, p, r in seen if key in p]
    assert credential == [
        (TREE.topic(TopicKind.DEVICE_CREDENTIAL, gateway_id="gw-1", device_serial="D1"), False)
    ]
    report = next(p for t, p, _ in seen if "/device/" in t)
    assert b"project_key_fingerprint" in report and key not in report
    assert PROJECT_KEY not in capsys.readouterr().out


async def test_jobs_beyond_the_upload_slots_wait_for_the_radio(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Two jobs, one upload slot: both run, but their uploads never overlap."""
    link = LinkProfile(
        name="slow", latency_s=0.002, bandwidth_bytes_per_s=40_000, buf_size_bytes=512, buf_count=4
    )
    fleet = Fleet(
        tuple(
            DeviceSpec(
                s, firmware=FAST_FIRMWARE, link=link, project_key=PROJECT_KEY, hardware_version=HARDWARE
            )
            for s in ("D1", "D2")
        )
    )
    async with (
        CloudEmulator() as cloud,
        FleetServer(fleet, base_host="127.0.0.1", port_per_device=True) as devices,
        controller_probe(broker) as probe,
    ):
        release = publish_release(cloud, "1.1.0", payload_size_bytes=80_000)
        settings = agent_settings("gw-1", broker, tmp_path / "agent", list(devices.endpoints.values()))
        settings = msgspec.structs.replace(
            settings, jobs=msgspec.structs.replace(settings.jobs, concurrency=2, upload_slots=1)
        )
        async with running_agent(settings):
            await probe.wait_for(lambda: {"D1", "D2"} <= set(probe.reports))
            probe.send("gw-1", ota_command("job-a", "D1", release))
            probe.send("gw-1", ota_command("job-b", "D2", release))
            await probe.wait_for(lambda: {"job-a", "job-b"} <= set(probe.results), timeout_s=60)
    assert all(probe.results[job].outcome is JobOutcome.SUCCEEDED for job in ("job-a", "job-b"))
    uploading = {
        job: [p.at for p in probe.progress if p.job_id == job and p.phase is JobPhase.UPLOADING]
        for job in ("job-a", "job-b")
    }
    first, second = sorted(uploading.values(), key=min)
    assert len(first) >= 2 and len(second) >= 2, uploading  # each upload took more than a second
    assert max(first) <= min(second), "the second upload started while the first was running"
