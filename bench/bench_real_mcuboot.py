"""Upload goodput to real firmware: the agent's uploader vs smpclient, over serial, to MCUboot in QEMU.

The device is the real Zephyr 4.4 `smp_server` + MCUboot build for qemu_cortex_m0 (smpclient 7.3.0's
fixture, buf_size 384, buf_count 4, SMP over the console UART), run by `tests.firmware.qemu`: flash
written once, the UART on a `socket://` relay. The image is the fixture's own app re-signed as 1.1.0
with imgtool (49,692 bytes). Every upload gets a freshly booted board, so both clients pay the
slot erase of the first chunk. Goodput is image bytes over the wall time of the upload call alone
(connect and MCUmgr parameters read are done before the clock starts).

Figures:
- `upload.real_mcuboot_agent_bytes_per_s`: `agent.link.image_upload.upload_image` over `SmpSession` on
  `SerialTransport` (frames of `buf_size - 4`, its default window); median of `ROUNDS`.
- `upload.real_mcuboot_smpclient_bytes_per_s`: `SMPClient.upload()` on smpclient's
  `SMPSerialTransport` (fragmentation `Auto`: frames of `buf_size - 4`, one request at a time) bound
  to the same relay, as smpclient's own integration suite binds it to QEMU; median of `ROUNDS`.
- `upload.real_mcuboot_agent_vs_smpclient`: the ratio (goal >= 3).
- `upload.real_mcuboot_agent_window`, `upload.real_mcuboot_agent_rewinds`: diagnostics, the
  uploader's window and how often it went back to the device's offset (median round).
- `upload.real_mcuboot_failed_rounds`: diagnostic, uploads that timed out and were run again on a
  fresh board (once, smpclient's first chunk went unanswered for 30 s: smpclient's own suite notes
  that this emulated nRF51 can hang on multi-line transactions).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Final

import serial
from smpclient import SMPClient
from smpclient.transport.serial import SMPSerialTransport

from agent.link.device_link import serial_link
from agent.link.image_upload import UploadReport, upload_image
from tests.firmware.fixtures import build, fixture
from tests.firmware.images import resign
from tests.firmware.qemu import running_board

BOARD: Final = "zephyr_4.4.0_smp_server_0eae053d_qemu_cortex_m0_serial.merged.hex"
SIGNED: Final = "zephyr_4.4.0_smp_server_0eae053d_qemu_cortex_m0_serial.signed.bin"
READY_MARKER: Final = "smp_sample: build time"
ROUNDS: Final = 3
MAX_FAILED_ROUNDS: Final = 3
FIRST_TIMEOUT_S: Final = 30.0
CHUNK_TIMEOUT_S: Final = 5.0


class SocketSerialTransport(SMPSerialTransport):
    """smpclient's serial transport on a `socket://` URL (its integration suite does the same for QEMU)."""

    async def connect(self, address: str, timeout_s: float) -> None:
        """Bind the transport's pyserial handle to the URL instead of opening a local port."""
        self._reset_state()
        conn = serial.serial_for_url(address, timeout=0, write_timeout=0)
        # `_conn` is Final in smpclient; a socket has no TX queue to drain, so `out_waiting` is 0.
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(conn, "out_waiting", 0)


async def agent_upload(url: str, image: bytes) -> tuple[float, UploadReport]:
    """Seconds the agent's uploader takes for `image`, and its report."""
    session = await serial_link(url, timeout_s=CHUNK_TIMEOUT_S).connect()
    try:
        started = time.perf_counter()
        report = await upload_image(
            session, image, upgrade=False, first_timeout_s=FIRST_TIMEOUT_S, chunk_timeout_s=CHUNK_TIMEOUT_S
        )
        elapsed = time.perf_counter() - started
    finally:
        await session.close()
    assert report.total_bytes == len(image)
    return elapsed, report


async def smpclient_upload(url: str, image: bytes) -> tuple[float, None]:
    """Seconds `SMPClient.upload()` takes for `image`."""
    client = SMPClient(SocketSerialTransport(), url)
    await client.connect()
    try:
        started = time.perf_counter()
        last = 0
        async for offset in client.upload(
            image, first_timeout_s=FIRST_TIMEOUT_S, subsequent_timeout_s=CHUNK_TIMEOUT_S
        ):
            last = offset
        elapsed = time.perf_counter() - started
    finally:
        await client.disconnect()
    assert last == len(image)
    return elapsed, None


async def measure() -> dict[str, float]:
    """Median goodput of each uploader over fresh boards."""
    board_build = build(BOARD)
    image = resign(fixture(SIGNED).read_bytes(), "1.1.0")
    seconds: dict[str, list[float]] = {"agent": [], "smpclient": []}
    reports: list[tuple[float, UploadReport]] = []
    failed_rounds = 0
    uploads: tuple[tuple[str, Callable[[str, bytes], Awaitable[tuple[float, UploadReport | None]]]], ...] = (
        ("agent", agent_upload),
        ("smpclient", smpclient_upload),
    )
    for _ in range(ROUNDS):
        for name, upload in uploads:
            while True:
                async with running_board(board_build, ready_marker=READY_MARKER) as board:
                    try:
                        elapsed, report = await upload(board.url, image)
                        seconds[name].append(elapsed)
                        if report is not None:
                            reports.append((elapsed, report))
                        break
                    except TimeoutError:
                        failed_rounds += 1
                        if failed_rounds > MAX_FAILED_ROUNDS:
                            raise
    median_report = sorted(reports, key=lambda pair: pair[0])[len(reports) // 2][1]
    agent = len(image) / statistics.median(seconds["agent"])
    smpclient = len(image) / statistics.median(seconds["smpclient"])
    return {
        "upload.real_mcuboot_agent_bytes_per_s": agent,
        "upload.real_mcuboot_smpclient_bytes_per_s": smpclient,
        "upload.real_mcuboot_agent_vs_smpclient": agent / smpclient,
        "upload.real_mcuboot_agent_window": float(median_report.window),
        "upload.real_mcuboot_agent_rewinds": float(median_report.rewinds),
        "upload.real_mcuboot_failed_rounds": float(failed_rounds),
    }


def run() -> dict[str, float]:
    """Run the benchmark (for bench/__main__.py)."""
    return asyncio.run(measure())


if __name__ == "__main__":
    print(run())
