"""The MQTT session every mcufleet process uses: one adapter over aiomqtt 2.x (paho-mqtt, MQTT v5).

What it owns, so no service has to think about it again:

- a persistent session (`clean_start=False` with a session expiry) so QoS 1 commands wait in the
  broker while a gateway is away, even across a broker restart (mosquitto persists only sessions
  that did not start clean; see docs/architecture.md);
- presence: a new epoch per connection, carried by the will and the retained birth, a retained
  goodbye on a clean stop, and a guard that republishes the birth when a stale will overwrote it;
- reconnects with jittered exponential backoff (`service_runtime.backoff.Backoff`, half jitter,
  from `backoff_initial_s` after every session that got through) and resubscription;
- a bounded outbox drained in order while connected, with up to `max_in_flight` QoS 1 messages
  awaiting their PUBACK at once (a message leaves it only once acknowledged; a connection that dies
  puts the unacknowledged ones back at the head, in their order, to be sent again);
- decoding of every inbound payload through `schemas`: bad topics and payloads are counted,
  logged and handed to `on_rejected` (which may answer them), and never reach a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from schemas import ContractError, TopicTree, channels
from schemas.topics import Route
from service_runtime.backoff import Backoff
from service_runtime.epoch import EpochCounter
from service_runtime.errors import OutboxFull, SessionClosed
from service_runtime.mqtt_metrics import MqttMetrics

log = structlog.get_logger(__name__)

GOODBYE_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Client TLS: the CA that signed the broker, and this client's certificate and key (optional)."""

    ca_file: str
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to reach the broker and how the session behaves."""

    host: str
    port: int
    client_id: str
    username: str = ""
    password: str = ""
    tls: TlsSettings | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    """How long the broker keeps this session (and queues QoS 1 messages) while disconnected.
    Agents keep it long; controller replicas on shared subscriptions keep it short
    (`mqtt.session_expiry_s`, 120 s): long enough to ride out a connection drop or a broker restart,
    short because a persistent session on a shared subscription keeps receiving its round-robin
    share while offline (ecosystem notes), which waits for it until it returns or expires."""
    operation_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    outbox_limit: int = 10_000
    max_in_flight: int = 100
    """QoS 1 messages sent and not yet acknowledged at once (the window; paho's own limit too)."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A filter to subscribe to on every connection; `share_group` makes it a shared subscription."""

    filter: str
    qos: int = 1
    share_group: str = ""

    @property
    def topic(self) -> str:
        """The filter as sent to the broker."""
        return f"$share/{self.share_group}/{self.filter}" if self.share_group else self.filter


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    response_topic: str = ""
    correlation_data: bytes = b""
    message_expiry_s: int = 0
    """0 means the message never expires in the broker."""
    on_acknowledged: Callable[[], None] | None = field(default=None, compare=False)
    """Called once the broker acknowledged the message (a durable outbox deletes its copy then)."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A decoded inbound message and the MQTT v5 properties a reply needs."""

    topic: str
    route: Route
    message: object
    retain: bool
    response_topic: str = ""
    correlation_data: bytes = b""
    payload: bytes = b""
    """The bytes `message` was decoded from (a durable inbox stores them instead of re-encoding)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """An inbound message that failed topic or payload validation."""

    topic: str
    route: Route | None
    error: ContractError
    response_topic: str = ""
    correlation_data: bytes = b""


class Presence(Protocol):
    """Birth, will and goodbye payloads of this process; each carries the connection's epoch."""

    @property
    def topic(self) -> str:
        """The retained presence topic of this process."""
        ...

    def birth(self, epoch: int) -> bytes:
        """The retained birth published after connecting."""
        ...

    def will(self, epoch: int) -> bytes:
        """The will the broker publishes if the connection dies without a goodbye."""
        ...

    def goodbye(self, epoch: int) -> bytes:
        """The retained goodbye published before a clean disconnect."""
        ...


Handler = Callable[[Inbound], Awaitable[None]]
RejectHandler = Callable[[Rejected], Awaitable[None]]


async def _ignore_rejected(rejected: Rejected) -> None:
    """Default `on_rejected`: counting and logging already happened."""


@dataclass
class _Outbox:
    limit: int
    items: deque[Outbound] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    """Messages taken from `items`, sent, and waiting for their acknowledgement."""


class MqttSession:
    """A long-lived MQTT session: run `run()` as a task, `publish()` from anywhere, `stop()` to end."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        tree: TopicTree,
        subscriptions: Sequence[Subscription],
        handler: Handler,
        metrics: MqttMetrics,
        presence: Presence | None = None,
        epochs: EpochCounter | None = None,
        on_rejected: RejectHandler = _ignore_rejected,
        on_connected: Callable[[int], None] | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._tree = tree
        self._subscriptions = tuple(subscriptions)
        self._handler = handler
        self._on_rejected = on_rejected
        self._on_connected = on_connected
        self._metrics = metrics
        self._presence = presence
        self._epochs = epochs or EpochCounter()
        self._clock_ms = clock_ms
        self._rng = rng or random.Random()
        self._outbox = _Outbox(settings.outbox_limit)
        self._outbox.drained.set()
        self._stop_requested = asyncio.Event()
        self._stopped = False
        self.connected = asyncio.Event()
        """Set while connected, subscribed and born."""
        self.epoch = 0
        """The epoch of the current (or last) connection."""
        self._last_birth = b""

    # --- publishing -------------------------------------------------------------------------

    def publish(self, message: Outbound) -> None:
        """Queue `message`; it is sent in order once connected and leaves the queue when acknowledged.

        Raises:
            OutboxFull: the outbox holds `outbox_limit` messages already.
            SessionClosed: the session was stopped.
        """
        if self._stopped:
            raise SessionClosed("the MQTT session is stopped")
        waiting = len(self._outbox.items) + self._outbox.in_flight
        if waiting >= self._outbox.limit:
            self._metrics.outbox_refused.inc()
            raise OutboxFull(f"{waiting} messages are waiting for the broker")
        self._outbox.items.append(message)
        self._outbox.ready.set()
        self._outbox.drained.clear()
        self._metrics.outbox_depth.set(len(self._outbox.items))

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message was acknowledged; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._outbox.drained.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def presence(self) -> Presence | None:
        """This session's presence payloads (None when it publishes none)."""
        return self._presence

    @property
    def in_flight(self) -> int:
        """Messages sent and awaiting their acknowledgement right now."""
        return self._outbox.in_flight

    @property
    def outbox_size(self) -> int:
        """Messages waiting to be acknowledged."""
        return len(self._outbox.items) + self._outbox.in_flight

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect with backoff, until `stop()`; never raises for broker trouble."""
        # Jitter spreads the reconnects of a whole fleet after a broker restart: half jitter draws
        # each delay d from [d/2, d].
        backoff = Backoff(
            initial_s=self.settings.backoff_initial_s,
            max_s=self.settings.backoff_max_s,
            sleep=self._sleep_unless_stopped,
            jitter=0.5,
            random=self._rng.random,
        )
        while not self._stop_requested.is_set():
            try:
                await self._connected_session()
                backoff.reset()
            except (aiomqtt.MqttError, OSError) as error:
                reason = type(error).__name__
                self._metrics.connection_failures.labels(reason).inc()
                log.warning("mqtt connection lost", client_id=self.settings.client_id, error=str(error))
            finally:
                self.connected.clear()
                self._metrics.connected.set(0)
            if self._stop_requested.is_set():
                break
            await backoff.wait()
        self._stopped = True

    async def _sleep_unless_stopped(self, delay_s: float) -> None:
        """Wait `delay_s`, or less when `stop()` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), delay_s)

    async def stop(self) -> None:
        """Ask `run()` to publish the goodbye, disconnect cleanly and return."""
        self._stop_requested.set()

    # --- one connection ---------------------------------------------------------------------

    async def _connected_session(self) -> None:
        epoch = self._epochs.advance(self._clock_ms())
        async with self._client(epoch) as client:
            self.epoch = epoch
            self._metrics.connects.inc()
            for subscription in self._subscriptions:
                await client.subscribe(subscription.topic, qos=subscription.qos)
            if self._presence is not None:
                birth = self._birth()
                self._last_birth = birth.payload
                await self._publish_now(client, birth)
                await client.subscribe(self._presence.topic, qos=1)
            self.connected.set()
            self._metrics.connected.set(1)
            if self._presence is not None and self._birth().payload != self._last_birth:
                # Its content changed while it was being published (a controller became the
                # leader then, and `refresh_birth` found no connection yet): the newer one goes too.
                self.refresh_birth()
            if self._on_connected is not None:
                self._on_connected(epoch)
            log.info("mqtt connected", client_id=self.settings.client_id, epoch=epoch)
            tasks = {
                asyncio.create_task(self._receive(client), name="mqtt-receive"),
                asyncio.create_task(self._send(client), name="mqtt-send"),
                asyncio.create_task(self._stop_requested.wait(), name="mqtt-stop"),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if all(task.get_name() == "mqtt-stop" for task in done):
                    # Stopping: let the window collect the PUBACKs still due on this connection, or
                    # closing it would put those messages back and the goodbye flush would send
                    # them a second time.
                    await self.flush(GOODBYE_TIMEOUT_S)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if (error := task.exception()) is not None:
                    raise error
            await self._say_goodbye(client)

    def _client(self, epoch: int) -> aiomqtt.Client:
        settings = self.settings
        connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_properties.SessionExpiryInterval = settings.session_expiry_s
        will = None
        if self._presence is not None:
            will = aiomqtt.Will(self._presence.topic, self._presence.will(epoch), qos=1, retain=True)
        tls_context = None
        if settings.tls is not None:
            tls_context = ssl.create_default_context(cafile=settings.tls.ca_file)
            if settings.tls.cert_file:
                tls_context.load_cert_chain(settings.tls.cert_file, settings.tls.key_file or None)
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            identifier=settings.client_id,
            username=settings.username or None,
            password=settings.password or None,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect_properties,
            keepalive=settings.keepalive_s,
            will=will,
            timeout=settings.operation_timeout_s,
            tls_context=tls_context,
            max_inflight_messages=settings.max_in_flight,
        )
        # A full send window is the normal state under load, not the leak aiomqtt warns about (> 10).
        client.pending_calls_threshold = settings.max_in_flight + 10
        return client

    async def _say_goodbye(self, client: aiomqtt.Client) -> None:
        """Flush what is queued, then publish the retained goodbye before the clean disconnect."""
        sender = asyncio.create_task(self._send(client), name="mqtt-final-send")
        await self.flush(GOODBYE_TIMEOUT_S)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        if self._presence is not None:
            goodbye = Outbound(self._presence.topic, self._presence.goodbye(self.epoch), retain=True)
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await asyncio.wait_for(self._publish_now(client, goodbye), GOODBYE_TIMEOUT_S)

    def _birth(self) -> Outbound:
        if self._presence is None:
            raise SessionClosed("this session publishes no presence")
        return Outbound(self._presence.topic, self._presence.birth(self.epoch), retain=True)

    async def _publish_now(self, client: aiomqtt.Client, message: Outbound) -> None:
        properties = None
        if message.response_topic or message.correlation_data or message.message_expiry_s:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if message.response_topic:
                properties.ResponseTopic = message.response_topic
            if message.correlation_data:
                properties.CorrelationData = message.correlation_data
            if message.message_expiry_s:
                properties.MessageExpiryInterval = message.message_expiry_s
        await client.publish(
            message.topic, message.payload, qos=message.qos, retain=message.retain, properties=properties
        )
        self._metrics.published.inc()

    async def _send(self, client: aiomqtt.Client) -> None:
        """Drain the outbox with up to `max_in_flight` messages awaiting their PUBACK at once."""
        outbox = self._outbox
        this_task = asyncio.current_task()
        window = _SendWindow(max(1, self.settings.max_in_flight), outbox, self._metrics)
        try:
            while True:
                # Python 3.11's wait_for (inside aiomqtt's publish) can swallow a cancellation that
                # races with the PUBACK; the request is still recorded, so honour it here.
                if this_task is not None and this_task.cancelling():
                    raise asyncio.CancelledError
                if window.failure:
                    raise window.failure[0]
                if not outbox.items:
                    outbox.ready.clear()
                    if not outbox.in_flight:
                        outbox.drained.set()
                    await outbox.ready.wait()
                    continue
                await window.slot.acquire()
                if not outbox.items or window.failure:
                    window.slot.release()
                    continue
                window.start(outbox.items.popleft(), lambda message: self._publish_now(client, message))
        finally:
            await window.close()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._dispatch(message)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = (
            message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        )
        if self._presence is not None and topic == self._presence.topic:
            await self._guard_presence(payload)
            return
        if not payload:
            # An empty retained payload only clears the topic; there is nothing to handle.
            return
        response_topic, correlation_data = _reply_properties(message)
        route = None
        try:
            route = self._tree.parse(topic)
            decoded = channels.decode(route.kind, payload, topic)
        except ContractError as error:
            reason = "topic" if route is None else "payload"
            self._metrics.rejected.labels(reason).inc()
            log.warning("mqtt message rejected", topic=topic, error=str(error))
            await self._on_rejected(Rejected(topic, route, error, response_topic, correlation_data))
            return
        self._metrics.received.labels(route.kind.value).inc()
        try:
            await self._handler(
                Inbound(topic, route, decoded, message.retain, response_topic, correlation_data, payload)
            )
        except Exception:  # A handler bug must not end the session; it is logged and counted.
            self._metrics.handler_errors.labels(route.kind.value).inc()
            log.exception("mqtt handler failed", topic=topic)

    def refresh_birth(self) -> None:
        """Publish the birth again (its content changed, e.g. a controller became the leader)."""
        if self._presence is None or not self.connected.is_set():
            return
        birth = self._birth()
        self._last_birth = birth.payload
        self.publish(birth)

    async def _guard_presence(self, payload: bytes) -> None:
        """Republish the birth when the retained presence is not ours (a stale will landed late)."""
        if self._presence is None or not self.connected.is_set() or self._stop_requested.is_set():
            return
        if payload != self._last_birth:
            birth = self._birth()
            self._last_birth = birth.payload
            log.info("stale presence replaced", topic=birth.topic, epoch=self.epoch)
            self._outbox.items.appendleft(birth)
            self._outbox.ready.set()
            self._outbox.drained.clear()


