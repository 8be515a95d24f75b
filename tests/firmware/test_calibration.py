"""The simulator answers and drops like the real native_sim_udp build: same bursts, same oversized frames.

Each case sends the same datagrams to the real Zephyr 4.4.0 build and to the simulator's calibrated
device (`simulator.device.calibration`), then asserts both answered the same requests with the
same replies and that each device's own drop count accounts for every unanswered one.

Which datagrams of a burst a device answers depends on when it reads them, so a burst is queued
whole before the device reads any of it: the real build is stopped (SIGSTOP) while it is sent, and
the simulator shares this test's event loop, which does not run while the burst is sent. From
there both are deterministic (native_sim runs Zephyr on a simulated clock; the simulator feeds a
queued burst at one time and spaces the reads by its link model), however loaded the machine.
Knowing when a device has finished with a burst is an event, not a delay: every datagram is
answered or counted as a drop (the build's log line, the simulator's counter), and then one fence
echo, which the idle device answers, shows every reply the burst will ever get has come (both
devices answer in the order they read).
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

from agent.link.image_upload import request_pipelined
from agent.link.session import SmpSession
from agent.link.transport.udp import UdpTransport
from agent.smp import commands
from agent.smp.upload import WindowLimits
from simulator.device.calibration import native_sim_udp_device
from simulator.server import FleetServer
from tests.firmware.native_sim import NO_BUFFER_PATTERN, native_sim_udp

HEADER = struct.Struct("!BBHHBB")
FENCE_SEQUENCE = 250
SETTLE_TIMEOUT_S = 10.0
"""How long a device may take to answer or count every datagram (milliseconds when all is well;
the time only runs out when a datagram went unaccounted, and the assertions then say which)."""


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


class _Replies(asyncio.DatagramProtocol):
    """Every reply one socket receives, in arrival order."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.frames.append(data)
        self._arrived.set()

    async def more_than(self, count: int) -> None:
        """Return once more than `count` replies have arrived."""
        while len(self.frames) <= count:
            self._arrived.clear()
            await self._arrived.wait()

    def sequences(self) -> set[int]:
        """The sequence numbers answered so far."""
        return {HEADER.unpack_from(reply)[4] for reply in self.frames}


@dataclass
class Target:
    """A device under test: how to reach it, its own count of no-buffer drops, how to hold its reads."""

    name: str
    address: tuple[str, int]
    make_socket: Callable[[], socket.socket]
    drops: Callable[[], int]
    counted: Callable[[int], Awaitable[None]]
    """Returns once the device's drop count reaches the number given (its log may lag its replies)."""
    held: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    """Keeps the device from reading its socket for the block (the simulator cannot read while
    this test does not yield to the event loop)."""

    async def exchange(self, datagrams: list[bytes]) -> list[Answer]:
        """Queue `datagrams` whole before the device reads any; return every reply they got, in arrival order.

        Also checks that the device's drop count rose by exactly the datagrams that got no reply
        and should have: nothing was lost anywhere else. Datagrams are told apart by the sequence
        number of their first request; one shorter than a header is silence by smp.c's rules.
        """
        loop = asyncio.get_running_loop()
        sock = self.make_socket()
        sock.connect(self.address)
        replies = _Replies()
        transport, _ = await loop.create_datagram_endpoint(lambda: replies, sock=sock)
        requests = [_sequences(datagram) for datagram in datagrams if len(datagram) >= HEADER.size]
        drops_before = self.drops()
        try:
            with self.held():
                for datagram in datagrams:
                    sock.send(datagram)  # raises rather than queue in the transport: all or nothing
            with contextlib.suppress(TimeoutError):  # the assertions below say what is missing
                await self._accounted(replies, requests, drops_before)
            # Every datagram is answered in full or dropped, so the device is idle and answers the
            # fence (a busy one would drop it), and it answers it after any reply it still owed.
            sock.send(frame(0, 0, {"d": "fence"}, op=2, sequence=FENCE_SEQUENCE))
            try:
                async with asyncio.timeout(SETTLE_TIMEOUT_S):
                    while FENCE_SEQUENCE not in replies.sequences():
                        await replies.more_than(len(replies.frames))
            except TimeoutError:
                raise AssertionError(f"{self.name} never answered the fence") from None
        finally:
            transport.close()
        answers = []
        for reply in replies.frames:
            first, _, _, group, sequence, command = HEADER.unpack_from(reply)
            if sequence == FENCE_SEQUENCE:
                break
            answers.append((sequence, first & 7, group, command, cbor2.loads(reply[8:])))
        answered = {answer[0] for answer in answers}
        unanswered = sum(sequences[0] not in answered for sequences in requests)
        assert self.drops() - drops_before == unanswered, f"{self.name} lost datagrams it did not count"
        return answers

    async def _accounted(self, replies: _Replies, requests: list[list[int]], drops_before: int) -> None:
        """Return once every datagram (its `requests`' sequences) is answered in full or counted dropped."""
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            while True:
                seen, drops = len(replies.frames), self.drops()
                answered = replies.sequences()
                in_full = sum(set(sequences) <= answered for sequences in requests)
                if drops - drops_before + in_full >= len(requests):
                    return
                await _first(replies.more_than(seen), self.counted(drops + 1))


def _sequences(datagram: bytes) -> list[int]:
    """The sequence numbers of the requests packed in `datagram`, in order (the last may be cut short)."""
    sequences = []
    offset = 0
    while offset + HEADER.size <= len(datagram):
        _, _, length, _, sequence, _ = HEADER.unpack_from(datagram, offset)
        sequences.append(sequence)
        offset += HEADER.size + length
    return sequences


async def _first(*waits: Awaitable[None]) -> None:
    """Return once any of `waits` has; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


@pytest.fixture
async def targets() -> AsyncIterator[tuple[Target, Target]]:
    """The real build (in its own namespace) and the calibrated simulated device (on loopback)."""
    device = native_sim_udp_device()
    async with (
        native_sim_udp() as real,
        FleetServer([device], base_host="127.0.0.1", port_per_device=True) as sim,
    ):
        yield (
            Target(
                "native_sim_udp",
                real.address,
                real.socket_factory(),
                lambda: real.count(NO_BUFFER_PATTERN),
                lambda drops: real.wait_for_log(
                    NO_BUFFER_PATTERN, at_least=drops, timeout_s=SETTLE_TIMEOUT_S
                ),
                real.paused,
            ),
            Target(
                "simulator",
                sim.endpoints[device.identity.serial],
                _nonblocking_socket,
                lambda: device.counters.no_buffer_drops,
                lambda drops: sim.wait_until(
                    lambda: device.counters.no_buffer_drops >= drops, timeout_s=SETTLE_TIMEOUT_S
                ),
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
    """Echoes queued in one go: both read the next while one is processed and drop it: 0, 2, 4... answer."""
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
            await target.counted(drops_before + report.resent)
        assert [reply.raise_for_error()["r"] for reply in report.replies] == texts, target.name
        assert report.resent == target.drops() - drops_before > 0, target.name
        assert (report.window_sizes[0], report.window_smallest) == (4, 1), target.name


def _echo(text: str, sequence: int) -> bytes:
    return commands.encode_echo(sequence, text)
