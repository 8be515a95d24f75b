"""Upload goodput on an emulated BLE-like link: the agent's uploader vs smpclient vs the link's capacity.

Every upload runs against a fresh simulated device (`FleetServer`, SMP over UDP on loopback) whose
link model is the issue's BLE-like link: `buf_size` 512, `buf_count` 4, 15 ms one-way latency per
frame and 40,000 bytes/s each way, no loss. The image is a real 128 KiB MCUboot image (version
2.0.0 over a device running 1.0.0, sent with `upgrade`). Goodput is image bytes divided by the wall
time of the upload call alone (the handshake is done before the clock starts).

Figures:
- `upload.agent_bytes_per_s`: `agent.link.image_upload.upload_image` over `SmpSession` on `UdpTransport`
  with its default window (`buf_count - 1` pipelined requests); median of `ROUNDS` uploads.
- `upload.smpclient_bytes_per_s`: `SMPClient.upload()` on `SMPUDPTransport` (one request at a time);
  median of `ROUNDS` uploads. Its MTU is `buf_size + 28` so that, once it subtracts the IPv4 and UDP
  headers, its frames are `buf_size` bytes like the agent's (an MTU of 512 would cap them at 484).
- `upload.capacity_bytes_per_s`: what a perfectly pipelined sender would reach (see below).
- `upload.agent_vs_smpclient` (target >= 2.5) and `upload.agent_vs_capacity` (target >= 0.85).
- `upload.window_bound_bytes_per_s`: diagnostic, the goodput the agent's window allows on this
  link when each request waits a full round trip for its reply: `min(capacity, w * d / rtt)` with
  `w` the window, `d` the mean data per chunk and `rtt = q / B + r / B + 2 L` (symbols below).
- `upload.agent_window_start`, `upload.agent_window_smallest`, `upload.agent_window_decreases`,
  `upload.agent_no_buffer_drops`: diagnostics of the agent's window (agent.smp.upload.WindowControl)
  over the `ROUNDS` uploads, and the requests the simulated devices dropped for want of a net_buf
  (their pool serves requests and replies, simulator/device/link.py).
- `upload.resume_extra_bytes_ratio` (target < 0.05): the device goes silent on the first chunk at or
  past half the image (`FaultPlan.silent_at_upload_offset`, which keeps its upload session, unlike
  `reboot_at_upload_offset`), and the bench's transport reports the link as dropped, as a BLE
  disconnect would, `DROP_NOTICED_AFTER_S` later (the requests sent meanwhile are lost); the
  uploader's reconnect callback reopens the session and the upload resumes by sha.
  The figure is `(UploadReport.bytes_sent - image size) / image size`.

Capacity. The uplink carries, for chunk i at offset o_i with d_i data bytes, a request of
q_i = 8 (SMP header) + CBOR({"off": o_i, "data": d_i bytes}) bytes (the first chunk also carries
"image", "len", "sha" and "upgrade"), each d_i as large as keeps q_i <= buf_size; the downlink
carries replies of r_i = 8 + CBOR({"off": o_i + d_i}) bytes ("match" in the last). Each direction
is a pipe of B bytes/s followed by L of latency (simulator/device/link.py), so a sender that never
lets the uplink idle finishes no sooner than

    T = max(sum(q_i) / B + r_n / B, q_1 / B + sum(r_i) / B) + 2 L

and capacity = image size / T. Here the uplink term dominates: capacity ~= B * d / q, the data
share of a full frame, less the one round trip of latency to fill and drain the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import cbor2
from smpclient import SMPClient
from smpclient.transport.udp import SMPUDPTransport

from agent.errors import DeviceUnreachable
from agent.link.device_link import TransportLink, udp_link
from agent.link.image_upload import UploadReport, upload_image
from agent.link.transport.base import CloseHandler, FrameHandler
from agent.link.transport.udp import IPV4_UDP_OVERHEAD_BYTES, UdpTransport
from simulator.device import FaultPlan, LinkProfile
from simulator.device.device import DevicePhase
from simulator.fleet import DeviceSpec, Fleet
from simulator.image import build_mcuboot_image
from simulator.server import FleetServer

LINK: Final = LinkProfile(
    name="ble-512",
    latency_s=0.015,
    bandwidth_bytes_per_s=40_000.0,
    loss_rate=0.0,
    buf_size_bytes=512,
    buf_count=4,
)
IMAGE_SIZE_BYTES: Final = 128 * 1024
IMAGE_OVERHEAD_BYTES: Final = 72
"""MCUboot header (32) and TLV area with the SHA-256 entry (40) that `build_mcuboot_image` adds."""
RUNNING_VERSION: Final = "1.0.0"
UPLOAD_VERSION: Final = "2.0.0"
ROUNDS: Final = 3
SILENT_DURATION_S: Final = 1.0
DROP_NOTICED_AFTER_S: Final = 0.5
"""From the device going silent to the agent's transport reporting the drop (a BLE supervision
timeout): long enough for every request in flight to be lost, the worst case for resume."""
RECONNECT_DEADLINE_S: Final = 10.0
SMP_HEADER_BYTES: Final = 8
TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class LinkCapacity:
    """The model's figures for one image on one link."""

    bytes_per_s: float
    chunks: int
    request_bytes: int
    reply_bytes: int


