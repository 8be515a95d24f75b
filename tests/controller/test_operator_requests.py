"""The coordinator's operator path on a real SQLite store: where replies go, who the audit names."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from controller.memfault import MemfaultClient, MemfaultSettings
from controller.operator_auth import OperatorKeys, sign_request
from controller.rollout_engine.machine import RolloutMachine
from controller.rollouts import RolloutCoordinator
from controller.settings import OperatorAuthConfig, OperatorKey, OperatorRole, SchedulerConfig
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore, RolloutRecord
from controller.store.opening import open_store
from schemas import (
    AbortRollout,
    AuditEvent,
    OperatorReply,
    OperatorRequest,
    PauseRollout,
    ReplyStatus,
    RequestId,
    RolloutId,
    RolloutSpec,
    TopicKind,
    TopicTree,
    channels,
)
from service_runtime.mqtt import Outbound

TREE = TopicTree()
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
ALICE, ALICE_NEXT, VAL = (Ed25519PrivateKey.generate() for _ in range(3))
OWN_REPLY = TREE.topic(TopicKind.OPERATOR_REPLY, operator_id="alice", request_id="req-1")


def public_b64(key: Ed25519PrivateKey) -> str:
    """The raw public key in base64."""
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


SIGNED = OperatorAuthConfig(
    keys={
        "alice-1": OperatorKey(public_key=public_b64(ALICE), operator="alice", role=OperatorRole.OPERATOR),
        "alice-2": OperatorKey(
            public_key=public_b64(ALICE_NEXT), operator="alice", role=OperatorRole.OPERATOR
        ),
        "val-1": OperatorKey(public_key=public_b64(VAL), operator="val", role=OperatorRole.VIEWER),
    },
    max_skew_s=60.0,
)


@dataclass
class Leader:
    """A coordinator holding the lease, fed through the store's inbox like the service feeds it."""

    coordinator: RolloutCoordinator
    executor: StoreExecutor
    store: FleetStore
    published: list[Outbound] = field(default_factory=list)
    epoch: int = 0

    async def send(self, request: OperatorRequest | bytes, response_topic: str, at: datetime = NOW) -> None:
        """Queue `request` as received with `response_topic`, then run one step at `at`."""
        payload = request if isinstance(request, bytes) else channels.encode(request)
        await self.executor.call(
            self.store.add_to_inbox,
            TopicKind.OPERATOR_REQUEST.value,
            payload,
            response_topic,
            b"corr",
            at.timestamp(),
        )
        await self.coordinator.step(self.epoch, at.timestamp())

    def replies(self) -> list[tuple[str, OperatorReply]]:
        """Every reply published, with its topic."""
        return [
            (message.topic, channels.decode_as(TopicKind.OPERATOR_REPLY, message.payload, OperatorReply))
            for message in self.published
            if message.topic.startswith(f"{TREE.prefix}/ops/reply/")
        ]

    async def audit(self) -> list[AuditEvent]:
        """Every audit line saved."""
        rows = await self.executor.call(self.store.audit_events)
        return [channels.decode_as(TopicKind.AUDIT, row, AuditEvent) for row in rows]


