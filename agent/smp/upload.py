"""The pipelined upload window: which image chunks to send next, following the device's offsets.

Rules of this file:
- It does no I/O and reads no clock. The caller sends the chunks it hands out and reports back,
  for each one, the offset the device acknowledged (`on_ack`) or that the reply never came
  (`on_lost`).
- The device is the authority on progress. Zephyr writes only the chunk at the offset it expects,
  drops any other and answers with the offset it expects (img_mgmt.c), so the window rewinds to
  that offset. A rewind starts a new generation: replies to chunks sent before it can still report
  progress but never trigger another rewind, so one lost chunk costs one rewind, not a storm.
- The first chunk (offset 0) carries the file's length and sha and travels alone: its reply may
  take long (the device erases the slot) and tells where to resume when the device already holds
  part of this file. A reply of offset 0 in the middle of an upload means the device lost its
  upload state (it rebooted), so the window starts over with a first chunk.
- Up to `window.size` requests are in flight, including stale ones, because each may occupy one of
  the device's network buffers until it is answered.
- The window follows the device (`WindowControl`, AIMD): it starts at `buf_count - 1` (Nordic's
  advice), halves when a request of the current window is lost (no reply, or the device reports it
  missed a chunk), and grows by one after `grow_after` clean replies, up to the start. A size that
  lost a request becomes a ceiling, probed again only after `probe_after` clean replies (doubled
  after each failed probe), so a device whose pool is smaller than it says (Zephyr shares it
  between requests and replies: with buf_count 2 only one request fits) settles at what it
  really holds instead of losing a request every few replies.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agent.errors import SmpRemoteError
from agent.smp.frame import cbor_head_size

DEFAULT_ALIGNMENT_BYTES: Final = 4
DEFAULT_MAX_STALLS: Final = 5
DEFAULT_MAX_WINDOW: Final = 8
DEFAULT_GROW_AFTER: Final = 16
DEFAULT_PROBE_AFTER: Final = 64


class UploadStalled(SmpRemoteError):
    """The device made no progress over too many consecutive lost or rejected chunks."""


class UploadMismatch(SmpRemoteError):
    """The device finished the upload but reported `match: false` against the file's sha."""


@dataclass(frozen=True, slots=True, eq=False)
class Chunk:
    """One upload request to send: `size_bytes` of the file from `offset`.

    Compared by identity, so the same range sent twice is two chunks.
    """

    offset: int
    size_bytes: int
    first: bool
    """True when the request must carry the first-chunk fields (len, sha, upgrade, image)."""
    generation: int
    epoch: int = 0
    """The window's epoch when the chunk was sent (`WindowControl`)."""


@dataclass(frozen=True, slots=True)
class WindowLimits:
    """How the window of requests in flight starts and may move (agent config `[jobs.window]`)."""

    initial: int | None = None
    """Requests in flight at the start; None: the device's `buf_count - 1`."""
    minimum: int = 1
    maximum: int = DEFAULT_MAX_WINDOW
    grow_after: int = DEFAULT_GROW_AFTER
    """Clean replies in a row before the window grows by one."""
    probe_after: int = DEFAULT_PROBE_AFTER
    """Clean replies in a row before a size that lost a request is tried again."""

    def __post_init__(self) -> None:
        """Reject limits no window can satisfy."""
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"window limits need 1 <= minimum <= maximum: {self.minimum}, {self.maximum}")
        if self.initial is not None and not self.minimum <= self.initial <= self.maximum:
            raise ValueError(f"initial window {self.initial} outside [{self.minimum}, {self.maximum}]")
        if self.grow_after < 1 or self.probe_after < 1:
            raise ValueError("grow_after and probe_after must be at least 1")

    def start(self, buf_count: int | None) -> int:
        """The first window for a device reporting `buf_count` (None: unknown, one at a time)."""
        if self.initial is not None:
            return self.initial
        wanted = 1 if buf_count is None else buf_count - 1
        return max(self.minimum, min(wanted, self.maximum))


