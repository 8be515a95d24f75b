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
- Up to `window` requests are in flight, including stale ones, because each occupies one of the
  device's `buf_count` network buffers until it is answered.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agent.errors import SmpRemoteError

DEFAULT_ALIGNMENT_BYTES: Final = 4
DEFAULT_MAX_STALLS: Final = 5


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
        window: int,
        overhead_bytes: Callable[[int, bool], int],
        frame_limit_bytes: int,
        alignment_bytes: int = DEFAULT_ALIGNMENT_BYTES,
        max_stalls: int = DEFAULT_MAX_STALLS,
    ) -> None:
        """Plan an upload of `total_bytes`.

        Args:
            total_bytes: size of the file.
            window: requests allowed in flight (Nordic's advice: the device's buf_count - 1).
            overhead_bytes: frame size of a chunk at `offset` with no data (`first` selects the
                first-chunk fields); the data goes in the rest of `frame_limit_bytes`.
            frame_limit_bytes: the largest frame the device accepts (its `buf_size`).
            alignment_bytes: chunk sizes are a multiple of this, except the last.
            max_stalls: consecutive chunks lost or rejected without progress before giving up.
        """
        if total_bytes <= 0 or window < 1 or alignment_bytes < 1:
            raise ValueError("an upload needs bytes, a window of at least 1 and a positive alignment")
        self.total_bytes = total_bytes
        self._window = window
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
        for head_bytes, limit in ((1, 24), (2, 256), (3, 65536), (5, 1 << 32)):
            size = available - head_bytes
            if size < limit:
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
            and len(self._in_flight) < self._window
            and self._next_offset < self.total_bytes
        ):
            chunk = self._issue(self._next_offset, first=False)
            self._next_offset += chunk.size_bytes
            chunks.append(chunk)
        return chunks

    def _issue(self, offset: int, *, first: bool) -> Chunk:
        chunk = Chunk(offset, self.chunk_size(offset, first=first), first, self._generation)
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
            return
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
