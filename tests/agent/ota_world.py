"""What the agent's in-memory unit tests share: devices, images, a socket-free fetcher, commands.

The artifact fetcher is the production one over `httpx.MockTransport` (no socket); the devices
are `SimDevice`s behind `tests.agent.memory_link`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import httpx

from agent.artifacts import ArtifactCache, ArtifactFetcher, DownloadPolicy
from agent.ota import JobSettings
from schemas import Artifact, DeviceSerial, JobId, OtaCommand
from simulator.device import DeviceIdentity, FaultPlan, FirmwareOptions, LinkProfile, MemfaultMode, SimDevice
from simulator.fleet import firmware_image
from tests.agent.memory_link import MemoryDevice, ReplyFilter

FAST_FIRMWARE: Final = FirmwareOptions(reset_delay_s=0.01, boot_time_s=0.02, swap_time_s=0.02)
ARTIFACT_HOST: Final = "artifacts.test"
PAYLOAD_BYTES: Final = 12_000
FAST_JOB: Final = JobSettings(
    first_chunk_timeout_s=2.0,
    chunk_timeout_s=0.5,
    reboot_timeout_s=5.0,
    reconnect_initial_s=0.01,
    reconnect_max_s=0.05,
)


def image(version: str) -> bytes:
    """The MCUboot image of `version` the simulated fleet uses."""
    return firmware_image(version, PAYLOAD_BYTES)


def memory_device(
    serial: str = "M1",
    *,
    version: str = "1.0.0",
    staged: bytes = b"",
    memfault_mode: MemfaultMode = MemfaultMode.NORMAL,
    faults: FaultPlan | None = None,
    link: LinkProfile | None = None,
    reply_filter: ReplyFilter | None = None,
) -> MemoryDevice:
    """A simulated device running `version` (confirmed), `staged` in slot 1, reachable in memory."""
    device = SimDevice(
        DeviceIdentity(serial),
        image(version),
        secondary_image=staged,
        link=link,
        faults=faults,
        options=FAST_FIRMWARE,
        memfault_mode=memfault_mode,
    )
    return MemoryDevice(device, reply_filter=reply_filter)


def artifact_url(version: str) -> str:
    """Where the fetcher finds the image of `version`."""
    return f"http://{ARTIFACT_HOST}/{version}.bin"


def fetcher(http: httpx.AsyncBaseTransport, cache_dir: Path) -> ArtifactFetcher:
    """The production fetcher over an in-memory network; `http` should be `artifact_client()`."""
    return ArtifactFetcher(
        ArtifactCache(cache_dir, 64 * 1024 * 1024),
        DownloadPolicy(allowed_hosts=(ARTIFACT_HOST,), allow_http=True, allow_private_addresses=True),
        transport=http,
    )


def artifact_client(versions: tuple[str, ...] = ("1.1.0",)) -> httpx.MockTransport:
    """An HTTP client that serves the images of `versions` from memory (404 for anything else)."""
    served = {f"/{v}.bin": image(v) for v in versions}

    def handle(request: httpx.Request) -> httpx.Response:
        body = served.get(request.url.path)
        return httpx.Response(200, content=body) if body is not None else httpx.Response(404)

    handler: Callable[[httpx.Request], httpx.Response] = handle
    return httpx.MockTransport(handler)


def command(
    job_id: str,
    serial: str,
    version: str = "1.1.0",
    *,
    expected_current_version: str | None = None,
    allow_downgrade: bool = False,
    deadline_s: float = 60.0,
) -> OtaCommand:
    """An OTA command for the image of `version`."""
    data = image(version)
    now = datetime.now(UTC)
    return OtaCommand(
        job_id=JobId(job_id),
        device_serial=DeviceSerial(serial),
        attempt=1,
        issued_at=now,
        deadline=now + timedelta(seconds=deadline_s),
        artifact=Artifact(
            url=artifact_url(version), size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
        ),
        target_version=version,
        expected_current_version=expected_current_version,
        allow_downgrade=allow_downgrade,
    )
