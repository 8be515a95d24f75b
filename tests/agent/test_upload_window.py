"""The pipelined upload window against an in-memory model of Zephyr's upload rules."""

import random
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SmpRemoteError
from agent.settings import AgentSettings
from agent.smp import commands
from agent.smp.upload import Chunk, UploadMismatch, UploadStalled, UploadWindow, WindowControl, WindowLimits
from service_runtime.config import load_config
from service_runtime.errors import ConfigError

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


# --- The window that follows the device (WindowControl, AIMD) ---


def test_the_window_starts_one_below_the_devices_buffers_within_its_limits() -> None:
    """buf_count - 1, at least the minimum, at most the maximum; `initial` overrides the device."""
    assert [WindowLimits().start(count) for count in (None, 1, 2, 4, 20)] == [1, 1, 1, 3, 8]
    assert WindowLimits(maximum=2).start(4) == 2
    assert WindowLimits(initial=4).start(2) == 4


@pytest.mark.parametrize(
    "limits",
    [
        {"minimum": 0},
        {"minimum": 3, "maximum": 2},
        {"initial": 9},
        {"initial": 1, "minimum": 2},
        {"grow_after": 0},
        {"probe_after": 0},
    ],
)
def test_contradictory_window_limits_are_refused(limits: dict[str, int]) -> None:
    """Limits no window can satisfy raise at once, not in the middle of an upload."""
    with pytest.raises(ValueError, match=r"window|grow_after"):
        WindowLimits(**limits)


def test_one_burst_of_losses_halves_the_window_once() -> None:
    """Losses of requests sent before the last change do not shrink the window again."""
    control = WindowControl(4)
    sent_epoch = control.epoch
    control.on_loss(sent_epoch)
    control.on_loss(sent_epoch)
    control.on_loss(sent_epoch)
    assert (control.size, control.decreases) == (2, 1)
    control.on_loss(control.epoch)
    assert control.size == 1
    control.on_loss(control.epoch)
    assert control.size == 1  # never below the minimum


def test_clean_replies_grow_the_window_back_but_never_above_its_start() -> None:
    """+1 per `grow_after` clean replies up to the size below the one that lost; then probes only."""
    control = WindowControl(4, WindowLimits(initial=4, maximum=4, grow_after=3, probe_after=10))
    control.on_loss(control.epoch)  # lost at 4: 2, and 3 is the ceiling
    for _ in range(3):
        control.on_reply()
    assert control.size == 3
    for _ in range(9):
        control.on_reply()
    assert control.size == 3  # 4 lost a request: it is probed only after 10 clean replies
    control.on_reply()
    assert control.size == 4
    for _ in range(100):
        control.on_reply()
    assert control.size == 4
    assert control.sizes == [4, 2, 3, 4]


def test_a_failed_probe_makes_the_next_one_wait_twice_as_long() -> None:
    """On a device that really holds one request, probing 2 gets rarer: 4, then 8 clean replies."""
    control = WindowControl(2, WindowLimits(initial=2, maximum=2, grow_after=1, probe_after=4))
    control.on_loss(control.epoch)
    waits = []
    for _ in range(3):
        replies = 0
        while control.size == 1:
            control.on_reply()
            replies += 1
        waits.append(replies)
        control.on_loss(control.epoch)
    assert waits == [4, 8, 16]


@settings(max_examples=80, deadline=None)
@given(
    start=st.integers(1, 8),
    minimum=st.integers(1, 3),
    events=st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=300),
)
def test_the_window_stays_within_its_bounds(start: int, minimum: int, events: list[tuple[bool, int]]) -> None:
    """Whatever replies and losses (of any epoch) arrive, minimum <= size <= start; only losses shrink it."""
    limits = WindowLimits(minimum=min(minimum, start), maximum=8, grow_after=2, probe_after=5)
    control = WindowControl(start, limits)
    for lost, epochs_ago in events:
        before = control.size
        if lost:
            control.on_loss(max(0, control.epoch - epochs_ago))
            assert control.size <= before
        else:
            control.on_reply()
            assert control.size >= before
        assert limits.minimum <= control.size <= max(start, limits.minimum)


