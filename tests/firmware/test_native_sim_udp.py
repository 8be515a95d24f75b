"""The agent's UDP session and request window against the real Zephyr 4.4.0 native_sim_udp build."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

import pytest

from agent.errors import SmpDeviceError
from agent.link.image_upload import request_pipelined
from agent.link.session import SmpSession
from agent.link.transport.udp import UdpTransport
from agent.smp import commands, group128
from agent.smp.frame import McumgrErr
from agent.smp.upload import WindowLimits
from schemas.inventory import MemfaultAccess
from tests.firmware.native_sim import NO_BUFFER_PATTERN, NativeSimUdp, native_sim_udp

ECHO_TIMEOUT_S = 1.0
"""Far above the build's echo round trip (about 9 ms): a request without a reply by then was dropped."""
LOG_LAG_TIMEOUT_S = 10.0
"""How long the build's log may trail its replies (it never does by more than milliseconds when the
counts agree; the time runs out only when they do not, and the assertion then says so)."""


@pytest.fixture
async def device() -> AsyncIterator[NativeSimUdp]:
    """A running native_sim_udp build in its own network namespace."""
    async with native_sim_udp() as instance:
        yield instance


@pytest.fixture
async def session(device: NativeSimUdp) -> AsyncIterator[SmpSession]:
    """The agent's session to the build, over sockets made inside its namespace, handshake done."""
    host, port = device.address
    smp = SmpSession(
        UdpTransport(host, port, socket_factory=device.socket_factory()), timeout_s=ECHO_TIMEOUT_S
    )
    await smp.open()
    await smp.handshake()
    yield smp
    await smp.close()


def _echo(text: str, sequence: int) -> bytes:
    return commands.encode_echo(sequence, text)


async def test_handshake_reads_the_builds_parameters_and_echo_answers(session: SmpSession) -> None:
    """MCUmgr parameters are the manifest's (2048 x 2); frames stay within one 1500-byte datagram."""
    assert session.params == commands.McumgrParams(buf_size=2048, buf_count=2)
    assert session.transport.max_frame_bytes == 1472
    reply = await session.request(functools.partial(_echo, "hello zephyr"))
    assert reply.raise_for_error() == {"r": "hello zephyr"}


async def test_group_128_is_reported_absent_not_as_a_failure(session: SmpSession) -> None:
    """The build has no Memfault group: rc 8, which the agent classifies as NO_GROUP."""
    reply = await session.request(group128.encode_device_info_read)
    with pytest.raises(SmpDeviceError) as raised:
        reply.raise_for_error()
    assert (raised.value.group, raised.value.rc, raised.value.group_error) == (128, McumgrErr.ENOTSUP, False)
    assert group128.classify_error(raised.value) is MemfaultAccess.NO_GROUP


async def test_the_default_window_keeps_one_request_in_flight_and_loses_none(
    device: NativeSimUdp, session: SmpSession
) -> None:
    """buf_count 2 gives a window of 1: twelve echoes, no drop on the device, nothing sent twice."""
    texts = [f"one-{index}" for index in range(12)]
    report = await request_pipelined(
        session, [functools.partial(_echo, text) for text in texts], timeout_s=ECHO_TIMEOUT_S
    )
    assert [reply.raise_for_error()["r"] for reply in report.replies] == texts
    assert report.window_sizes == (1,)
    assert report.resent == 0
    assert device.count(NO_BUFFER_PATTERN) == 0


async def test_a_window_above_the_real_pool_shrinks_and_every_dropped_request_is_sent_again(
    device: NativeSimUdp, session: SmpSession
) -> None:
    """Four in flight against a pool that holds one: the device drops, the agent resends and shrinks."""
    texts = [f"burst-{index}" for index in range(24)]
    report = await request_pipelined(
        session,
        [functools.partial(_echo, text) for text in texts],
        window=WindowLimits(initial=4, maximum=4),
        timeout_s=ECHO_TIMEOUT_S,
    )
    assert [reply.raise_for_error()["r"] for reply in report.replies] == texts
    # The log comes through a pipe and may lag the replies: wait for the drops the agent saw.
    with contextlib.suppress(TimeoutError):
        await device.wait_for_log(NO_BUFFER_PATTERN, at_least=report.resent, timeout_s=LOG_LAG_TIMEOUT_S)
    drops = device.count(NO_BUFFER_PATTERN)
    assert drops > 0, "the real build should have dropped requests beyond its pool"
    assert report.resent == drops  # every drop detected and sent again, nothing else resent
    assert report.window_sizes[0] == 4
    assert report.window_smallest == 1
    assert session.counters.overtaken + session.counters.timeouts == drops
