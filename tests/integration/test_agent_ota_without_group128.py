"""OTA on devices without Memfault group 128 (real Zephyr builds answer it with rc 8).

The job's verification rests on the image state read alone there: slot 0 must run the target hash
and version and be confirmed. The device is reached through the serial the inventory gives it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.device_probe import fallback_serial
from schemas import JobOutcome, MemfaultAccess, ReasonCode, Transport
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome, FaultPlan, MemfaultMode
from simulator.fleet import DeviceSpec, Fleet
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    FAST_FIRMWARE,
    HARDWARE,
    PROJECT_KEY,
    agent_settings,
    controller_probe,
    ota_command,
    publish_release,
    running_agent,
)

pytestmark = pytest.mark.integration

_NO_GROUP = Fleet(
    (
        DeviceSpec(
            "Z1",
            firmware=FAST_FIRMWARE,
            project_key=PROJECT_KEY,
            hardware_version=HARDWARE,
            memfault_mode=MemfaultMode.GROUP_ABSENT,
        ),
    )
)


async def test_a_device_without_group_128_is_updated_and_verified_by_its_image_state(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """No group 128: the job succeeds once slot 0 runs the target confirmed, and reports its version."""
    async with (
        CloudEmulator() as cloud,
        FleetServer(_NO_GROUP, base_host="127.0.0.1", port_per_device=True) as devices,
        controller_probe(broker) as probe,
    ):
        host, port = devices.endpoints["Z1"]
        serial = fallback_serial(Transport.UDP, f"{host}:{port}")
        release = publish_release(cloud, "1.1.0")
        settings = agent_settings("gw-1", broker, tmp_path / "agent", [(host, port)])
        async with running_agent(settings):
            await probe.wait_for(lambda: serial in probe.reports)
            assert probe.reports[serial].memfault is MemfaultAccess.NO_GROUP
            probe.send("gw-1", ota_command("job-1", serial, release))
            await probe.wait_for(lambda: "job-1" in probe.results)
    result = probe.results["job-1"]
    assert (result.outcome, result.reason, result.running_version) == (
        JobOutcome.SUCCEEDED,
        ReasonCode.OK,
        "1.1.0",
    )
    device = devices.device("Z1")
    running = next(s for s in device.image_states() if s.slot == 0)
    assert running.version == "1.1.0" and running.confirmed
    assert [b.outcome for b in device.boots].count(BootOutcome.SWAPPED) == 1


async def test_a_bad_build_on_a_device_without_group_128_is_reverted_not_succeeded(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """No group 128 and MCUboot swaps back: slot 0 runs the old image, so the job ends REVERTED."""
    async with (
        CloudEmulator() as cloud,
        FleetServer(_NO_GROUP, base_host="127.0.0.1", port_per_device=True) as devices,
        controller_probe(broker) as probe,
    ):
        host, port = devices.endpoints["Z1"]
        serial = fallback_serial(Transport.UDP, f"{host}:{port}")
        devices.device("Z1").faults = FaultPlan(bad_build_versions=frozenset({"1.1.0"}))
        release = publish_release(cloud, "1.1.0")
        settings = agent_settings("gw-1", broker, tmp_path / "agent", [(host, port)])
        async with running_agent(settings):
            await probe.wait_for(lambda: serial in probe.reports)
            probe.send("gw-1", ota_command("job-1", serial, release))
            await probe.wait_for(lambda: "job-1" in probe.results)
    result = probe.results["job-1"]
    assert (result.outcome, result.reason, result.running_version) == (
        JobOutcome.REVERTED,
        ReasonCode.REVERTED,
        "1.0.0",
    )
    assert devices.device("Z1").running_version == "1.0.0"
