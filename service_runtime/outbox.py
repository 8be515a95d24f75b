"""The durable-outbox pump: hands saved messages to the MQTT session once each and settles PUBACKs.

Both services keep messages that must reach the broker in a durable outbox (the agent's results in
its journal, the controller's commands in its store) and delete a row only once the broker has
acknowledged it. What is the same on both sides lives here:

- a row is handed to the session at most once per process while it is in flight: the session
  delivers it (and sends it again after a reconnect, as MQTT requires), so handing it over again
  would duplicate the message;
- a row the session refuses (its bounded outbox is full, or it is closed) is not in flight: it is
  tried again at the next `send` (`refused` says a sweep of the whole durable outbox is due);
- the PUBACK callback reports the row to the owner (`on_acknowledged`); the owner deletes it from
  its outbox and then calls `settle`, after which the row id is forgotten.

Where the rows live, and whether deletes are batched, stays with the owner: the agent deletes on the
PUBACK (one SQLite row, on its loop), the controller batches them into one store transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import structlog

from service_runtime.errors import MqttError
from service_runtime.mqtt import Outbound

log = structlog.get_logger("mcufleet.outbox")


class DurableMessage(Protocol):
    """A row of a durable outbox: a message that must reach the broker."""

    @property
    def row_id(self) -> int:
        """The row's key in its outbox."""

    @property
    def topic(self) -> str:
        """Where it is published."""

    @property
    def payload(self) -> bytes:
        """What is published."""

    @property
    def qos(self) -> int:
        """Its QoS (1: a durable message is only deleted on a PUBACK)."""

    @property
    def retain(self) -> bool:
        """Whether the broker retains it."""


class OutboxPump:
    """Hands durable rows to the session once each and reports their acknowledgements."""

    def __init__(self, publish: Callable[[Outbound], None], on_acknowledged: Callable[[int], None]) -> None:
        """Pump through `publish`, which queues a message on the session (`MqttError`: refused).

        `on_acknowledged` runs on the session's PUBACK with the row id.
        """
        self._publish = publish
        self._on_acknowledged = on_acknowledged
        self._in_flight: set[int] = set()
        self.refused = False
        """True once the session refused a row: the owner should read its whole outbox again."""

    @property
    def in_flight(self) -> int:
        """Rows handed to the session and not yet settled."""
        return len(self._in_flight)

    def send(self, rows: Iterable[DurableMessage]) -> int:
        """Hand every row not already in flight to the session; the number handed over."""
        sent = 0
        for row in rows:
            if row.row_id in self._in_flight:
                continue
            self._in_flight.add(row.row_id)
            message = Outbound(
                row.topic,
                row.payload,
                qos=row.qos,
                retain=row.retain,
                on_acknowledged=self._acknowledger(row.row_id),
            )
            try:
                self._publish(message)
            except MqttError as error:
                # Counted by the session; the row stays in the durable outbox and is sent again.
                log.warning("message not queued", topic=row.topic, error=str(error))
                self._in_flight.discard(row.row_id)
                self.refused = True
                continue
            sent += 1
        return sent

    def swept(self) -> None:
        """The owner is about to `send` its whole outbox: no further sweep is due."""
        self.refused = False

    def settle(self, row_ids: Iterable[int]) -> None:
        """These acknowledged rows are deleted from the durable outbox: forget them."""
        self._in_flight.difference_update(row_ids)

    def _acknowledger(self, row_id: int) -> Callable[[], None]:
        def acknowledge() -> None:
            self._on_acknowledged(row_id)

        return acknowledge