async def _leader(tmp_path: Path, auth: OperatorAuthConfig) -> AsyncIterator[Leader]:
    store = open_store(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    executor = StoreExecutor()
    published: list[Outbound] = []
    async with httpx.AsyncClient() as http:
        coordinator = RolloutCoordinator(
            store,
            executor,
            MemfaultClient(MemfaultSettings(base_url="http://127.0.0.1:9"), http),
            tree=TREE,
            settings=SchedulerConfig(),
            operator_keys=OperatorKeys(auth),
            publish=published.append,
        )
        epoch = await executor.call(store.acquire_lease, "c1", NOW.timestamp(), 3600.0)
        assert epoch is not None
        await coordinator.load()
        yield Leader(coordinator, executor, store, published, epoch)
    executor.shutdown()
    store.db.close()


@pytest.fixture
async def leader(tmp_path: Path) -> AsyncIterator[Leader]:
    """A leader that requires no signatures."""
    async for made in _leader(tmp_path, OperatorAuthConfig()):
        yield made


@pytest.fixture
async def signing_leader(tmp_path: Path) -> AsyncIterator[Leader]:
    """A leader that requires signatures by alice (operator) or val (viewer)."""
    async for made in _leader(tmp_path, SIGNED):
        yield made


PAUSE = PauseRollout(request_id=RequestId("req-1"), rollout_id=RolloutId("nope"), operator="alice")
FOREIGN_TOPICS = [
    TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-1"),
    TREE.topic(TopicKind.ROLLOUT_STATE, rollout_id="r1"),
    TREE.topic(TopicKind.OPERATOR_REQUEST),
    TREE.topic(TopicKind.OPERATOR_DEFAULT_REPLY, request_id="req-1"),
    TREE.topic(TopicKind.AUDIT),
    f"{TREE.prefix}/ops/reply/+/req-1",
    f"{TREE.prefix}/ops/reply/alice/req-1/extra",
    "other/v1/ops/reply/alice/req-1",
    "",
]


@pytest.mark.parametrize("response_topic", FOREIGN_TOPICS)
async def test_a_foreign_response_topic_gets_a_refusal_on_the_default_topic(
    leader: Leader, response_topic: str
) -> None:
    """Confused deputy: nothing is published on the named topic; the refusal is counted and audited."""
    await leader.send(PAUSE, response_topic)
    default = TREE.topic(TopicKind.OPERATOR_DEFAULT_REPLY, request_id="req-1")
    assert [
        message.topic for message in leader.published if message.topic != TREE.topic(TopicKind.AUDIT)
    ] == [default]
    [(_, reply)] = leader.replies()
    assert reply.status is ReplyStatus.REJECTED and reply.reason == "reply_topic_refused"
    assert leader.coordinator.stats.reply_topics_refused == 1
    [event] = await leader.audit()
    assert event.request_id == "req-1" and event.detail.startswith("reply_topic_refused")
    # The request was not read: sent properly afterwards, it is answered on its own merits.
    leader.published.clear()
    await leader.send(PAUSE, OWN_REPLY)
    assert [(topic, reply.reason) for topic, reply in leader.replies()] == [(OWN_REPLY, "unknown_rollout")]


async def test_a_repeated_request_id_cannot_redirect_the_first_reply(leader: Leader) -> None:
    """The stored answer to a request id is never sent to a foreign topic either."""
    await leader.send(PAUSE, OWN_REPLY)
    leader.published.clear()
    command_topic = TREE.topic(TopicKind.GATEWAY_COMMAND, gateway_id="gw-1")
    await leader.send(PAUSE, command_topic)
    assert all(message.topic != command_topic for message in leader.published)
    assert [reply.reason for _, reply in leader.replies()] == ["reply_topic_refused"]


async def test_the_audit_names_the_key_not_the_payload(signing_leader: Leader) -> None:
    """A signed request naming nobody is audited as the key's operator; the reply goes to its topic."""
    request = sign_request(msgspec.structs.replace(PAUSE, operator=""), "alice-1", ALICE, NOW)
    await signing_leader.send(request, OWN_REPLY)
    assert [(topic, reply.reason) for topic, reply in signing_leader.replies()] == [
        (OWN_REPLY, "unknown_rollout")
    ]
    [event] = await signing_leader.audit()
    assert event.actor == "alice" and event.action == "request:pause:rejected"


async def test_during_a_rotation_both_keys_act_for_alice(signing_leader: Leader) -> None:
    """The old and the new key of one operator are both accepted and both audited as alice."""
    for index, (key_id, key) in enumerate((("alice-1", ALICE), ("alice-2", ALICE_NEXT))):
        request = msgspec.structs.replace(PAUSE, request_id=RequestId(f"rot-{index}"))
        own = TREE.topic(TopicKind.OPERATOR_REPLY, operator_id="alice", request_id=f"rot-{index}")
        await signing_leader.send(sign_request(request, key_id, key, NOW), own)
    assert [reply.reason for _, reply in signing_leader.replies()] == ["unknown_rollout", "unknown_rollout"]
    assert [event.actor for event in await signing_leader.audit()] == ["alice", "alice"]


async def test_a_replayed_signed_request_acts_once(signing_leader: Leader) -> None:
    """The same signed bytes again get the first answer and no second audit line."""
    request = sign_request(PAUSE, "alice-1", ALICE, NOW)
    await signing_leader.send(request, OWN_REPLY)
    await signing_leader.send(request, OWN_REPLY, NOW + timedelta(seconds=5))
    assert [reply.reason for _, reply in signing_leader.replies()] == ["unknown_rollout", "unknown_rollout"]
    assert len(await signing_leader.audit()) == 1


async def test_an_expired_request_is_refused_and_audited(signing_leader: Leader) -> None:
    """Replayed after the skew window, a captured request is refused as expired; alice is audited."""
    request = sign_request(PAUSE, "alice-1", ALICE, NOW)
    await signing_leader.send(request, OWN_REPLY, NOW + timedelta(seconds=61))
    [(_, reply)] = signing_leader.replies()
    assert reply.reason == "expired"
    [event] = await signing_leader.audit()
    assert event.actor == "alice" and event.detail.startswith("expired")


async def test_a_viewer_cannot_abort(signing_leader: Leader) -> None:
    """A viewer's abort is refused for its role and changes nothing."""
    abort = AbortRollout(request_id=RequestId("req-9"), rollout_id=RolloutId("nope"))
    own = TREE.topic(TopicKind.OPERATOR_REPLY, operator_id="val", request_id="req-9")
    await signing_leader.send(sign_request(abort, "val-1", VAL, NOW), own)
    [(topic, reply)] = signing_leader.replies()
    assert topic == own and reply.reason == "role_forbidden" and "needs admin" in reply.message
    [event] = await signing_leader.audit()
    assert event.actor == "val"


async def test_unsigned_requests_are_refused_when_keys_are_configured(signing_leader: Leader) -> None:
    """Without a signature nothing happens; the audit does not take the claimed name."""
    await signing_leader.send(PAUSE, OWN_REPLY)
    [(_, reply)] = signing_leader.replies()
    assert reply.reason == "signature_required"
    [event] = await signing_leader.audit()
    assert event.actor == "unverified"


async def test_a_stored_rollout_this_version_cannot_read_is_kept_and_counted_not_run(leader: Leader) -> None:
    """A row whose spec breaks a rule added since (target `latest`): skipped, counted, left stored."""
    good = RolloutMachine.create("r-good", RolloutSpec(software_type="app", target_version="1.1.0"), NOW)
    bad = RolloutMachine.create("r-bad", RolloutSpec(software_type="app", target_version="1.1.0"), NOW)
    header = msgspec.msgpack.decode(bad.take_changes().header)
    header["spec"]["target_version"] = "latest"
    rows = [
        RolloutRecord("r-good", "created", good.take_changes().header),
        RolloutRecord("r-bad", "created", msgspec.msgpack.encode(header)),
    ]
    await leader.executor.call(
        leader.store.save_transition,
        lease_epoch=leader.epoch,
        rollouts=rows,
        commands=[],
        audit=[],
        now_s=NOW.timestamp(),
    )
    await leader.coordinator.load()
    assert set(leader.coordinator.machines) == {"r-good"}
    assert leader.coordinator.stats.unreadable_rollouts == 1
    stored = await leader.executor.call(leader.store.load_rollouts)
    assert {record.rollout_id for record in stored} == {"r-good", "r-bad"}