def _cbor_size(body: dict[str, object]) -> int:
    return len(cbor2.dumps(body))


def _request_bytes(offset: int, size: int, extra: dict[str, object]) -> int:
    return SMP_HEADER_BYTES + _cbor_size({"off": offset, "data": bytes(size), **extra})


def link_capacity(image: bytes, profile: LinkProfile) -> LinkCapacity:
    """The goodput of a perfectly pipelined sender of `image` over `profile` (module docstring)."""
    bandwidth = profile.bandwidth_bytes_per_s
    if not bandwidth:
        raise ValueError("capacity needs a bandwidth-limited link")
    first_fields: dict[str, object] = {
        "image": 0,
        "len": len(image),
        "sha": hashlib.sha256(image).digest(),
        "upgrade": True,
    }
    requests: list[int] = []
    replies: list[int] = []
    offset = 0
    while offset < len(image):
        extra = first_fields if offset == 0 else {}
        size = min(len(image) - offset, profile.buf_size_bytes)
        while _request_bytes(offset, size, extra) > profile.buf_size_bytes:
            size -= 1
        requests.append(_request_bytes(offset, size, extra))
        offset += size
        last = {"match": True} if offset == len(image) else {}
        replies.append(SMP_HEADER_BYTES + _cbor_size({"off": offset, **last}))
    uplink_s = sum(requests) / bandwidth + replies[-1] / bandwidth
    downlink_s = requests[0] / bandwidth + sum(replies) / bandwidth
    total_s = max(uplink_s, downlink_s) + 2 * profile.latency_s
    return LinkCapacity(len(image) / total_s, len(requests), sum(requests), sum(replies))


def window_bound(capacity: LinkCapacity, image_bytes: int, window: int, profile: LinkProfile) -> float:
    """The goodput `window` requests per round trip allow (capped by the link's capacity)."""
    bandwidth = profile.bandwidth_bytes_per_s or float("inf")
    request_s = capacity.request_bytes / capacity.chunks / bandwidth
    reply_s = capacity.reply_bytes / capacity.chunks / bandwidth
    round_trip_s = request_s + reply_s + 2 * profile.latency_s
    return min(capacity.bytes_per_s, window * (image_bytes / capacity.chunks) / round_trip_s)


