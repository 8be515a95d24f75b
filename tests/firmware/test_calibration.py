"""The simulator answers and drops like the real native_sim_udp build: same bursts, same oversized frames.

Each case sends the same datagrams, in one go, to the real Zephyr 4.4.0 build and to the simulator's
calibrated device (`simulator.device.calibration`), then asserts both answered the same requests
with the same replies and that each device's own drop count accounts for every unanswered one.
Knowing when a device has finished with a burst is an event, not a delay: after the burst a fence
echo is sent until one is answered, and since both devices answer in the order they read, every
reply the burst will ever get has come by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest

from agent.session import SmpSession
from agent.smp import commands
from agent.smp.upload import WindowLimits
from agent.transport.udp import UdpTransport
from agent.uploader import request_pipelined
from simulator.device.calibration import native_sim_udp_device
from simulator.server import FleetServer
from tests.firmware.native_sim import NO_BUFFER_PATTERN, native_sim_udp

HEADER = struct.Struct("!BBHHBB")
FENCE_SEQUENCE = 250
FENCE_WAIT_S = 0.05
"""How long one fence waits for its reply before the next is sent (the build answers in ~9 ms)."""
MAX_FENCES = 200


def frame(group: int, command: int, body: Any = None, *, op: int = 0, sequence: int = 0) -> bytes:
    """One SMP v2 request frame; `body` None is an empty map."""
    payload = cbor2.dumps({} if body is None else body)
    return HEADER.pack((1 << 3) | op, 0, len(payload), group, sequence, command) + payload


def echo(sequence: int, size_bytes: int = 20) -> bytes:
    """An echo write of exactly `size_bytes`."""
    text_bytes = size_bytes
    while len(built := frame(0, 0, {"d": "y" * text_bytes}, op=2, sequence=sequence)) != size_bytes:
        text_bytes += size_bytes - len(built)
    return built


Answer = tuple[int, int, int, int, Any]
"""(sequence, op, group, command, decoded body) of one reply."""


async def _counted_at_once(drops: int) -> None:
    return


@dataclass
class Target:
    """A device under test: how to make a socket that reaches it, and its own count of no-buffer drops."""

    name: str
    address: tuple[str, int]
    make_socket: Callable[[], socket.socket]
    drops: Callable[[], int]
    logged: Callable[[int], Awaitable[None]] = _counted_at_once
    """Returns once the device's drop count reaches the number given (its log may lag its replies)."""

    async def exchange(self, datagrams: list[bytes]) -> list[Answer]:
        """Send `datagrams` in one go; return every reply they got, in arrival order.

        Also checks that the device's drop count rose by exactly the datagrams (burst and fences)
        that got no reply and should have: nothing was lost anywhere else. Datagrams are told
        apart by the sequence number of their first request.
        """
        loop = asyncio.get_running_loop()
        sock = self.make_socket()
        sock.connect(self.address)
        drops_before = self.drops()
        answers: list[Answer] = []
        fences = 0
        try:
            for datagram in datagrams:
                sock.send(datagram)
            while True:
                fences += 1
                assert fences <= MAX_FENCES, f"{self.name} never answered a fence"
                sock.send(frame(0, 0, {"d": "fence"}, op=2, sequence=FENCE_SEQUENCE))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FENCE_WAIT_S):
                        while True:
                            reply = await loop.sock_recv(sock, 65536)
                            first, _, _, group, sequence, command = HEADER.unpack_from(reply)
                            if sequence == FENCE_SEQUENCE:
                                break
                            answers.append((sequence, first & 7, group, command, cbor2.loads(reply[8:])))
                        break
        finally:
            sock.close()
        answered = {answer[0] for answer in answers}
        # A datagram with a header and no reply was dropped; one shorter than a header is silence
        # by smp.c's rules. Every fence before the answered one was dropped too (replies keep order).
        unanswered = (
            fences
            - 1
            + sum(
                len(datagram) >= HEADER.size and HEADER.unpack_from(datagram)[4] not in answered
                for datagram in datagrams
            )
        )
        with contextlib.suppress(TimeoutError):
            await self.logged(drops_before + unanswered)
        assert self.drops() - drops_before == unanswered, f"{self.name} lost datagrams it did not count"
        return answers


@pytest.fixture
async def targets() -> AsyncIterator[tuple[Target, Target]]:
    """The real build (in its own namespace) and the calibrated simulated device (on loopback)."""
    device = native_sim_udp_device()
    async with (
        native_sim_udp() as real,
        FleetServer([device], base_host="127.0.0.1", port_per_device=True) as sim,
    ):
        nonblocking = _nonblocking_socket
        yield (
            Target(
                "native_sim_udp",
                real.address,
                real.socket_factory(),
                lambda: real.count(NO_BUFFER_PATTERN),
                lambda drops: real.wait_for_log(NO_BUFFER_PATTERN, at_least=drops, timeout_s=2.0),
            ),
            Target(
                "simulator",
                sim.endpoints[device.identity.serial],
                nonblocking,
                lambda: device.counters.no_buffer_drops,
            ),
        )


def _nonblocking_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


