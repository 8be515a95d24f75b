"""Moves an image to a device as fast as the link allows: the upload window driven over a session.

Starts with `buf_count - 1` requests in flight (Nordic's pipelining) and lets the window follow the
device (`agent.smp.upload.WindowControl`): a request lost or skipped halves it, clean replies grow
it back. Follows the offsets the device reports, gives the first chunk a long timeout (the device
erases the slot), and resumes by sha after a reconnect, so a dropped link costs only the requests
that were in flight.

A device answers requests in the order it receives them (Zephyr's SMP work queue is FIFO), so a
reply to a later request while an earlier one is unanswered means the device dropped the earlier
one (with a pool shared by requests and replies, Zephyr drops a request that finds no free
net_buf). That request is given up at once and sent again, instead of after its timeout.
`request_pipelined` drives any batch of idempotent requests through the same window.
"""

import asyncio
import bisect
import functools
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, assert_never

from agent.errors import LinkClosed, LinkTimeout, SmpRemoteError
from agent.link.session import SmpSession
from agent.smp import commands
from agent.smp.frame import Reply
from agent.smp.upload import DEFAULT_MAX_WINDOW, Chunk, UploadWindow, WindowControl, WindowLimits

DEFAULT_FIRST_TIMEOUT_S: Final = 40.0
DEFAULT_CHUNK_TIMEOUT_S: Final = 5.0
DEFAULT_MAX_RECONNECTS: Final = 3
DEFAULT_MAX_ATTEMPTS: Final = 5
MAX_WINDOW: Final = DEFAULT_MAX_WINDOW


@dataclass(frozen=True, slots=True)
class UploadReport:
    """What an upload cost."""

    total_bytes: int
    bytes_sent: int
    chunks_sent: int
    rewinds: int
    reconnects: int
    window: int
    """The window it started with."""
    frame_limit_bytes: int
    window_smallest: int = 0
    window_final: int = 0
    window_decreases: int = 0
    window_increases: int = 0
    overtaken: int = 0
    """Chunks the device skipped (a later one was answered first), sent again at once."""


def default_window(session: SmpSession) -> int:
    """Requests to keep in flight: one less than the device's buffers, as Nordic advises."""
    return WindowLimits().start(None if session.params is None else session.params.buf_count)


def window_control(session: SmpSession, window: int | WindowLimits | None) -> WindowControl:
    """The window for this session's device: a fixed start (a number) or limits (None: defaults).

    Raises:
        ValueError: a number below 1.
    """
    match window:
        case None:
            limits = WindowLimits()
        case int():
            limits = WindowLimits(initial=window, maximum=max(window, DEFAULT_MAX_WINDOW))
        case WindowLimits():
            limits = window
        case _:
            assert_never(window)
    return WindowControl(limits.start(None if session.params is None else session.params.buf_count), limits)


async def upload_image(
    session: SmpSession,
    image: bytes,
    *,
    upgrade: bool,
    window: int | WindowLimits | None = None,
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
        window: the first window (a number) or the window's limits; default `buf_count - 1`.
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
    control = window_control(session, window)
    window_size = control.size
    frame_limit = session.transport.max_frame_bytes

    def overhead(offset: int, is_first: bool) -> int:
        return len(commands.encode_upload(0, offset, b"", first if is_first else None))

    plan = UploadWindow(len(image), window=control, overhead_bytes=overhead, frame_limit_bytes=frame_limit)
    loop = asyncio.get_running_loop()
    in_flight: dict[asyncio.Future[Reply], tuple[Chunk, float]] = {}
    reconnects = 0
    overtaken = 0
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
                overtaken += await _settle_one_or_more(session, plan, in_flight, loop)
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
        window_smallest=control.smallest,
        window_final=control.size,
        window_decreases=control.decreases,
        window_increases=control.increases,
        overtaken=overtaken,
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
) -> int:
    """Wait for at least one reply or one expired deadline and feed the results to the plan.

    Returns how many chunks were given up as overtaken (the device answered a later one first).
    """
    if not in_flight:
        return 0
    earliest = min(deadline for _, deadline in in_flight.values())
    done, _ = await asyncio.wait(
        in_flight, timeout=max(0.0, earliest - loop.time()), return_when=asyncio.FIRST_COMPLETED
    )
    # The answered requests go first: their offsets tell whether an overtaken one reached the
    # device (only its reply was lost: nothing to resend) or was dropped (resend from the offset).
    skipped = [(future, in_flight.pop(future)[0]) for future in _overtaken(in_flight, done)]
    for future in [future for future in in_flight if future in done]:  # in the order they were sent
        chunk, _ = in_flight.pop(future)
        try:
            ack = commands.parse_upload_ack(future.result().raise_for_error())
        except (LinkTimeout, SmpRemoteError, asyncio.CancelledError):
            plan.on_lost(chunk)
            continue
        plan.on_ack(chunk, ack.off, ack.match)
    for future, chunk in skipped:
        session.forget_overtaken(future)
        plan.on_lost(chunk)
    overtaken = len(skipped)
    now = loop.time()
    for future, (chunk, deadline) in list(in_flight.items()):
        if deadline <= now and not future.done():
            del in_flight[future]
            session.abandon(future)
            plan.on_lost(chunk)
    return overtaken