class _SendWindow:
    """The messages of one connection sent and awaiting their PUBACK (at most `slot`'s size)."""

    def __init__(self, size: int, outbox: _Outbox, metrics: MqttMetrics) -> None:
        self.slot = asyncio.Semaphore(size)
        self.failure: list[BaseException] = []
        self._outbox = outbox
        self._metrics = metrics
        self._sent: dict[int, Outbound] = {}
        """In send order: what a dead connection puts back at the outbox's head."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._sequence = 0

    def start(self, message: Outbound, publish: Callable[[Outbound], Awaitable[None]]) -> None:
        """Send `message` (a slot was acquired for it) and settle it when the PUBACK arrives."""
        self._sequence += 1
        self._sent[self._sequence] = message
        self._outbox.in_flight += 1
        task = asyncio.create_task(self._publish(self._sequence, message, publish), name="mqtt-publish")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(
        self, number: int, message: Outbound, publish: Callable[[Outbound], Awaitable[None]]
    ) -> None:
        outbox = self._outbox
        try:
            await publish(message)
        except Exception as error:  # noqa: BLE001 (any failure to publish ends this connection, never the session)
            if not self.failure:
                log.warning("publish failed", topic=message.topic, error=repr(error))
            self.failure.append(error)
            outbox.ready.set()
            return
        finally:
            self.slot.release()
        if self._sent.pop(number, None) is None:
            return  # the window closed first: the message was put back and will be acknowledged then
        outbox.in_flight -= 1
        if message.on_acknowledged is not None:
            message.on_acknowledged()
        self._metrics.outbox_depth.set(len(outbox.items) + outbox.in_flight)
        if not outbox.items and not outbox.in_flight:
            outbox.drained.set()

    async def close(self) -> None:
        """Stop waiting; what was not acknowledged goes back to the outbox's head, in order."""
        for task in list(self._tasks):
            task.cancel()
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            # Even when this wait is itself cancelled (or a publish ignores its cancellation, as
            # Python 3.11's wait_for may): nothing sent and unacknowledged is ever dropped.
            self._outbox.items.extendleft(reversed(list(self._sent.values())))
            self._outbox.in_flight = 0
            self._sent.clear()


def _reply_properties(message: aiomqtt.Message) -> tuple[str, bytes]:
    properties = message.properties
    if properties is None:
        return "", b""
    response_topic = getattr(properties, "ResponseTopic", "") or ""
    correlation_data = getattr(properties, "CorrelationData", b"") or b""
    return str(response_topic), bytes(correlation_data)
