"""The production broker config and ACL, on a real mosquitto with TLS client certificates.

Assertions are on delivery and on PUBACK reason codes, never on SUBACK: mosquitto grants a SUBACK for
filters the ACL forbids and filters at delivery time instead. The broker runs the shipped ACL with a
second operator block added the way docs/operations.md says (copy `user operator`, rename it).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from schemas import TopicKind, TopicTree
from tests.deploy.pki import Identity, ThrowawayAuthority
from tests.deploy.secure_broker import secure_broker as shipped_broker
from tests.harness.broker import MosquittoBroker

pytestmark = pytest.mark.integration

TREE = TopicTree()
WAIT_S = 5.0
NOT_AUTHORIZED = 135
ACCEPTED = {0, 16}
"""Success, and success with "no matching subscribers"."""


class Client:
    """A synchronous paho client that records deliveries and PUBACK reason codes."""

    def __init__(
        self, broker: MosquittoBroker, client_id: str, ca_file: Path, identity: Identity | None
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._acks: dict[int, int] = {}
        self._connected = threading.Event()
        self.disconnected = threading.Event()
        self._lock = threading.Condition()
        self.connect_reason: int | None = None
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        context = ssl.create_default_context(cafile=str(ca_file))
        if identity is not None:
            context.load_cert_chain(str(identity.cert_file), str(identity.key_file))
        self._client.tls_set_context(context)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = lambda *args: self.disconnected.set()
        self._subscribed: set[int] = set()
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, props: object
    ) -> None:
        self.connect_reason = reason.value
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))
            self._lock.notify_all()

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, props: object
    ) -> None:
        with self._lock:
            self._acks[mid] = reason.value
            self._lock.notify_all()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: object, props: object
    ) -> None:
        with self._lock:
            self._subscribed.add(mid)
            self._lock.notify_all()

    def wait_connected(self) -> int | None:
        self._connected.wait(WAIT_S)
        return self.connect_reason

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self._client.publish(topic, payload, qos=1)
        with self._lock:
            self._lock.wait_for(lambda: info.mid in self._acks, WAIT_S)
            return self._acks[info.mid]

    def subscribe(self, topic: str) -> None:
        _, mid = self._client.subscribe(topic, qos=1)
        with self._lock:
            assert self._lock.wait_for(lambda: mid in self._subscribed, WAIT_S)

    def received(self, topic: str) -> bool:
        with self._lock:
            return any(t == topic for t, _ in self.messages)

    def wait_for(self, topic: str) -> None:
        """Block until a message on `topic` arrived (a sentinel: deliveries keep their order)."""
        with self._lock:
            assert self._lock.wait_for(lambda: any(t == topic for t, _ in self.messages), WAIT_S)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, ThrowawayAuthority]]:
    with shipped_broker(tmp_path, operators=("operator-b",)) as made:
        yield made


@pytest.fixture
def clients(secure_broker: tuple[MosquittoBroker, ThrowawayAuthority]) -> Iterator[dict[str, Client]]:
    broker, authority = secure_broker
    made = {
        name: Client(broker, name, authority.ca_file, authority.issue(name))
        for name in ("gw-1", "gw-2", "controller", "operator", "operator-b")
    }
    for client in made.values():
        assert client.wait_connected() == 0
    yield made
    for client in made.values():
        client.close()


def test_a_gateway_cannot_publish_as_another(clients: dict[str, Client]) -> None:
    """gw-1 may write its own presence and reports, and is refused on gw-2's."""
    gw1 = clients["gw-1"]
    assert gw1.publish(TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id="gw-1")) in ACCEPTED
    assert gw1.publish(TREE.topic(TopicKind.DEVICE_REPORT, gateway_id="gw-1", device_serial="S1")) in ACCEPTED
    assert gw1.publish(TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id="gw-2")) == NOT_AUTHORIZED
    assert (
        gw1.publish(TREE.topic(TopicKind.DEVICE_REPORT, gateway_id="gw-2", device_serial="S1"))
        == NOT_AUTHORIZED
    )


def test_a_gateway_reads_only_its_own_commands(clients: dict[str, Client]) -> None:
    """Subscribed to every command topic, gw-1 receives its command and not gw-2's."""
    gw1, controller = clients["gw-1"], clients["controller"]
    gw1.subscribe(TREE.filter(TopicKind.GATEWAY_COMMAND))
    own = TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-1")
    other = TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-2")
    assert controller.publish(other) in ACCEPTED and controller.publish(own) in ACCEPTED
    gw1.wait_for(own)
    assert not gw1.received(other)