def _drive_pool(window: UploadWindow, device: ZephyrUploadModel, image: bytes, *, capacity: int) -> int:
    """Run the window against a device that holds only `capacity` requests at once and drops the rest.

    Requests are answered in order; a dropped one gets no reply, which the driver learns when a later
    request is answered first (the agent's uploader does the same). Returns the requests dropped.
    """
    queue: list[tuple[Chunk, int | None]] = []
    dropped = 0
    steps = 0
    while not window.done:
        steps += 1
        assert steps < 100_000
        for chunk in window.next_chunks():
            if sum(reply is not None for _, reply in queue) >= capacity:
                queue.append((chunk, None))
                dropped += 1
                continue
            queue.append((chunk, device.handle(chunk, image[chunk.offset : chunk.offset + chunk.size_bytes])))
        chunk, reply = queue.pop(0)
        if reply is None:
            window.on_lost(chunk)
        else:
            window.on_ack(chunk, reply)
    return dropped


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(2_000, 40_000),
    start=st.integers(2, 8),
    capacity=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_an_upload_never_stalls_on_a_pool_smaller_than_the_window(
    total: int, start: int, capacity: int, seed: int
) -> None:
    """Starting above what the device holds, the window shrinks to fit and the file arrives whole."""
    image = random.Random(seed).randbytes(total)
    device = ZephyrUploadModel(total)
    window = UploadWindow(total, window=start, overhead_bytes=_overhead, frame_limit_bytes=512)
    dropped = _drive_pool(window, device, image, capacity=capacity)
    assert bytes(device.written) == image
    chunks = -(-total // window.chunk_size(0, first=False))
    if start > capacity:
        assert dropped > 0
        if chunks > 4 * start:  # enough round trips for the window to have halved down to the pool
            assert window.window.smallest <= capacity
    # The first bursts lose what does not fit; after that the window settles instead of losing a
    # request every few replies (a probe of a lost size waits 64 clean replies, then 128...).
    assert dropped <= 2 * start + chunks // 16


def _settings(environ: dict[str, str]) -> AgentSettings:
    return load_config(AgentSettings, None, env_prefix="T", environ={"T__GATEWAY_ID": "gw", **environ})


def test_the_window_is_configured_under_jobs_window() -> None:
    """`[jobs.window]` reaches the uploader's limits; by default the device's buf_count decides."""
    assert _settings({}).jobs.window.limits() == WindowLimits()
    configured = _settings({"T__JOBS__WINDOW__INITIAL": "2", "T__JOBS__WINDOW__GROW_AFTER": "4"})
    assert configured.jobs.window.limits() == WindowLimits(initial=2, grow_after=4)


def test_window_settings_written_out_read_back_the_same() -> None:
    """Settings turned into a document (as a TOML file is written) carry no null and read back equal."""
    written = msgspec.to_builtins(_settings({"T__JOBS__WINDOW__MAXIMUM": "4"}))
    assert written["jobs"]["window"] == {"maximum": 4}
    assert msgspec.convert(written, AgentSettings).jobs.window.limits() == WindowLimits(maximum=4)


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"T__JOBS__WINDOW__INITIAL": "0"}, "$.jobs.window.initial"),
        ({"T__JOBS__WINDOW__MAXIMUM": "33"}, "$.jobs.window.maximum"),
        ({"T__JOBS__WINDOW__MINIMUM": "4", "T__JOBS__WINDOW__MAXIMUM": "2"}, "$.jobs.window"),
        ({"T__JOBS__WINDOW__INITIAL": "9"}, "$.jobs.window"),
        ({"T__JOBS__WINDOW__SIZE": "3"}, "$.jobs.window"),
    ],
)
def test_a_bad_window_setting_stops_the_agent_with_the_key_named(environ: dict[str, str], key: str) -> None:
    """Out-of-range, contradictory or unknown window keys are a ConfigError naming where."""
    with pytest.raises(ConfigError) as raised:
        _settings(environ)
    assert raised.value.key == key
