"""The agent paired in memory with the pure simulated device: no socket, no broker.

`SimDevice` is sans-I/O (frames and `now_s` in, timed reply frames out), so, as h11's tests pair
two endpoints, a `MemoryTransport` hands the agent's frames straight to it and schedules its
replies on the event loop's clock. The agent side is the production one: `TransportLink`,
`SmpSession`, the uploader and the OTA flow run unchanged over it. `MemoryMqtt` stands in for the
broker where a test drives a whole `AgentService` built by `build_agent`.

This lives with the tests (the bench may import it too): production and the demo reach devices
over real sockets, and the agent must not depend on the simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from agent.errors import DeviceUnreachable, LinkClosed, SmpLocalError
from agent.factory import LinkOptions, Transports
from agent.link.device_link import TransportLink
from agent.link.session import SessionCounters
from agent.service import MqttHooks
from agent.settings import AgentSettings, UdpDevice
from schemas import TopicKind, channels
from service_runtime.mqtt import Inbound, Outbound
from service_runtime.mqtt_metrics import MqttMetrics
from simulator.device import SimDevice

UNLIMITED_FRAME_BYTES: Final = 65_535
"""Before the handshake reads `buf_size`, as for UDP the datagram is the only limit."""
ReplyFilter = Callable[[bytes], bytes | None]
"""Sees every reply frame before the agent does: returns it (possibly changed) or None to lose it."""


class MemoryDevice:
    """A `SimDevice` on the event loop's clock, reachable through `MemoryTransport`s."""

    def __init__(self, device: SimDevice, *, reply_filter: ReplyFilter | None = None) -> None:
        """Serve `device`; `reply_filter` may rewrite or lose replies (a misbehaving firmware)."""
        self.device = device
        self.reply_filter = reply_filter
        self.reachable = True
        """False: opening a transport fails as an unreachable device would."""
        self.transports: list[MemoryTransport] = []
        self.sent_frames: list[bytes] = []
        """Every frame the agent sent, in order (what a test inspects about the agent's traffic)."""
        self._timer: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._drop_when: Callable[[SimDevice], bool] | None = None
        self.drops = 0

    @property
    def address(self) -> str:
        """The device's address in memory (its serial)."""
        return f"memory:{self.device.identity.serial}"

    def transport(self) -> MemoryTransport:
        """A fresh transport to this device (what a link makes for each session)."""
        transport = MemoryTransport(self)
        self.transports.append(transport)
        return transport

    def link(
        self,
        *,
        timeout_s: float = 1.0,
        handshake_timeout_s: float = 1.0,
        counters: SessionCounters | None = None,
    ) -> TransportLink:
        """The production `TransportLink` over in-memory transports to this device."""
        return TransportLink(
            self.address,
            self.transport,
            timeout_s=timeout_s,
            handshake_timeout_s=handshake_timeout_s,
            counters=counters,
        )

    async def drop_link(self) -> None:
        """Drop the newest open transport, as a radio link or a cable would go."""
        for transport in reversed(self.transports):
            if transport.is_open:
                transport.drop(LinkClosed("link dropped in memory"))
                return

    def drop_link_when(self, predicate: Callable[[SimDevice], bool]) -> None:
        """Once `predicate(device)` holds, drop the link on the next frame (which is lost).

        Deterministic where a task watching the device would race the agent on a fast link.
        """
        self._drop_when = predicate

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Wait until `predicate()` holds; it is checked after every frame and device timer."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def receive(self, transport: MemoryTransport, frame: bytes) -> None:
        """Hand one frame from `transport` to the device and schedule its replies."""
        loop = asyncio.get_running_loop()
        if self._drop_when is not None and self._drop_when(self.device):
            self._drop_when = None
            self.drops += 1
            transport.drop(LinkClosed("link dropped in memory"))
            return
        self.sent_frames.append(frame)
        for send_at_s, reply in self.device.handle(frame, loop.time()):
            transport.deliver_at(send_at_s, reply)
        self._arm_timer()
        self.notify()

    def filtered(self, frame: bytes) -> bytes | None:
        """A reply as the agent receives it."""
        return frame if self.reply_filter is None else self.reply_filter(frame)

    def notify(self) -> None:
        """Wake `wait_until` callers."""
        self._changed.set()

    def _arm_timer(self) -> None:
        # The device runs its timers lazily on the next frame; a timer of our own makes reboots
        # happen on time even when the agent is silent, as the UDP server does.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due_s = self.device.next_timer_s()
        if due_s is not None:
            self._timer = asyncio.get_running_loop().call_at(due_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.device.poll(asyncio.get_running_loop().time())
        self._arm_timer()
        self.notify()


class MemoryTransport:
    """An `SmpTransport` whose far end is a `MemoryDevice`."""

    def __init__(self, device: MemoryDevice) -> None:
        """A closed transport to `device`; `open()` connects it."""
        self._device = device
        self._frame_limit = UNLIMITED_FRAME_BYTES
        self._handlers: tuple[Callable[[bytes], None], Callable[[Exception | None], None]] | None = None
        self._pending: set[asyncio.TimerHandle] = set()

    @property
    def is_open(self) -> bool:
        """Whether frames flow."""
        return self._handlers is not None

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame sent in one piece."""
        return self._frame_limit

    def set_frame_limit(self, buf_size_bytes: int) -> None:
        """Cap frames at the device's `buf_size`."""
        self._frame_limit = min(UNLIMITED_FRAME_BYTES, buf_size_bytes)

    async def open(
        self, on_frame: Callable[[bytes], None], on_close: Callable[[Exception | None], None]
    ) -> None:
        """Attach to the device.

        Raises:
            DeviceUnreachable: the device was made unreachable.
        """
        if not self._device.reachable:
            raise DeviceUnreachable(f"{self._device.address} is unreachable")
        self._handlers = (on_frame, on_close)

    async def send(self, frame: bytes) -> None:
        """Hand one frame to the device.

        Raises:
            SmpLocalError: the frame is larger than the device's buffer.
            LinkClosed: the transport is closed.
        """
        if len(frame) > self._frame_limit:
            raise SmpLocalError(f"frame of {len(frame)} bytes exceeds the {self._frame_limit}-byte limit")
        if self._handlers is None:
            raise LinkClosed(f"memory link to {self._device.address} is closed")
        self._device.receive(self, frame)

    async def reset(self) -> None:
        """Forget replies still on their way (a fresh socket would never read them)."""
        self._cancel_pending()

    async def close(self) -> None:
        """Detach without reporting a drop; idempotent."""
        self._handlers = None
        self._cancel_pending()

    def drop(self, cause: Exception) -> None:
        """The link went down: pending replies are lost and the session is told."""
        handlers, self._handlers = self._handlers, None
        self._cancel_pending()
        if handlers is not None:
            handlers[1](cause)

    def deliver_at(self, send_at_s: float, frame: bytes) -> None:
        """Deliver a reply frame at `send_at_s` (on the loop's clock) if still open then."""

        def fire() -> None:
            self._pending.discard(handle)
            received = self._device.filtered(frame)
            if self._handlers is not None and received is not None:
                self._handlers[0](received)
            self._device.notify()

        handle = asyncio.get_running_loop().call_at(send_at_s, fire)
        self._pending.add(handle)

    def _cancel_pending(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()


def memory_transports(devices: dict[str, MemoryDevice]) -> Transports:
    """`Transports` for `build_agent` whose `[[udp_devices]]` hosts name memory devices by serial."""

    def link(device: UdpDevice, options: LinkOptions) -> TransportLink:
        return devices[device.host].link(timeout_s=options.timeout_s, counters=options.counters)

    return Transports(udp=link)


@dataclass
class MemoryMqtt:
    """An in-memory stand-in for the agent's MQTT session: records what is published, delivers commands.

    Every publish is acknowledged at once (a broker that never fails), so the journal's durable
    outbox empties as it would against a healthy broker.
    """

    hooks: MqttHooks
    published: list[Outbound] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    epoch: int = 1
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, message: Outbound) -> None:
        """Record and acknowledge a message."""
        self.published.append(message)
        if message.on_acknowledged is not None:
            message.on_acknowledged()
        self._changed.set()

    async def run(self) -> None:
        """Connect at once and stay connected until `stop()`."""
        self.connected.set()
        self.hooks.on_connected(self.epoch)
        await self._stopped.wait()

    async def stop(self) -> None:
        """End `run()`."""
        self.connected.clear()
        self._stopped.set()

    async def deliver(self, command: msgspec.Struct) -> None:
        """Hand the agent a command as if it came on its command topic."""
        topic = self.hooks.subscriptions[0].filter
        payload = channels.encode(command)
        route = self.hooks.tree.parse(topic)
        await self.hooks.handler(
            Inbound(topic, route, channels.decode(route.kind, payload, topic), retain=False)
        )

    def messages(self, kind: TopicKind) -> list[object]:
        """Decoded payloads published on topics of `kind`, oldest first."""
        decoded = []
        for message in self.published:
            route = self.hooks.tree.parse(message.topic)
            if route.kind is kind:
                decoded.append(channels.decode(kind, message.payload, message.topic))
        return decoded

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Wait until `predicate()` holds; it is checked after every publish."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def memory_mqtt(holder: list[MemoryMqtt]) -> Callable[[AgentSettings, MqttHooks, MqttMetrics], MemoryMqtt]:
    """An `MqttMaker` for `build_agent` that puts the session it makes into `holder`."""

    def make(_settings: AgentSettings, hooks: MqttHooks, _metrics: MqttMetrics) -> MemoryMqtt:
        session = MemoryMqtt(hooks)
        holder.append(session)
        return session

    return make