def _overtaken(
    in_flight: Mapping[asyncio.Future[Reply], object], done: set[asyncio.Future[Reply]]
) -> list[asyncio.Future[Reply]]:
    """Requests still unanswered that were sent before one the device has answered."""
    order = list(in_flight)
    answered = [index for index, future in enumerate(order) if future in done and _answered(future)]
    if not answered:
        return []
    return [future for future in order[: answered[-1]] if future not in done]


def _answered(future: asyncio.Future[Reply]) -> bool:
    return not future.cancelled() and future.exception() is None


@dataclass(frozen=True, slots=True)
class PipelineReport:
    """The replies of a pipelined batch, in request order, and what the window did."""

    replies: tuple[Reply, ...]
    sent: int
    resent: int
    timeouts: int
    overtaken: int
    window_sizes: tuple[int, ...]
    """Every size the window took, in order."""
    window_smallest: int
    window_final: int


async def request_pipelined(
    session: SmpSession,
    builds: Sequence[Callable[[int], bytes]],
    *,
    window: int | WindowLimits | None = None,
    timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> PipelineReport:
    """Send idempotent requests (each built for a sequence number) through the device's window.

    A request whose reply does not come in `timeout_s`, or that the device skipped, is sent again
    (before any later one) and shrinks the window; the replies are returned in request order
    whatever they say (device errors included: the caller reads them).

    Raises:
        SmpRemoteError: a request went unanswered `max_attempts` times, or a reply was malformed.
        LinkClosed: the link dropped.
    """
    control = window_control(session, window)
    loop = asyncio.get_running_loop()
    waiting = list(range(len(builds)))
    attempts = [0] * len(builds)
    replies: list[Reply | None] = [None] * len(builds)
    in_flight: dict[asyncio.Future[Reply], tuple[int, int, float]] = {}
    sent = timeouts = overtaken = 0

    def lost(index: int, epoch: int) -> None:
        control.on_loss(epoch)
        bisect.insort(waiting, index)

    try:
        while waiting or in_flight:
            while waiting and len(in_flight) < control.size:
                index = waiting.pop(0)
                attempts[index] += 1
                if attempts[index] > max_attempts:
                    raise SmpRemoteError(f"request {index} went unanswered {max_attempts} times")
                future = await session.start_request(builds[index])
                sent += 1
                in_flight[future] = (index, control.epoch, loop.time() + timeout_s)
            earliest = min(deadline for _, _, deadline in in_flight.values())
            done, _ = await asyncio.wait(
                in_flight, timeout=max(0.0, earliest - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            for future in _overtaken(in_flight, done):
                index, epoch, _ = in_flight.pop(future)
                session.forget_overtaken(future)
                overtaken += 1
                lost(index, epoch)
            for future in [future for future in in_flight if future in done]:
                index, epoch, _ = in_flight.pop(future)
                try:
                    replies[index] = future.result()
                except (LinkTimeout, asyncio.CancelledError):
                    lost(index, epoch)
                    continue
                control.on_reply()
            now = loop.time()
            for future, (index, epoch, deadline) in list(in_flight.items()):
                if deadline <= now and not future.done():
                    del in_flight[future]
                    session.abandon(future)
                    timeouts += 1
                    lost(index, epoch)
    finally:
        for future in in_flight:
            session.abandon(future)
    answered = tuple(reply for reply in replies if reply is not None)
    if len(answered) != len(builds):  # the loop only ends when every request has its reply
        raise SmpRemoteError("a pipelined request ended without a reply")
    return PipelineReport(
        replies=answered,
        sent=sent,
        resent=sent - len(builds),
        timeouts=timeouts,
        overtaken=overtaken,
        window_sizes=tuple(control.sizes),
        window_smallest=control.smallest,
        window_final=control.size,
    )


def _abandon_all(session: SmpSession, in_flight: dict[asyncio.Future[Reply], tuple[Chunk, float]]) -> None:
    for future in in_flight:
        session.abandon(future)
    in_flight.clear()
