"""The durable-outbox pump: each row handed over once while in flight, refusals tried again."""

from __future__ import annotations

from dataclasses import dataclass

from service_runtime.errors import OutboxFull
from service_runtime.mqtt import Outbound
from service_runtime.outbox import OutboxPump


@dataclass(frozen=True)
class Row:
    """A saved outbox row."""

    row_id: int
    topic: str = "t"
    payload: bytes = b"p"
    qos: int = 1
    retain: bool = False


class Session:
    """Records what was queued; refuses while `full`."""

    def __init__(self) -> None:
        self.queued: list[Outbound] = []
        self.full = False

    def publish(self, message: Outbound) -> None:
        if self.full:
            raise OutboxFull("outbox full")
        self.queued.append(message)

    def puback(self, index: int) -> None:
        callback = self.queued[index].on_acknowledged
        assert callback is not None
        callback()


def _pump(session: Session) -> tuple[OutboxPump, list[int]]:
    acknowledged: list[int] = []
    return OutboxPump(session.publish, acknowledged.append), acknowledged


def test_a_row_in_flight_is_not_handed_over_again() -> None:
    """Sweeping the outbox again while a row awaits its PUBACK would duplicate the message."""
    session = Session()
    pump, _ = _pump(session)
    assert pump.send([Row(1), Row(2)]) == 2
    assert pump.send([Row(1), Row(2), Row(3)]) == 1
    assert [message.payload for message in session.queued] == [b"p"] * 3
    assert pump.in_flight == 3


def test_the_message_carries_the_rows_topic_qos_and_retain() -> None:
    """What is published is the row as saved."""
    session = Session()
    pump, _ = _pump(session)
    pump.send([Row(7, topic="a/b", payload=b"x", qos=1, retain=True)])
    (message,) = session.queued
    assert (message.topic, message.payload, message.qos, message.retain) == ("a/b", b"x", 1, True)


def test_a_puback_reports_the_row_and_settling_lets_it_go() -> None:
    """The owner hears of the PUBACK; once it settles the row the id is free again."""
    session = Session()
    pump, acknowledged = _pump(session)
    pump.send([Row(1), Row(2)])
    session.puback(1)
    assert acknowledged == [2]
    assert pump.in_flight == 2
    pump.settle([2])
    assert pump.in_flight == 1
    assert pump.send([Row(2)]) == 1


def test_a_refused_row_is_sent_at_the_next_sweep() -> None:
    """A full session outbox refuses the row; it is not in flight and the owner is told to sweep."""
    session = Session()
    pump, _ = _pump(session)
    session.full = True
    assert pump.send([Row(1)]) == 0
    sweep_due = pump.refused
    assert sweep_due and pump.in_flight == 0
    session.full = False
    pump.swept()
    assert pump.refused is False
    assert pump.send([Row(1)]) == 1
    assert [message.payload for message in session.queued] == [b"p"]


def test_a_puback_during_publish_is_settled() -> None:
    """A session may acknowledge inside `publish` (the in-memory one does): the row still settles."""
    queued: list[Outbound] = []
    pump: OutboxPump

    def publish(message: Outbound) -> None:
        queued.append(message)
        assert message.on_acknowledged is not None
        message.on_acknowledged()

    def on_acknowledged(row_id: int) -> None:
        pump.settle([row_id])

    pump = OutboxPump(publish, on_acknowledged)
    assert pump.send([Row(1)]) == 1
    assert pump.in_flight == 0
