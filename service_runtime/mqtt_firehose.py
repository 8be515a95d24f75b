"""A paho client on its own thread for one high-volume inbound stream (the controller's device reports).

The asyncio session (`mqtt.py`) costs a few event-loop round trips per message; at a fleet's rebirth
burst that caps ingest near 6,000 messages/s. Here paho's own network thread only queues each raw
message and wakes the consumer when the queue stops being empty; the consumer `drain`s a batch at a
time, decoding through `schemas` on its own thread. Handing over batches rather than messages keeps
the two threads from trading the GIL once per message, which cost more than the decoding itself.
Bad payloads are counted and dropped exactly as in the session. paho reconnects by itself.

The session persists (MQTT 3.1.1 `clean_session=False` and a stable client id), so what the broker
queued while this connection was away (a connection drop, a broker restart, a controller restart)
is delivered when it comes back. paho acknowledges each message on receipt, not after the store
commits it: acknowledging after the commit would bound a QoS 1 stream to the broker's
`max_inflight_messages` per commit (20 by default, 100 shipped: about 2,000 reports/s at a 50 ms
batch), and the broker drops what overflows its queue. What a killed controller held only in memory
is asked for again instead: on start it asks every live gateway for a rebirth (rate-limited).
"""

from __future__ import annotations

import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from schemas import ContractError, TopicTree, channels
from schemas.topics import Route
from service_runtime.mqtt import MqttSettings, Subscription
from service_runtime.mqtt_metrics import MqttMetrics

log = structlog.get_logger(__name__)

FirehoseMessage = tuple[Route, object, bool]
"""(route, decoded payload, retained)."""


class MqttFirehose:
    """Subscribes to `subscriptions` on a dedicated connection and thread."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        tree: TopicTree,
        subscriptions: Sequence[Subscription],
        on_ready: Callable[[], None],
        metrics: MqttMetrics,
    ) -> None:
        self._tree = tree
        self._subscriptions = tuple(subscriptions)
        self._on_ready = on_ready
        self._raw: deque[tuple[str, bytes | bytearray, bool]] = deque()
        self._raw_lock = threading.Lock()
        self.arrived = 0
        """Messages received since start, before any decoding (for measurements)."""
        self._metrics = metrics
        self._settings = settings
        # MQTT 3.1.1 (so no session expiry: the broker's persistent_client_expiration bounds it): this
        # connection only subscribes (shared subscriptions work in 3.1.1 on mosquitto,
        # EMQX, HiveMQ), and paho parses 3.1.1 publishes about twice as fast as MQTT 5 ones, whose
        # property decoding dominated the cost per report.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if settings.tls is not None:
            context = ssl.create_default_context(cafile=settings.tls.ca_file)
            if settings.tls.cert_file:
                context.load_cert_chain(settings.tls.cert_file, settings.tls.key_file or None)
            client.tls_set_context(context)
        client.reconnect_delay_set(min_delay=1, max_delay=int(max(1, settings.backoff_max_s)))
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        self.subscribed = threading.Event()
        """Set once the broker acknowledged the subscriptions of the first connection."""
        self._pending_subscriptions: set[int] = set()

    def start(self) -> None:
        """Connect (asynchronously: paho retries until the broker answers) and start the thread."""
        self._client.connect_async(
            self._settings.host,
            self._settings.port,
            keepalive=self._settings.keepalive_s,
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect and join the thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        for subscription in self._subscriptions:
            _, mid = client.subscribe(subscription.topic, qos=subscription.qos)
            if mid is not None:
                self._pending_subscriptions.add(mid)
        self._metrics.connects.inc()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: object, properties: object
    ) -> None:
        self._pending_subscriptions.discard(mid)
        if not self._pending_subscriptions:
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._raw_lock:
            was_empty = not self._raw
            self._raw.append((message.topic, message.payload, bool(message.retain)))
            self.arrived += 1
        if was_empty:
            self._on_ready()

    def drain(self, limit: int) -> list[FirehoseMessage]:
        """Decode and return up to `limit` queued messages, oldest first (any thread but paho's)."""
        with self._raw_lock:
            raw = [self._raw.popleft() for _ in range(min(limit, len(self._raw)))]
        decoded: list[FirehoseMessage] = []
        for topic, payload, retained in raw:
            if not payload:
                continue  # a cleared retained message
            route = None
            try:
                route = self._tree.parse(topic)
                message = channels.decode(route.kind, bytes(payload), topic)
            except ContractError as error:
                self._metrics.rejected.labels("topic" if route is None else "payload").inc()
                log.warning("mqtt message rejected", topic=topic, error=str(error))
                continue
            decoded.append((route, message, retained))
        # Counted once per kind and batch: a labelled increment per message cost 1.6 us.
        counts: dict[str, int] = {}
        for route, _, _ in decoded:
            counts[route.kind.value] = counts.get(route.kind.value, 0) + 1
        for kind, count in counts.items():
            self._metrics.received.labels(kind).inc(count)
        return decoded

    @property
    def queued(self) -> int:
        """Messages received and not drained yet."""
        return len(self._raw)


def discard_session(settings: MqttSettings, client_id: str, timeout_s: float = 10.0) -> bool:
    """Delete the broker's persistent session of `client_id` (blocking; returns whether it was done).

    A replica gone for good keeps its round-robin share of a shared subscription in its session
    (mosquitto queues it there until the client returns): connecting once with a clean session under
    its id, then disconnecting, removes that session and its subscriptions from the group. Its
    queued messages go with it, so the caller asks for them again (a rebirth). If the replica is
    connected at that moment the broker takes its connection over; paho reconnects it.
    """
    connected = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
    )
    if settings.username:
        client.username_pw_set(settings.username, settings.password or None)
    if settings.tls is not None:
        context = ssl.create_default_context(cafile=settings.tls.ca_file)
        if settings.tls.cert_file:
            context.load_cert_chain(settings.tls.cert_file, settings.tls.key_file or None)
        client.tls_set_context(context)

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    except OSError as error:
        log.warning("cannot discard a session", client_id=client_id, error=str(error))
        return False
    client.loop_start()
    try:
        done = connected.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return done
