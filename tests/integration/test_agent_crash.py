"""An agent killed with SIGKILL mid-upload resumes after restart and completes without a second flash."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import JobOutcome, JobPhase
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome, LinkProfile
from simulator.fleet import DeviceSpec, Fleet
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.harness.upload_trace import UploadTrace, assert_resumed
from tests.integration.world import (
    FAST_FIRMWARE,
    HARDWARE,
    PROJECT_KEY,
    ProcessUnderTest,
    agent_settings,
    controller_probe,
    ota_command,
    publish_release,
    settings_document,
)

pytestmark = pytest.mark.integration
SLOW_LINK = LinkProfile(
    name="slow", latency_s=0.002, bandwidth_bytes_per_s=40_000, buf_size_bytes=512, buf_count=4
)


async def test_sigkill_mid_upload_resumes_and_completes_once(broker: MosquittoBroker, tmp_path: Path) -> None:
    """The journal resumes the job, the upload continues by sha, the device swaps exactly once."""
    fleet = Fleet(
        (
            DeviceSpec(
                "D1",
                firmware=FAST_FIRMWARE,
                link=SLOW_LINK,
                project_key=PROJECT_KEY,
                hardware_version=HARDWARE,
            ),
        )
    )
    async with (
        CloudEmulator() as cloud,
        FleetServer(fleet, base_host="127.0.0.1", port_per_device=True) as devices,
        controller_probe(broker) as probe,
    ):
        trace = UploadTrace(devices, ["D1"])
        release = publish_release(cloud, "1.1.0", payload_size_bytes=96_000)
        settings = agent_settings("gw-1", broker, tmp_path / "state", list(devices.endpoints.values()))
        agent = ProcessUnderTest("agent", settings_document(settings), tmp_path / "agent")
        await agent.start()
        try:
            await probe.wait_for(lambda: "D1" in probe.reports)
            probe.send("gw-1", ota_command("job-1", "D1", release))
            total = len(release.image)

            def uploading_past_a_third() -> bool:
                return any(
                    p.phase == JobPhase.UPLOADING and p.bytes_done > total // 3
                    for p in probe.progress
                    if p.job_id == "job-1"
                )

            await probe.wait_for(uploading_past_a_third)
            await agent.kill()
            session = devices.device("D1").upload_session
            assert session is not None and 0 < session.offset < total  # the upload really was cut off
            cut_at = session.offset
            trace.mark("D1")
            await agent.start()
            await probe.wait_for(lambda: "job-1" in probe.results, timeout_s=60)
        finally:
            await agent.stop()
    result = probe.results["job-1"]
    assert result.outcome == JobOutcome.SUCCEEDED, (result, agent.log()[-3000:])
    device = devices.device("D1")
    assert [b.outcome for b in device.boots].count(BootOutcome.SWAPPED) == 1
    resumed_from = [
        p.bytes_done for p in probe.progress if p.job_id == "job-1" and p.phase == JobPhase.UPLOADING
    ]
    assert any(done > total // 3 for done in resumed_from)
    # The restarted agent asked the device where it was and streamed on from there, not from zero.
    assert_resumed(trace.since_mark("D1"), cut_at, SLOW_LINK.buf_count * SLOW_LINK.buf_size_bytes)
