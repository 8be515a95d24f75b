"""The transport interface the SMP session drives: send whole frames, receive whole frames."""

from collections.abc import Callable
from typing import Protocol

FrameHandler = Callable[[bytes], None]
"""Called with each complete SMP frame the device sends."""
CloseHandler = Callable[[Exception | None], None]
"""Called once when the link drops (with the cause) or is closed by us (None)."""


class SmpTransport(Protocol):
    """A link to one device that carries complete SMP frames in both directions."""

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame this link can send to the device in one piece."""
        ...

    def set_frame_limit(self, buf_size_bytes: int) -> None:
        """Cap frames at the device's SMP buffer size (MCUmgr parameters `buf_size`)."""
        ...

    async def open(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Connect; afterwards every received frame goes to `on_frame`.

        Raises:
            DeviceUnreachable: the link could not be established.
        """
        ...

    async def send(self, frame: bytes) -> None:
        """Send one complete frame.

        Raises:
            SmpLocalError: the frame is larger than `max_frame_bytes`.
            LinkClosed: the link is down.
        """
        ...

    async def reset(self) -> None:
        """Drop anything half-received and any late replies still in buffers (after a timeout)."""
        ...

    async def close(self) -> None:
        """Close the link; idempotent."""
        ...
