"""The pipelined upload window against an in-memory model of Zephyr's upload rules."""

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SmpRemoteError
from agent.smp import commands
from agent.smp.upload import Chunk, UploadMismatch, UploadStalled, UploadWindow

SHA = b"\x07" * 32
FIRST = commands.FirstChunkFields(length_bytes=0, sha256=SHA, upgrade=True)


def _overhead(offset: int, first: bool) -> int:
    return len(commands.encode_upload(0, offset, b"", FIRST if first else None))


@dataclass
class ZephyrUploadModel:
    """img_mgmt's upload rules: write only at the expected offset, else drop and report it."""

    total: int
    expected: int = 0
    sha: bytes | None = None
    written: bytearray = field(default_factory=bytearray)
    writes: int = 0

    def handle(self, chunk: Chunk, data: bytes) -> int:
        if chunk.first and chunk.offset == 0:
            if self.sha == SHA and self.expected > 0:
                return self.expected  # resume by sha: write nothing, report where to continue
            self.sha, self.expected, self.written = SHA, 0, bytearray()
        if chunk.offset != self.expected:
            return self.expected
        self.written += data
        self.writes += 1
        self.expected += len(data)
        return self.expected

    def reboot(self) -> None:
        self.expected, self.sha = 0, None


def _drive(window: UploadWindow, device: ZephyrUploadModel, image: bytes, *, loss: float, seed: int) -> None:
    """Run the window to completion with reordering-free loss, like a UDP link dropping datagrams."""
    rng = random.Random(seed)
    pending: list[tuple[Chunk, int | None]] = []
    steps = 0
    while not window.done:
        steps += 1
        assert steps < 100_000
        for chunk in window.next_chunks():
            if rng.random() < loss:
                pending.append((chunk, None))  # request lost
                continue
            offset = device.handle(chunk, image[chunk.offset : chunk.offset + chunk.size_bytes])
            pending.append((chunk, None if rng.random() < loss else offset))
        answered, reply = pending.pop(0)
        if reply is None:
            window.on_lost(answered)
        else:
            window.on_ack(answered, reply)


def _window(total: int, *, window: int = 3, frame: int = 512) -> UploadWindow:
    return UploadWindow(
        total, window=window, overhead_bytes=_overhead, frame_limit_bytes=frame, max_stalls=50
    )


def test_every_frame_fits_the_device_buffer() -> None:
    """Chunk sizes fill but never exceed the frame limit, first chunk included, aligned to 4."""
    for frame in (100, 256, 512, 1024, 2048):
        window = _window(100_000, frame=frame)
        for offset, first in ((0, True), (1000, False), (70_000, False)):
            size = window.chunk_size(offset, first=first)
            encoded = commands.encode_upload(0, offset, b"\x00" * size, FIRST if first else None)
            assert len(encoded) <= frame
            assert size % 4 == 0
            assert frame - len(encoded) < 8


def test_a_frame_too_small_for_the_first_chunk_is_refused() -> None:
    """A device whose buffer cannot hold the first chunk's fields plus data is an error, not a hang."""
    with pytest.raises(SmpRemoteError, match="cannot carry"):
        _window(1000, frame=64).next_chunks()


def test_first_chunk_travels_alone_then_the_window_fills() -> None:
    """Only the first chunk is sent until its reply; then up to `window` chunks are in flight."""
    window = _window(10_000, window=3)
    first = window.next_chunks()
    assert len(first) == 1 and first[0].first
    assert window.next_chunks() == []
    window.on_ack(first[0], first[0].size_bytes)
    burst = window.next_chunks()
    assert len(burst) == 3
    assert [c.offset for c in burst] == sorted(c.offset for c in burst)
    assert not any(c.first for c in burst)


def test_resume_by_sha_starts_where_the_device_stopped() -> None:
    """When the device already holds part of the file, the first reply moves the window there."""
    image = bytes(range(256)) * 40
    device = ZephyrUploadModel(len(image))
    _drive(_window(len(image)), device, image, loss=0.0, seed=1)
    device.expected = 4000  # as if the upload had stopped at 4000 bytes with the same sha
    window = _window(len(image))
    first = window.next_chunks()[0]
    window.on_ack(first, device.handle(first, image[: first.size_bytes]))
    assert window.acknowledged_bytes == 4000
    assert window.next_chunks()[0].offset == 4000


def test_a_reboot_mid_upload_starts_over_with_a_first_chunk() -> None:
    """A reply of offset 0 after progress means the device lost its state: resend the first chunk."""
    window = _window(5000, window=2)
    first = window.next_chunks()[0]
    window.on_ack(first, first.size_bytes)
    chunk = window.next_chunks()[0]
    window.on_ack(chunk, 0)
    again = window.next_chunks()
    assert len(again) == 1 and again[0].first and again[0].offset == 0


def test_match_false_is_an_error() -> None:
    """The device finishing with match=false fails the upload."""
    window = _window(100)
    first = window.next_chunks()[0]
    with pytest.raises(UploadMismatch):
        window.on_ack(first, 100, match=False)


def test_a_silent_device_stalls_the_upload() -> None:
    """Consecutive losses without progress end in UploadStalled."""
    window = UploadWindow(1000, window=3, overhead_bytes=_overhead, frame_limit_bytes=256, max_stalls=3)

    def lose_everything() -> None:
        for _ in range(10):
            for chunk in window.next_chunks():
                window.on_lost(chunk)

    with pytest.raises(UploadStalled):
        lose_everything()


def test_one_loss_costs_one_rewind_not_a_storm() -> None:
    """A dropped chunk makes its successors' replies report the same offset; only one rewind follows."""
    image = b"\x01" * 20_000
    device = ZephyrUploadModel(len(image))
    window = _window(len(image), window=4)
    first = window.next_chunks()[0]
    window.on_ack(first, device.handle(first, image[: first.size_bytes]))
    burst = window.next_chunks()
    replies: list[int | None] = [None]
    replies += [device.handle(c, image[c.offset : c.offset + c.size_bytes]) for c in burst[1:]]
    for chunk, reply in zip(burst, replies, strict=True):
        if reply is None:
            continue
        window.on_ack(chunk, reply)
    assert window.rewinds == 1
    window.on_lost(burst[0])  # the timeout of the lost one arrives late: stale, no second rewind
    assert window.rewinds == 1
    _drive(window, device, image, loss=0.0, seed=0)
    assert bytes(device.written) == image


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(1, 30_000),
    window_size=st.integers(1, 6),
    frame=st.sampled_from([128, 256, 512, 1024]),
    loss=st.sampled_from([0.0, 0.05, 0.2]),
    seed=st.integers(0, 1000),
)
def test_the_device_ends_with_exactly_the_file(
    total: int, window_size: int, frame: int, loss: float, seed: int
) -> None:
    """Under any window, frame size and loss rate, the device ends up holding exactly the file."""
    image = random.Random(seed).randbytes(total)
    device = ZephyrUploadModel(total)
    window = UploadWindow(
        total, window=window_size, overhead_bytes=_overhead, frame_limit_bytes=frame, max_stalls=1000
    )
    _drive(window, device, image, loss=loss, seed=seed)
    assert bytes(device.written) == image
    assert window.acknowledged_bytes == total
    if loss == 0.0:
        assert window.bytes_sent == total  # no loss: every byte sent exactly once
