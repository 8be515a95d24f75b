"""Prometheus metrics of one MQTT session, registered on the registry the composition root owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from schemas import TopicKind


class MqttMetrics:
    """Counters and gauges of an `MqttSession` (names prefixed `mcufleet_mqtt_`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "mcufleet_mqtt_connected", "1 while the MQTT session is connected", registry=registry
        )
        self.connects = Counter(
            "mcufleet_mqtt_connects", "Successful MQTT connections (first one included)", registry=registry
        )
        self.connection_failures = Counter(
            "mcufleet_mqtt_connection_failures",
            "Connection attempts or live connections that failed, by reason",
            ["reason"],
            registry=registry,
        )
        self.received = Counter(
            "mcufleet_mqtt_messages_received",
            "Inbound messages accepted, by topic kind",
            ["kind"],
            registry=registry,
        )
        self.rejected = Counter(
            "mcufleet_mqtt_messages_rejected",
            "Inbound messages rejected before reaching a handler, by reason",
            ["reason"],
            registry=registry,
        )
        self.handler_errors = Counter(
            "mcufleet_mqtt_handler_errors",
            "Inbound messages whose handler raised",
            ["kind"],
            registry=registry,
        )
        # Series of the label values known in advance start at 0, so increase() counts their first event.
        for reason in ("topic", "payload"):
            self.rejected.labels(reason)
        for kind in TopicKind:
            self.received.labels(kind.value)
            self.handler_errors.labels(kind.value)
        for failure in ("MqttError", "MqttCodeError", "ConnectionRefusedError", "OSError"):
            self.connection_failures.labels(failure)
        self.published = Counter(
            "mcufleet_mqtt_messages_published",
            "Outbound messages acknowledged by the broker",
            registry=registry,
        )
        self.outbox_depth = Gauge(
            "mcufleet_mqtt_outbox_messages", "Outbound messages waiting for a connection", registry=registry
        )
        self.outbox_refused = Counter(
            "mcufleet_mqtt_outbox_refused",
            "Outbound messages refused because the outbox was full",
            registry=registry,
        )
