"""Moves an image to a device as fast as the link allows: the upload window driven over a session.

Keeps up to `buf_count - 1` requests in flight (Nordic's pipelining), follows the offsets the
device reports, gives the first chunk a long timeout (the device erases the slot), and resumes by
sha after a reconnect, so a dropped link costs only the requests that were in flight.
"""

import asyncio
import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from agent.errors import LinkClosed, LinkTimeout, SmpRemoteError
from agent.session import SmpSession
from agent.smp import commands
from agent.smp.frame import Reply
from agent.smp.upload import Chunk, UploadWindow

DEFAULT_FIRST_TIMEOUT_S: Final = 40.0
DEFAULT_CHUNK_TIMEOUT_S: Final = 5.0
DEFAULT_MAX_RECONNECTS: Final = 3
MAX_WINDOW: Final = 8


@dataclass(frozen=True, slots=True)
class UploadReport:
    """What an upload cost."""

    total_bytes: int
    bytes_sent: int
    chunks_sent: int
    rewinds: int
    reconnects: int
    window: int
    frame_limit_bytes: int


def default_window(session: SmpSession) -> int:
    """Requests to keep in flight: one less than the device's buffers, as Nordic advises."""
    if session.params is None:
        return 1
    return max(1, min(session.params.buf_count - 1, MAX_WINDOW))


async def upload_image(
    session: SmpSession,
    image: bytes,
    *,
    upgrade: bool,
    window: int | None = None,
    first_timeout_s: float = DEFAULT_FIRST_TIMEOUT_S,
    chunk_timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S,
    on_progress: Callable[[int], None] | None = None,
    reconnect: Callable[[], Awaitable[None]] | None = None,
    max_reconnects: int = DEFAULT_MAX_RECONNECTS,
) -> UploadReport:
    """Upload `image` to the device's secondary slot.

    Args:
        session: an open session whose handshake has run (for `buf_size` and `buf_count`).
        image: the whole file.
        upgrade: ask the device to refuse an image that is not newer than the running one.
        window: requests in flight; default from the device's `buf_count`.
        first_timeout_s: timeout of the first chunk (the device may erase the slot first).
        chunk_timeout_s: timeout of every other chunk.
        on_progress: called with the bytes the device has acknowledged.
        reconnect: re-establishes the link after a drop; the upload then resumes by sha.
        max_reconnects: drops tolerated before giving up.

    Raises:
        SmpDeviceError: the device refused the upload (e.g. not newer, no free slot).
        UploadStalled, UploadMismatch: see agent.smp.upload.
        LinkClosed: the link dropped more than `max_reconnects` times.
    """
    first = commands.FirstChunkFields(len(image), hashlib.sha256(image).digest(), upgrade)
    window_size = window or default_window(session)
    frame_limit = session.transport.max_frame_bytes

    def overhead(offset: int, is_first: bool) -> int:
        return len(commands.encode_upload(0, offset, b"", first if is_first else None))

    plan = UploadWindow(
        len(image), window=window_size, overhead_bytes=overhead, frame_limit_bytes=frame_limit
    )
    loop = asyncio.get_running_loop()
    in_flight: dict[asyncio.Future[Reply], tuple[Chunk, float]] = {}
    reconnects = 0
    try:
        while not plan.done:
            try:
                for chunk in plan.next_chunks():
                    data = image[chunk.offset : chunk.offset + chunk.size_bytes]
                    build = functools.partial(
                        _encode_chunk, offset=chunk.offset, data=data, first=first if chunk.first else None
                    )
                    future = await session.start_request(build)
                    timeout_s = first_timeout_s if chunk.first else chunk_timeout_s
                    in_flight[future] = (chunk, loop.time() + timeout_s)
                await _settle_one_or_more(session, plan, in_flight, loop)
            except LinkClosed:
                reconnects += 1
                if reconnect is None or reconnects > max_reconnects:
                    raise
                _abandon_all(session, in_flight)
                await reconnect()
                plan.restart_after_reconnect()
            if on_progress is not None:
                on_progress(plan.acknowledged_bytes)
    finally:
        _abandon_all(session, in_flight)
    return UploadReport(
        total_bytes=len(image),
        bytes_sent=plan.bytes_sent,
        chunks_sent=plan.chunks_sent,
        rewinds=plan.rewinds,
        reconnects=reconnects,
        window=window_size,
        frame_limit_bytes=frame_limit,
    )


def _encode_chunk(
    sequence: int, *, offset: int, data: bytes, first: commands.FirstChunkFields | None
) -> bytes:
    return commands.encode_upload(sequence, offset, data, first)


async def _settle_one_or_more(
    session: SmpSession,
    plan: UploadWindow,
    in_flight: dict[asyncio.Future[Reply], tuple[Chunk, float]],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Wait for at least one reply or one expired deadline and feed the results to the plan."""
    if not in_flight:
        return
    earliest = min(deadline for _, deadline in in_flight.values())
    done, _ = await asyncio.wait(
        in_flight, timeout=max(0.0, earliest - loop.time()), return_when=asyncio.FIRST_COMPLETED
    )
    for future in done:
        chunk, _ = in_flight.pop(future)
        try:
            ack = commands.parse_upload_ack(future.result().raise_for_error())
        except (LinkTimeout, SmpRemoteError, asyncio.CancelledError):
            plan.on_lost(chunk)
            continue
        plan.on_ack(chunk, ack.off, ack.match)
    now = loop.time()
    for future, (chunk, deadline) in list(in_flight.items()):
        if deadline <= now and not future.done():
            del in_flight[future]
            session.abandon(future)
            plan.on_lost(chunk)


def _abandon_all(session: SmpSession, in_flight: dict[asyncio.Future[Reply], tuple[Chunk, float]]) -> None:
    for future in in_flight:
        session.abandon(future)
    in_flight.clear()