class DroppableTransport:
    """A `UdpTransport` that the bench can declare dropped, as a BLE stack reports a disconnect."""

    def __init__(self, inner: UdpTransport) -> None:
        self._inner = inner
        self._on_close: CloseHandler | None = None

    @property
    def max_frame_bytes(self) -> int:
        """The wrapped transport's frame limit."""
        return self._inner.max_frame_bytes

    def set_frame_limit(self, buf_size_bytes: int) -> None:
        """Cap frames at the device's `buf_size`."""
        self._inner.set_frame_limit(buf_size_bytes)

    async def open(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Open the wrapped socket and remember whom to tell about a drop."""
        self._on_close = on_close
        await self._inner.open(on_frame, on_close)

    async def send(self, frame: bytes) -> None:
        """Send one frame."""
        await self._inner.send(frame)

    async def reset(self) -> None:
        """Recreate the wrapped socket."""
        await self._inner.reset()

    async def close(self) -> None:
        """Close the wrapped socket."""
        await self._inner.close()

    async def drop(self) -> None:
        """Close the socket and report the link as dropped."""
        await self._inner.close()
        if self._on_close is not None:
            self._on_close(ConnectionResetError("link dropped by the bench"))


class _PortUDPTransport(SMPUDPTransport):
    """smpclient's UDP transport, connecting to the simulated device's port instead of 1337."""

    def __init__(self, port: int, mtu: int) -> None:
        super().__init__(mtu)
        self._port = port

    async def connect(self, address: str, timeout_s: float, port: int = 1337) -> None:
        await super().connect(address, timeout_s, self._port)


def _timed(started_s: float, image: bytes) -> float:
    return len(image) / (time.perf_counter() - started_s)


async def _agent_upload(endpoint: tuple[str, int], image: bytes) -> tuple[float, UploadReport]:
    """Upload with the agent's defaults; return the goodput and what the upload (and its window) did."""
    session = await udp_link(*endpoint, timeout_s=TIMEOUT_S).connect()
    try:
        started_s = time.perf_counter()
        report = await upload_image(session, image, upgrade=True)
        goodput = _timed(started_s, image)
    finally:
        await session.close()
    if report.bytes_sent != len(image) or report.rewinds:
        raise RuntimeError(f"a clean upload should send the image once: {report}")
    return goodput, report


async def _smpclient_upload(endpoint: tuple[str, int], image: bytes) -> float:
    host, port = endpoint
    client = SMPClient(
        _PortUDPTransport(port, LINK.buf_size_bytes + IPV4_UDP_OVERHEAD_BYTES), host, timeout_s=TIMEOUT_S
    )
    await client.connect()
    try:
        started_s = time.perf_counter()
        offsets = [offset async for offset in client.upload(image, upgrade=True)]
        goodput = _timed(started_s, image)
    finally:
        await client.disconnect()
    if offsets[-1:] != [len(image)]:
        raise RuntimeError(f"smpclient stopped at offset {offsets[-1:]} of {len(image)}")
    return goodput


async def _resumed_upload(server: FleetServer, serial: str, image: bytes) -> float:
    """Upload through a link drop at half way; return the extra share of image bytes sent."""
    host, port = server.endpoints[serial]
    device = server.device(serial)
    transports: list[DroppableTransport] = []

    def make_transport() -> DroppableTransport:
        transport = DroppableTransport(UdpTransport(host, port))
        transports.append(transport)
        return transport

    link = TransportLink(f"{host}:{port}", make_transport, timeout_s=TIMEOUT_S, handshake_timeout_s=0.2)
    session = await link.connect()

    async def drop_when_silent() -> None:
        await server.wait_until(lambda: device.phase is DevicePhase.SILENT, timeout_s=60.0)
        await asyncio.sleep(DROP_NOTICED_AFTER_S)
        await transports[-1].drop()

    async def reconnect() -> None:
        deadline_s = time.monotonic() + RECONNECT_DEADLINE_S
        while True:
            try:
                await session.reopen(handshake_timeout_s=0.2)
            except DeviceUnreachable:
                if time.monotonic() > deadline_s:
                    raise
            else:
                return

    watcher = asyncio.create_task(drop_when_silent(), name="link-drop")
    try:
        report = await upload_image(session, image, upgrade=True, reconnect=reconnect)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await session.close()
    if report.reconnects != 1:
        raise RuntimeError(f"expected exactly one reconnect: {report}")
    return (report.bytes_sent - len(image)) / len(image)


def _fleet(serials: Sequence[str], faults: Callable[[str], FaultPlan]) -> Fleet:
    return Fleet(
        tuple(DeviceSpec(s, image_version=RUNNING_VERSION, link=LINK, faults=faults(s)) for s in serials)
    )


async def _measure() -> dict[str, float]:
    image = build_mcuboot_image(UPLOAD_VERSION, payload_size=IMAGE_SIZE_BYTES - IMAGE_OVERHEAD_BYTES, seed=1)
    assert len(image) == IMAGE_SIZE_BYTES
    agents = [f"AGENT-{n}" for n in range(ROUNDS)]
    smpclients = [f"SMPCLIENT-{n}" for n in range(ROUNDS)]
    resume = "RESUME"
    drop_plan = FaultPlan(silent_at_upload_offset=len(image) // 2, silent_duration_s=SILENT_DURATION_S)
    fleet = _fleet([*agents, *smpclients, resume], lambda s: drop_plan if s == resume else FaultPlan())
    async with FleetServer(fleet, base_host="127.0.0.1", port_per_device=True) as server:
        agent_rates = []
        smpclient_rates = []
        reports = []
        for agent_serial, smpclient_serial in zip(agents, smpclients, strict=True):
            rate, report = await _agent_upload(server.endpoints[agent_serial], image)
            agent_rates.append(rate)
            reports.append(report)
            smpclient_rates.append(await _smpclient_upload(server.endpoints[smpclient_serial], image))
        extra_ratio = await _resumed_upload(server, resume, image)
        no_buffer_drops = sum(server.device(serial).counters.no_buffer_drops for serial in agents)
    window = reports[-1].window
    capacity = link_capacity(image, LINK)
    agent = statistics.median(agent_rates)
    smpclient = statistics.median(smpclient_rates)
    return {
        "upload.agent_bytes_per_s": agent,
        "upload.smpclient_bytes_per_s": smpclient,
        "upload.capacity_bytes_per_s": capacity.bytes_per_s,
        "upload.window_bound_bytes_per_s": window_bound(capacity, len(image), window, LINK),
        "upload.agent_vs_smpclient": agent / smpclient,
        "upload.agent_vs_capacity": agent / capacity.bytes_per_s,
        "upload.resume_extra_bytes_ratio": extra_ratio,
        "upload.agent_window_start": float(window),
        "upload.agent_window_smallest": float(min(report.window_smallest for report in reports)),
        "upload.agent_window_decreases": float(sum(report.window_decreases for report in reports)),
        "upload.agent_no_buffer_drops": float(no_buffer_drops),
    }


def run() -> dict[str, float]:
    """Upload a 128 KiB image with the agent and with smpclient, and through a link drop."""
    return asyncio.run(_measure())


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
