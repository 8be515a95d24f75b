"""A paho client on its own thread for one high-volume inbound stream (the controller's device reports).

The asyncio session (`mqtt.py`) costs a few event-loop round trips per message; at a fleet's rebirth
burst that caps ingest near 6,000 messages/s. Here paho's own network thread reads, decodes through
`schemas` and hands each message to a thread-safe callback, at the speed of a bare paho subscriber.
Bad payloads are counted and dropped exactly as in the session. paho reconnects by itself.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from schemas import ContractError, TopicTree, channels
from schemas.topics import Route
from service_runtime.mqtt import MqttSettings, Subscription
from service_runtime.mqtt_metrics import MqttMetrics

log = structlog.get_logger(__name__)

FirehoseHandler = Callable[[Route, object, bool], None]
"""Called on paho's thread with (route, decoded payload, retained)."""


class MqttFirehose:
    """Subscribes to `subscriptions` on a dedicated connection and thread."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        tree: TopicTree,
        subscriptions: Sequence[Subscription],
        handler: FirehoseHandler,
        metrics: MqttMetrics,
    ) -> None:
        self._tree = tree
        self._subscriptions = tuple(subscriptions)
        self._handler = handler
        self._metrics = metrics
        self._settings = settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5)
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
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        self._client.connect_async(
            self._settings.host,
            self._settings.port,
            keepalive=self._settings.keepalive_s,
            properties=properties,
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
        payload = bytes(message.payload)
        if not payload:
            return
        topic = message.topic
        route = None
        try:
            route = self._tree.parse(topic)
            decoded = channels.decode(route.kind, payload, topic)
        except ContractError as error:
            self._metrics.rejected.labels("topic" if route is None else "payload").inc()
            log.warning("mqtt message rejected", topic=topic, error=str(error))
            return
        self._metrics.received.labels(route.kind.value).inc()
        try:
            self._handler(route, decoded, bool(message.retain))
        except Exception:  # A handler bug must not kill paho's thread.
            self._metrics.handler_errors.labels(route.kind.value).inc()
            log.exception("firehose handler failed", topic=topic)