def test_a_gateway_cannot_publish_operator_requests_or_commands(clients: dict[str, Client]) -> None:
    """Operator requests and commands to other gateways are out of a gateway's reach."""
    gw1 = clients["gw-1"]
    assert gw1.publish(TREE.topic(TopicKind.OPERATOR_REQUEST)) == NOT_AUTHORIZED
    assert gw1.publish(TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-2")) == NOT_AUTHORIZED


def test_an_operator_cannot_impersonate_a_gateway(clients: dict[str, Client]) -> None:
    """The operator may publish requests, not gateway presence, reports or results."""
    operator = clients["operator"]
    assert operator.publish(TREE.topic(TopicKind.OPERATOR_REQUEST)) in ACCEPTED
    assert operator.publish(TREE.topic(TopicKind.GATEWAY_PRESENCE, gateway_id="gw-1")) == NOT_AUTHORIZED
    assert (
        operator.publish(TREE.topic(TopicKind.JOB_RESULT, gateway_id="gw-1", job_id="j1")) == NOT_AUTHORIZED
    )
    assert operator.publish(TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-1")) == NOT_AUTHORIZED


def test_credentials_reach_only_the_controller(clients: dict[str, Client]) -> None:
    """A device's project key is readable by the controller and by nobody else."""
    topic = TREE.topic(TopicKind.DEVICE_CREDENTIAL, gateway_id="gw-1", device_serial="S1")
    sentinel = TREE.topic(TopicKind.CONTROLLER_PRESENCE, controller_id="controller")
    for name in ("controller", "operator", "gw-2"):
        clients[name].subscribe(TREE.filter(TopicKind.DEVICE_CREDENTIAL))
        clients[name].subscribe(sentinel)
    assert clients["gw-1"].publish(topic) in ACCEPTED
    assert clients["controller"].publish(sentinel) in ACCEPTED
    for name in ("controller", "operator", "gw-2"):
        clients[name].wait_for(sentinel)
    assert clients["controller"].received(topic)
    assert not clients["operator"].received(topic) and not clients["gw-2"].received(topic)


def test_an_operator_reads_only_its_own_replies(clients: dict[str, Client]) -> None:
    """Subscribed to every reply, an operator receives those in its own subtree, not another's."""
    operator, controller = clients["operator"], clients["controller"]
    operator.subscribe(f"{TREE.prefix}/ops/reply/#")
    other = TREE.topic(TopicKind.OPERATOR_REPLY, operator_id="operator-b", request_id="req-b")
    own = TREE.topic(TopicKind.OPERATOR_REPLY, operator_id="operator", request_id="req-a")
    assert controller.publish(other) in ACCEPTED and controller.publish(own) in ACCEPTED
    operator.wait_for(own)
    assert not operator.received(other)
    clients["operator-b"].subscribe(other)
    assert controller.publish(other) in ACCEPTED
    clients["operator-b"].wait_for(other)


def test_refusals_on_the_default_reply_topic_reach_operators(clients: dict[str, Client]) -> None:
    """A refusal of a request that named no reply topic of its own reaches the operators."""
    operator = clients["operator"]
    topic = TREE.topic(TopicKind.OPERATOR_DEFAULT_REPLY, request_id="req-a")
    operator.subscribe(topic)
    assert clients["controller"].publish(topic) in ACCEPTED
    operator.wait_for(topic)


def test_only_the_controller_writes_replies(clients: dict[str, Client]) -> None:
    """Operators and gateways cannot forge a reply, in their own subtree or another's."""
    for name in ("operator", "gw-1"):
        for operator_id in ("operator", "operator-b", name):
            topic = TREE.topic(TopicKind.OPERATOR_REPLY, operator_id=operator_id, request_id="req-x")
            assert clients[name].publish(topic) == NOT_AUTHORIZED, (name, topic)
        assert (
            clients[name].publish(TREE.topic(TopicKind.OPERATOR_DEFAULT_REPLY, request_id="x"))
            == NOT_AUTHORIZED
        )


def test_clients_without_a_certificate_are_refused(
    secure_broker: tuple[MosquittoBroker, ThrowawayAuthority],
) -> None:
    """Without a client certificate the broker ends the connection before any CONNACK."""
    broker, authority = secure_broker
    try:
        client = Client(broker, "anonymous", authority.ca_file, None)
    except (ssl.SSLError, OSError):
        return  # refused during the handshake
    try:
        assert client.disconnected.wait(WAIT_S)
        assert client.connect_reason is None
    finally:
        client.close()
