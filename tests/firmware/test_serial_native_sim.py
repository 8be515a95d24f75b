"""The agent's serial transport against real Zephyr 4.4 `smp_server` builds on a host pty (native_sim)."""

from __future__ import annotations

import asyncio
import functools
from typing import Final

import pytest

from agent.device_probe import probe
from agent.errors import LinkTimeout, SmpDeviceError
from agent.link.device_link import serial_link
from agent.smp import commands
from agent.smp.frame import McumgrErr
from schemas import MemfaultAccess, Transport
from tests.firmware.fixtures import build
from tests.firmware.native_sim_serial import running_native_sim

pytestmark = pytest.mark.integration

SERIAL: Final = "zephyr_4.4.0_smp_server_0eae053d_native_sim_serial.exe"
BIGRX: Final = "zephyr_4.4.0_smp_server_0eae053d_native_sim_serial_bigrx.exe"
NOPARAMS: Final = "zephyr_4.4.0_smp_server_0eae053d_native_sim_serial_noparams.exe"


def _echo(sequence: int, *, text: str) -> bytes:
    return commands.encode_echo(sequence, text)


def echo_of_frame_size(frame_bytes: int) -> str:
    """An echo text whose request frame is exactly `frame_bytes` long."""
    text = "x" * (frame_bytes - len(commands.encode_echo(0, "")))
    # A longer text needs a longer CBOR string head: shrink until the frame is exact.
    while len(commands.encode_echo(0, text)) > frame_bytes:
        text = text[:-1]
    assert len(commands.encode_echo(0, text)) == frame_bytes
    return text


async def test_a_device_without_group_128_is_probed_and_reported_not_failed() -> None:
    """Handshake over the pty reads 384 x 4; group 128 answers rc 8 and the probe says `no_group`."""
    firmware = build(SERIAL)
    async with running_native_sim(firmware) as pty:
        link = serial_link(pty, timeout_s=2.0, identity="serial:native-sim")
        session = await link.connect()
        try:
            assert session.params == commands.McumgrParams(firmware.buf_size, firmware.buf_count)
            assert session.transport.max_frame_bytes == firmware.buf_size - 4
            snapshot = await probe(session, Transport.SERIAL, pty, identity=link.identity)
        finally:
            await session.close()
    assert snapshot.access is MemfaultAccess.NO_GROUP and snapshot.info is None
    assert snapshot.serial == "serial:native-sim" and not snapshot.updatable
    assert "rc 8" in snapshot.error


async def test_a_frame_of_buf_size_less_4_is_answered_and_one_byte_more_is_dropped() -> None:
    """The device's buffer holds the length and CRC: a buf_size - 3 frame gets no answer at all."""
    firmware = build(BIGRX)
    limit = firmware.buf_size - 4
    async with running_native_sim(firmware) as pty:
        # A configured buf_size one above the real one lets the transport send the oversized frame.
        session = await serial_link(pty, timeout_s=2.0, buf_size_bytes=firmware.buf_size + 1).connect()
        try:
            fits = echo_of_frame_size(limit)
            reply = await session.request(lambda seq: commands.encode_echo(seq, fits))
            assert reply.raise_for_error()["r"] == fits
            too_long = echo_of_frame_size(limit + 1)
            with pytest.raises(LinkTimeout):
                await session.request(lambda seq: commands.encode_echo(seq, too_long), timeout_s=1.0)
            # The device is not wedged: the next frame that fits is answered.
            reply = await session.request(lambda seq: commands.encode_echo(seq, "still here"))
            assert reply.raise_for_error()["r"] == "still here"
        finally:
            await session.close()


async def test_several_requests_in_flight_over_serial_are_all_answered_in_order() -> None:
    """Pipelining on a serial line: three echoes sent before any reply each get their own answer.

    The `bigrx` build, because the unpaced pty overruns the default UART RX pool beyond two lines.
    """
    firmware = build(BIGRX)
    async with running_native_sim(firmware) as pty:
        session = await serial_link(pty, timeout_s=2.0).connect()
        try:
            texts = [f"echo-{i}" for i in range(3)]
            futures = []
            for text in texts:
                futures.append(await session.start_request(functools.partial(_echo, text=text)))
            async with asyncio.timeout(5.0):
                replies = await asyncio.gather(*futures)
        finally:
            await session.close()
    assert [r.raise_for_error()["r"] for r in replies] == texts
    assert session.counters.stray_replies == 0


async def test_a_device_that_does_not_report_its_buffer_uses_the_configured_one() -> None:
    """Without the MCUmgr parameters command (rc 8), frames follow `buf_size` from the config."""
    firmware = build(NOPARAMS)
    async with running_native_sim(firmware) as pty:
        session = await serial_link(pty, timeout_s=2.0, buf_size_bytes=firmware.buf_size).connect()
        try:
            assert session.params is None
            assert session.transport.max_frame_bytes == firmware.buf_size - 4
            reply = await session.request(lambda seq: commands.encode_echo(seq, "ok"))
            assert reply.raise_for_error()["r"] == "ok"
            with pytest.raises(SmpDeviceError) as refused:
                (await session.request(commands.encode_params_read)).raise_for_error()
        finally:
            await session.close()
    assert refused.value.rc == McumgrErr.ENOTSUP