async def both(targets: tuple[Target, Target], datagrams: list[bytes]) -> list[Answer]:
    """The answers of both targets to `datagrams`, asserted equal; returns them."""
    real, sim = targets
    real_answers = await real.exchange(datagrams)
    sim_answers = await sim.exchange(datagrams)
    assert sim_answers == real_answers
    return real_answers


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
async def test_a_burst_is_answered_at_the_same_positions(targets: tuple[Target, Target], size: int) -> None:
    """Echoes written in one go: both keep one in flight and drop the next, so 0, 2, 4... answer."""
    answers = await both(targets, [echo(position) for position in range(size)])
    assert [answer[0] for answer in answers] == list(range(0, size, 2))


async def test_bursts_of_oversized_and_mixed_datagrams(targets: tuple[Target, Target]) -> None:
    """Datagrams cut at the MTU are answered rc 9 and hold no buffer; mixed with echoes, they alternate."""
    oversized = await both(targets, [echo(position, 1600) for position in range(3)])
    assert [(answer[0], answer[4]) for answer in oversized] == [
        (0, {"rc": 9}),
        (1, {"rc": 9}),
        (2, {"rc": 9}),
    ]
    mixed = await both(targets, [echo(0), echo(1, 1600), echo(2), echo(3)])
    assert [answer[0] for answer in mixed] == [0, 2]


@pytest.mark.parametrize("size", [1400, 1500, 1501, 2048, 4000])
async def test_the_1500_byte_datagram_limit(targets: tuple[Target, Target], size: int) -> None:
    """Up to 1500 bytes the echo comes back whole; past it, both answer `{"rc": 9}` and nothing else."""
    [(_, op, group, command, body)] = await both(targets, [echo(1, size)])
    assert (op, group, command) == (3, 0, 0)
    if size > 1500:
        assert body == {"rc": 9}
    else:
        assert set(body) == {"r"}
        assert len(body["r"]) > size - 20


async def test_requests_packed_in_one_datagram_are_all_answered(targets: tuple[Target, Target]) -> None:
    """Two requests in one datagram are two replies, in order; a truncated one is rc 9; 3 bytes: silence."""
    assert [answer[0] for answer in await both(targets, [echo(1) + echo(2)])] == [1, 2]
    assert [answer[4] for answer in await both(targets, [echo(3)[:-1]])] == [{"rc": 9}]
    assert await both(targets, [b"\x00\x01\x02"]) == []


@pytest.mark.parametrize(
    ("group", "command", "op", "body"),
    [
        (0, 6, 0, None),  # MCUmgr parameters
        (0, 7, 0, None),  # OS info, no format
        (0, 7, 0, {"format": "s"}),
        (0, 7, 2, None),  # OS info has no write handler
        (0, 8, 0, None),  # bootloader info: not in this build
        (0, 7, 0, {"format": "a"}),
        (0, 7, 0, {"format": "vsvq"}),  # a letter it does not know: group error 2
        (0, 7, 0, {"format": 1}),
        (10, 0, 2, None),  # enumeration count has no write handler
        (10, 2, 0, {"index": 0}),  # enumeration single
        (10, 2, 0, {"index": 100}),
        (10, 2, 0, {"index": "a"}),
        (10, 3, 0, {"groups": [0, 1, 10]}),  # enumeration details of the groups both serve
        (10, 3, 2, None),
        (10, 4, 0, None),
        (1, 0, 0, None),  # no image group
        (128, 0, 0, None),  # no Memfault group
    ],
)
async def test_groups_answer_alike(
    targets: tuple[Target, Target], group: int, command: int, op: int, body: Any
) -> None:
    """OS info, enumeration, parameters and absent groups get the real build's replies exactly.

    (The count, the list and details of every group differ: the build serves five groups the
    simulator has no model of; the next test covers them.)
    """
    await both(targets, [frame(group, command, body, op=op, sequence=7)])


async def test_the_group_list_names_os_and_enumeration_first(targets: tuple[Target, Target]) -> None:
    """The list starts with enumeration, holds OS, and its length is the count (the groups served differ)."""
    for target in targets:
        [count] = await target.exchange([frame(10, 0, sequence=1)])
        [listing] = await target.exchange([frame(10, 1, sequence=2)])
        groups = listing[4]["groups"]
        assert groups[0] == 10
        assert 0 in groups
        assert count[4] == {"count": len(groups)}


async def test_the_agents_window_settles_alike_on_both(targets: tuple[Target, Target]) -> None:
    """Four echoes in flight against either pool: both drop, the agent resends each drop, shrinks to one."""
    texts = [f"calibrate-{index}" for index in range(24)]
    builds = [functools.partial(_echo, text) for text in texts]
    for target in targets:
        host, port = target.address
        session = SmpSession(UdpTransport(host, port, socket_factory=target.make_socket), timeout_s=1.0)
        await session.open()
        try:
            await session.handshake()
            drops_before = target.drops()
            report = await request_pipelined(session, builds, window=WindowLimits(initial=4), timeout_s=1.0)
        finally:
            await session.close()
        with contextlib.suppress(TimeoutError):
            await target.logged(drops_before + report.resent)
        assert [reply.raise_for_error()["r"] for reply in report.replies] == texts, target.name
        assert report.resent == target.drops() - drops_before > 0, target.name
        assert (report.window_sizes[0], report.window_smallest) == (4, 1), target.name


def _echo(text: str, sequence: int) -> bytes:
    return commands.encode_echo(sequence, text)