class WindowControl:
    """The AIMD window of requests in flight (module docstring); pure, fed replies and losses.

    Every request is tagged with the `epoch` current when it was sent; a change of size starts a
    new epoch, and a loss from an earlier epoch changes nothing (the window already answered the
    congestion that caused it), so one burst of drops halves the window once, not once per drop.
    """

    def __init__(self, start: int, limits: WindowLimits | None = None) -> None:
        """A window of `start` requests, never above `start` nor outside `limits`' bounds."""
        self.limits = limits or WindowLimits(maximum=max(start, 1))
        self.size = max(self.limits.minimum, min(start, self.limits.maximum))
        self.limit = self.size
        self._ceiling = self.size
        self._probe_after = self.limits.probe_after
        self._clean = 0
        self._probed = False
        self.epoch = 0
        self.decreases = 0
        self.increases = 0
        self.smallest = self.size
        self.sizes: list[int] = [self.size]
        """Every size the window took, in order (for reports and tests)."""

    def on_reply(self) -> None:
        """A request of the window was answered as expected."""
        self._clean += 1
        if self.size >= self.limit:
            return
        probing = self.size >= self._ceiling
        if self._clean < (self._probe_after if probing else self.limits.grow_after):
            return
        if probing:
            self._ceiling = self.size + 1
        self._probed = probing
        self._resize(self.size + 1)
        self.increases += 1

    def on_loss(self, epoch: int) -> None:
        """A request sent in `epoch` was lost (no reply, or the device missed it)."""
        if epoch != self.epoch:
            return
        if self._probed:
            self._probe_after *= 2  # the size just probed lost a request again: probe less often
            self._probed = False
        self._ceiling = max(self.limits.minimum, self.size - 1)
        self.decreases += 1
        self._resize(max(self.limits.minimum, self.size // 2))

    def _resize(self, size: int) -> None:
        self.size = size
        self.smallest = min(self.smallest, size)
        self._clean = 0
        self.epoch += 1
        self.sizes.append(size)


class _Phase(enum.Enum):
    FIRST = "first"
    STREAMING = "streaming"
    DONE = "done"


class UploadWindow:
    """Decides which chunks to send and follows the device's reported offsets."""

    def __init__(
        self,
        total_bytes: int,
        *,
        window: int | WindowControl,
        overhead_bytes: Callable[[int, bool], int],
        frame_limit_bytes: int,
        alignment_bytes: int = DEFAULT_ALIGNMENT_BYTES,
        max_stalls: int = DEFAULT_MAX_STALLS,
    ) -> None:
        """Plan an upload of `total_bytes`.

        Args:
            total_bytes: size of the file.
            window: requests allowed in flight (Nordic's advice: the device's buf_count - 1), or
                the window control that moves it; a number is a window that may shrink and grow
                back to it.
            overhead_bytes: frame size of a chunk at `offset` with no data (`first` selects the
                first-chunk fields); the data goes in the rest of `frame_limit_bytes`.
            frame_limit_bytes: the largest frame the device accepts (its `buf_size`).
            alignment_bytes: chunk sizes are a multiple of this, except the last.
            max_stalls: consecutive chunks lost or rejected without progress before giving up.
        """
        if isinstance(window, int):
            if window < 1:
                raise ValueError("an upload needs a window of at least 1")
            window = WindowControl(window)
        if total_bytes <= 0 or alignment_bytes < 1:
            raise ValueError("an upload needs bytes and a positive alignment")
        self.total_bytes = total_bytes
        self.window = window
        self._overhead = overhead_bytes
        self._frame_limit = frame_limit_bytes
        self._alignment = alignment_bytes
        self._max_stalls = max_stalls
        self._phase = _Phase.FIRST
        self._device_offset = 0
        self._next_offset = 0
        self._generation = 0
        self._in_flight: set[Chunk] = set()
        self._stalls = 0
        self.rewinds = 0
        self.chunks_sent = 0
        self.bytes_sent = 0

    @property
    def done(self) -> bool:
        """True once the device acknowledged the whole file."""
        return self._phase is _Phase.DONE

    @property
    def acknowledged_bytes(self) -> int:
        """Bytes the device has confirmed writing."""
        return self._device_offset

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered or given up."""
        return len(self._in_flight)

    def chunk_size(self, offset: int, *, first: bool) -> int:
        """Data bytes that fit in one frame for a chunk at `offset`.

        Raises:
            SmpRemoteError: the device's frame limit cannot hold even one aligned unit of data.
        """
        # `overhead_bytes` counts a 1-byte head for the empty data; a longer byte string needs a
        # longer head (2 bytes from 24 bytes of data, 3 from 256, 5 from 65536).
        available = self._frame_limit - self._overhead(offset, first) + 1
        size = 0
        for head_bytes in (1, 2, 3, 5, 9):
            size = available - head_bytes
            if cbor_head_size(size) <= head_bytes:
                break
        remaining = self.total_bytes - offset
        if size >= remaining:
            return remaining
        size -= size % self._alignment
        if size <= 0:
            raise SmpRemoteError(f"a {self._frame_limit}-byte frame cannot carry upload data")
        return size

    def next_chunks(self) -> list[Chunk]:
        """Return the chunks to send now (possibly none); the caller must send all of them."""
        chunks: list[Chunk] = []
        if self._phase is _Phase.FIRST:
            if not self._in_flight:
                chunks.append(self._issue(0, first=True))
            return chunks
        # Replies to stale chunks may have moved the device past our cursor: skip ahead.
        self._next_offset = max(self._next_offset, self._device_offset)
        while (
            self._phase is _Phase.STREAMING
            and len(self._in_flight) < self.window.size
            and self._next_offset < self.total_bytes
        ):
            chunk = self._issue(self._next_offset, first=False)
            self._next_offset += chunk.size_bytes
            chunks.append(chunk)
        return chunks

    def _issue(self, offset: int, *, first: bool) -> Chunk:
        chunk = Chunk(
            offset, self.chunk_size(offset, first=first), first, self._generation, self.window.epoch
        )
        self._in_flight.add(chunk)
        self.chunks_sent += 1
        self.bytes_sent += chunk.size_bytes
        return chunk

    def on_ack(self, chunk: Chunk, device_offset: int, match: bool | None = None) -> None:
        """Record the device's reply to `chunk`: the offset it expects next.

        Raises:
            UploadMismatch: the device completed the file but its sha does not match.
            UploadStalled: too many replies in a row without progress.
            SmpRemoteError: the device reported an offset beyond the file.
        """
        self._in_flight.discard(chunk)
        if self._phase is _Phase.DONE:
            return
        if device_offset > self.total_bytes:
            raise SmpRemoteError(f"device reports offset {device_offset} beyond {self.total_bytes} bytes")
        if device_offset == self.total_bytes:
            if match is False:
                raise UploadMismatch("device reports match=false for the uploaded file")
            self._device_offset = device_offset
            self._phase = _Phase.DONE
            return
        if chunk.generation != self._generation:
            self._note_progress(device_offset)
            return
        if self._phase is _Phase.FIRST or (device_offset == 0 and self._device_offset > 0):
            if self._phase is _Phase.STREAMING:
                # The device forgot the upload (reboot): start over with a first chunk.
                self._restart(first=True)
                return
            self._phase = _Phase.STREAMING
            self._device_offset = device_offset
            self._next_offset = device_offset
            self._stalls = 0
            return
        if device_offset == chunk.offset + chunk.size_bytes:
            self._note_progress(device_offset)
            self.window.on_reply()
            return
        if device_offset < chunk.offset + chunk.size_bytes:
            # The device skipped this chunk: it missed an earlier one (dropped, no buffer).
            self.window.on_loss(chunk.epoch)
        # Dropped (out of order, duplicate) or the device is ahead: resend from its offset.
        progressed = device_offset > self._device_offset
        self._device_offset = max(self._device_offset, device_offset)
        self._next_offset = device_offset
        self._generation += 1
        self.rewinds += 1
        self._count_stall(progressed)

    def on_lost(self, chunk: Chunk) -> None:
        """Record that `chunk`'s reply will not come (timeout or send failure).

        Raises:
            UploadStalled: too many chunks lost in a row without progress.
        """
        self._in_flight.discard(chunk)
        if self._phase is _Phase.DONE or chunk.generation != self._generation:
            return
        if self._phase is _Phase.STREAMING and self._device_offset >= chunk.offset + chunk.size_bytes:
            return  # the device has it (a later reply's offset covers it): only the reply was lost
        self.window.on_loss(chunk.epoch)
        self._restart(first=self._phase is _Phase.FIRST)
        self._count_stall(progressed=False)

    def restart_after_reconnect(self) -> None:
        """Forget what is in flight and start with a first chunk (resume by sha on a new link)."""
        self._restart(first=True)

    def _restart(self, *, first: bool) -> None:
        self._generation += 1
        self.rewinds += 1
        if first:
            self._phase = _Phase.FIRST
            self._in_flight.clear()
        self._next_offset = self._device_offset

    def _note_progress(self, device_offset: int) -> None:
        if device_offset > self._device_offset:
            self._device_offset = device_offset
            self._stalls = 0

    def _count_stall(self, progressed: bool) -> None:
        self._stalls = 0 if progressed else self._stalls + 1
        if self._stalls > self._max_stalls:
            raise UploadStalled(f"no progress at offset {self._device_offset} after {self._stalls} tries")
