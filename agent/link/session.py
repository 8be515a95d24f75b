"""One device's SMP conversation: requests matched to replies by sequence number, one owner at a time.

smpclient has no per-device lock and stays one reply behind forever after a timeout (its issue
#104). Here every request gets its own sequence number and future; a reply whose sequence matches
no pending request is dropped, and after a timeout the transport is reset before the next request,
so a late reply can never be taken for the answer to a newer question.
"""

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agent.errors import DeviceUnreachable, LinkClosed, LinkTimeout, SmpDeviceError, SmpRemoteError
from agent.link.transport.base import SmpTransport
from agent.smp import commands
from agent.smp.frame import McumgrErr, Reply, decode_header, decode_reply

DEFAULT_TIMEOUT_S: Final = 2.5
SEQUENCE_SPACE: Final = 256


@dataclass
class SessionCounters:
    """What happened on this session (read by metrics and tests)."""

    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    stray_replies: int = 0
    """Replies that matched no pending request (late or duplicated) and were dropped."""
    malformed_replies: int = 0
    resets: int = 0
    overtaken: int = 0
    """Requests given up because the device answered a later one first: it processes requests in
    order, so it dropped these (Zephyr: no free net_buf for them) and their replies never come."""


class SmpSession:
    """Sends SMP requests to one device over one transport and matches their replies."""

    def __init__(
        self,
        transport: SmpTransport,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        counters: SessionCounters | None = None,
    ) -> None:
        """Wrap `transport`; call `open()` before the first request.

        `counters` may be shared by many sessions (a process's totals for its metrics).
        """
        self.transport = transport
        self.timeout_s = timeout_s
        self.counters = counters or SessionCounters()
        self.params: commands.McumgrParams | None = None
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._next_sequence = 0
        self._needs_reset = False
        self._closed: Exception | None = None
        self._open = False

    async def open(self) -> None:
        """Open the transport.

        Raises:
            DeviceUnreachable: the link could not be established.
        """
        self._closed = None
        await self.transport.open(self._on_frame, self._on_close)
        self._open = True

    async def reopen(self, handshake_timeout_s: float | None = None) -> None:
        """Close and reopen the transport, then prove the device answers again (after a drop).

        Raises:
            DeviceUnreachable: the device does not answer.
        """
        await self.close()
        self._needs_reset = False
        await self.open()
        await self.handshake(handshake_timeout_s)

    async def close(self) -> None:
        """Close the transport and fail every pending request."""
        self._open = False
        await self.transport.close()
        self._fail_pending(LinkClosed("session closed"))

    async def handshake(self, timeout_s: float | None = None) -> commands.McumgrParams | None:
        """Prove the device answers: read its MCUmgr parameters (a connect counts only after this).

        Returns the parameters, or None when the device does not support the command (it still
        answered, so it is reachable). The transport's frame limit follows `buf_size`.

        Raises:
            DeviceUnreachable: no answer.
        """
        try:
            reply = await self.request(commands.encode_params_read, timeout_s=timeout_s)
            params = commands.parse_params(reply.raise_for_error())
        except LinkTimeout as error:
            raise DeviceUnreachable(f"no answer to the MCUmgr parameters read: {error}") from error
        except SmpDeviceError as error:
            if error.rc != McumgrErr.ENOTSUP:
                raise
            return None
        self.params = params
        self.transport.set_frame_limit(params.buf_size)
        return params

    def _allocate_sequence(self) -> int:
        for _ in range(SEQUENCE_SPACE):
            sequence = self._next_sequence
            self._next_sequence = (self._next_sequence + 1) % SEQUENCE_SPACE
            if sequence not in self._pending:
                return sequence
        raise SmpRemoteError("all 256 sequence numbers are waiting for replies")

    async def start_request(self, build: Callable[[int], bytes]) -> asyncio.Future[Reply]:
        """Send a request built for a fresh sequence number; return the future of its reply.

        Used directly by the pipelined uploader; everyone else calls `request()`.
        """
        if self._closed is not None or not self._open:
            raise LinkClosed(f"link is down: {self._closed}")
        if self._needs_reset:
            self._needs_reset = False
            self.counters.resets += 1
            self._fail_pending(LinkTimeout("abandoned before a transport reset"))
            await self.transport.reset()
        sequence = self._allocate_sequence()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[sequence] = future
        self.counters.requests += 1
        try:
            await self.transport.send(build(sequence))
        except BaseException:
            self._pending.pop(sequence, None)
            raise
        future.add_done_callback(functools.partial(self._forget, sequence))
        return future

    def _forget(self, sequence: int, future: asyncio.Future[Reply]) -> None:
        if self._pending.get(sequence) is future:
            del self._pending[sequence]

    def abandon(self, future: asyncio.Future[Reply]) -> None:
        """Give up on a reply (timed out): its late arrival must not be read as another answer."""
        if not future.done():
            future.cancel()
            self.counters.timeouts += 1
            self._needs_reset = True

    def forget_overtaken(self, future: asyncio.Future[Reply]) -> None:
        """Give up on a reply the device skipped (a later request was answered first).

        Unlike `abandon`, no transport reset follows: the device dropped the request, so no late
        reply can come, and the other requests in flight stay valid.
        """
        if not future.done():
            future.cancel()
            self.counters.overtaken += 1

    async def request(self, build: Callable[[int], bytes], *, timeout_s: float | None = None) -> Reply:
        """Send one request and wait for its reply.

        Raises:
            LinkTimeout: no reply in time (the transport is reset before the next request).
            LinkClosed: the link dropped.
        """
        future = await self.start_request(build)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s or self.timeout_s)
        except TimeoutError:
            self.abandon(future)
            raise LinkTimeout(f"no reply within {timeout_s or self.timeout_s} s") from None

    def _on_frame(self, frame: bytes) -> None:
        try:
            sequence = decode_header(frame).sequence
        except SmpRemoteError:
            self.counters.malformed_replies += 1
            return
        future = self._pending.get(sequence)
        try:
            reply = decode_reply(frame)
        except SmpRemoteError as error:
            self.counters.malformed_replies += 1
            if future is not None and not future.done():
                future.set_exception(error)
            return
        if future is None or future.done():
            self.counters.stray_replies += 1
            return
        self.counters.replies += 1
        future.set_result(reply)

    def _on_close(self, cause: Exception | None) -> None:
        self._closed = cause or LinkClosed("link closed")
        self._open = False
        self._fail_pending(LinkClosed(f"link dropped: {cause}"))

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                # Pipelined requests may have no awaiter any more; that is expected, not a leak.
                future.add_done_callback(_consume_exception)


def _consume_exception(future: asyncio.Future[Reply]) -> None:
    if not future.cancelled():
        future.exception()
