"""The harness itself: the broker really restarts, crashes and pauses; PostgreSQL really answers."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.harness.broker import MosquittoBroker

pytestmark = pytest.mark.integration


def _accepts(broker: MosquittoBroker) -> bool:
    try:
        socket.create_connection((broker.host, broker.port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_broker_restarts_on_the_same_port(broker: MosquittoBroker) -> None:
    """A graceful restart brings the broker back on the port the clients know."""
    port = broker.port
    broker.restart()
    assert broker.port == port and broker.running and _accepts(broker)


def test_broker_crash_stops_it(broker: MosquittoBroker) -> None:
    """A crash (SIGKILL) leaves nothing listening until the test starts it again."""
    broker.crash()
    assert not broker.running and not _accepts(broker)
    broker.start()
    assert _accepts(broker)


def test_paused_broker_accepts_but_does_not_answer(broker: MosquittoBroker) -> None:
    """A paused broker keeps its socket (the kernel accepts) but sends no CONNACK."""
    broker.pause()
    try:
        with socket.create_connection((broker.host, broker.port), timeout=1) as connection:
            connection.settimeout(0.3)
            # An MQTT 3.1.1 CONNECT for client id "p": the broker would answer with CONNACK.
            connection.sendall(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 1]) + b"p")
            with pytest.raises(TimeoutError):
                connection.recv(4)
    finally:
        broker.resume()
    with socket.create_connection((broker.host, broker.port), timeout=1) as connection:
        connection.sendall(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 1]) + b"p")
        assert connection.recv(4)[:1] == b"\x20"


def test_postgres_database_is_usable(postgres_dsn: str) -> None:
    """The throwaway database accepts DDL and queries."""
    with psycopg.connect(postgres_dsn) as connection:
        connection.execute("CREATE TABLE probe (n integer)")
        connection.execute("INSERT INTO probe VALUES (42)")
        row = connection.execute("SELECT n FROM probe").fetchone()
    assert row == (42,)
