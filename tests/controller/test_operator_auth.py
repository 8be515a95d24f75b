"""Operator request signatures: identity and role come from the key; stale, replayed, forged are refused."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import get_args

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import ConfigError
from controller.operator_auth import REQUIRED_ROLE, OperatorKeys, request_op, required_role, sign_request
from controller.settings import OperatorAuthConfig, OperatorKey, OperatorRole
from schemas import (
    AbortRollout,
    CancelDevice,
    CreateRollout,
    DeviceSerial,
    OperatorRequest,
    PauseRollout,
    PreviewRollout,
    RequestId,
    ResumeRollout,
    RetryFailed,
    RolloutId,
    RolloutSpec,
    StartRollout,
    signing_payload,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
ALICE_OLD, ALICE_NEW, VIEWER, ADMIN = (Ed25519PrivateKey.generate() for _ in range(4))
ROLLOUT = RolloutId("r1")
PAUSE = PauseRollout(request_id=RequestId("req-1"), rollout_id=ROLLOUT)


def public_b64(key: Ed25519PrivateKey) -> str:
    """The raw public key in base64, as `[operator_auth.keys]` holds it."""
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


CONFIG = OperatorAuthConfig(
    keys={
        "alice-2025": OperatorKey(
            public_key=public_b64(ALICE_OLD), operator="alice", role=OperatorRole.OPERATOR
        ),
        "alice-2026": OperatorKey(
            public_key=public_b64(ALICE_NEW), operator="alice", role=OperatorRole.OPERATOR
        ),
        "val-1": OperatorKey(public_key=public_b64(VIEWER), operator="val", role=OperatorRole.VIEWER),
        "root-1": OperatorKey(public_key=public_b64(ADMIN), operator="root", role=OperatorRole.ADMIN),
    },
    max_skew_s=60.0,
)


def signed(request: OperatorRequest, key_id: str = "alice-2026", at: datetime = NOW) -> OperatorRequest:
    """`request` signed with the private key behind `key_id`."""
    private = {"alice-2025": ALICE_OLD, "alice-2026": ALICE_NEW, "val-1": VIEWER, "root-1": ADMIN}[key_id]
    return sign_request(request, key_id, private, at)


def test_a_signed_request_speaks_for_the_keys_operator() -> None:
    """A fresh signature by a configured key is authorised, with the key's identity and role."""
    verdict = OperatorKeys(CONFIG).verify(signed(PAUSE), NOW)
    assert (verdict.refusal, verdict.operator, verdict.role) == ("", "alice", OperatorRole.OPERATOR)


def test_the_audit_identity_is_the_keys_not_the_payloads() -> None:
    """A payload naming someone else is refused; one naming nobody is recorded as the key's operator."""
    keys = OperatorKeys(CONFIG)
    claiming = signed(msgspec.structs.replace(PAUSE, operator="root"))
    verdict = keys.verify(claiming, NOW)
    assert verdict.refusal == "operator_mismatch" and verdict.operator == "alice"
    assert keys.verify(signed(msgspec.structs.replace(PAUSE, operator="alice")), NOW).refusal == ""


def test_both_keys_of_a_rotation_speak_for_the_same_operator() -> None:
    """During a rotation the old and the new key both work, and both are alice."""
    keys = OperatorKeys(CONFIG)
    for key_id in ("alice-2025", "alice-2026"):
        verdict = keys.verify(signed(PAUSE, key_id), NOW)
        assert (verdict.refusal, verdict.operator) == ("", "alice"), key_id
    # A signature by the old key does not pass as the new key's.
    forged = msgspec.structs.replace(signed(PAUSE, "alice-2025"), key_id="alice-2026")
    assert keys.verify(forged, NOW).refusal == "bad_signature"


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (PAUSE, "signature_required"),
        (msgspec.structs.replace(signed(PAUSE), key_id="mallory"), "unknown_key"),
        (msgspec.structs.replace(signed(PAUSE), rollout_id=RolloutId("r2")), "bad_signature"),
        (msgspec.structs.replace(signed(PAUSE), issued_at=NOW + timedelta(seconds=1)), "bad_signature"),
        (msgspec.structs.replace(signed(PAUSE), request_id=RequestId("req-2")), "bad_signature"),
        (sign_request(PAUSE, "alice-2026", Ed25519PrivateKey.generate(), NOW), "bad_signature"),
        (msgspec.structs.replace(PAUSE, key_id="alice-2026", signature="!!"), "bad_signature"),
    ],
)
def test_forged_or_missing_signatures_are_refused(request_: OperatorRequest, reason: str) -> None:
    """Missing, foreign, tampered (any field, the issue time and request id too) or garbage: refused."""
    assert OperatorKeys(CONFIG).verify(request_, NOW).refusal == reason


def test_a_signature_without_an_issue_time_is_refused() -> None:
    """A request signed without issued_at (an old client) never passes."""
    unsigned = msgspec.structs.replace(PAUSE, key_id="alice-2026", issued_at=None)
    signature = base64.b64encode(ALICE_NEW.sign(signing_payload(unsigned))).decode()
    request = msgspec.structs.replace(unsigned, signature=signature)
    assert OperatorKeys(CONFIG).verify(request, NOW).refusal == "issue_time_required"


@pytest.mark.parametrize(
    ("issued_offset_s", "reason"),
    [(-61.0, "expired"), (-3600.0, "expired"), (61.0, "issued_in_future"), (-59.0, ""), (59.0, "")],
)
def test_requests_outside_the_skew_are_refused(issued_offset_s: float, reason: str) -> None:
    """issued_at more than max_skew_s away from the controller's clock, either way, is refused."""
    request = signed(PAUSE, at=NOW + timedelta(seconds=issued_offset_s))
    assert OperatorKeys(CONFIG).verify(request, NOW).refusal == reason


def test_a_replayed_signature_is_refused_and_forgotten_after_the_window() -> None:
    """The second use of a signature is refused; once it could only be expired, memory lets it go."""
    keys = OperatorKeys(CONFIG)
    request = signed(PAUSE)
    assert keys.remember(request, NOW) == ""
    assert keys.remember(request, NOW + timedelta(seconds=30)) == "replayed"
    assert keys.remember(signed(PAUSE, "alice-2025"), NOW) == ""
    assert keys.remembered == 2
    later = NOW + timedelta(seconds=61)
    assert keys.remember(signed(PAUSE, at=later), later) == ""
    assert keys.remembered == 1, "signatures older than the window are forgotten"
    assert keys.verify(request, later).refusal == "expired", "and the request itself is refused as expired"


def test_the_replay_memory_is_bounded() -> None:
    """With the memory full of signatures still inside the window, new requests are refused."""
    keys = OperatorKeys(msgspec.structs.replace(CONFIG, max_remembered_signatures=2))
    requests = [signed(msgspec.structs.replace(PAUSE, request_id=RequestId(f"req-{i}"))) for i in range(3)]
    assert [keys.remember(request, NOW) for request in requests] == ["", "", "replay_memory_full"]
    assert keys.remembered == 2


def _every_kind() -> list[OperatorRequest]:
    spec = RolloutSpec(software_type="app", target_version="1.1.0")
    request_id = RequestId("req-1")
    return [
        CreateRollout(request_id=request_id, rollout_id=ROLLOUT, spec=spec),
        PreviewRollout(request_id=request_id, rollout_id=ROLLOUT),
        StartRollout(request_id=request_id, rollout_id=ROLLOUT, plan_id="p1"),
        PauseRollout(request_id=request_id, rollout_id=ROLLOUT),
        ResumeRollout(request_id=request_id, rollout_id=ROLLOUT),
        AbortRollout(request_id=request_id, rollout_id=ROLLOUT),
        CancelDevice(request_id=request_id, rollout_id=ROLLOUT, device_serial=DeviceSerial("S1")),
        RetryFailed(request_id=request_id, rollout_id=ROLLOUT),
    ]


ALLOWED = {
    "val-1": {"preview"},
    "alice-2026": {"preview", "create", "start", "pause", "resume", "retry_failed", "cancel_device"},
    "root-1": {request_op(request) for request in _every_kind()},
}


@pytest.mark.parametrize("key_id", sorted(ALLOWED))
def test_each_role_may_do_exactly_its_share(key_id: str) -> None:
    """viewer: preview; operator: create, start, pause, resume, retry, cancel; admin: abort too."""
    keys = OperatorKeys(CONFIG)
    for request in _every_kind():
        verdict = keys.verify(signed(request, key_id), NOW)
        expected = "" if request_op(request) in ALLOWED[key_id] else "role_forbidden"
        assert verdict.refusal == expected, (key_id, request_op(request), verdict)


def test_kinds_missing_from_the_role_table_need_admin() -> None:
    """A request kind added later without a table entry is admin-only; the table names only real kinds."""
    kinds = {str(member.__struct_config__.tag) for member in get_args(OperatorRequest)}
    assert set(REQUIRED_ROLE) <= kinds
    assert required_role("accept_project_key") is OperatorRole.ADMIN
    assert required_role("abort") is OperatorRole.ADMIN


def test_without_keys_signatures_are_not_required() -> None:
    """A controller without operator keys relies on the broker ACL alone; the claimed name is kept."""
    keys = OperatorKeys(OperatorAuthConfig())
    verdict = keys.verify(msgspec.structs.replace(PAUSE, operator="bob"), NOW)
    assert (verdict.refusal, verdict.operator, keys.required) == ("", "bob", False)
    assert keys.remember(PAUSE, NOW) == ""


def test_a_malformed_configured_key_is_a_config_error() -> None:
    """A key that is not base64 Ed25519 stops the controller at start, naming the key."""
    bad = OperatorAuthConfig(
        keys={"alice": OperatorKey(public_key="not-a-key", operator="a", role=OperatorRole.ADMIN)}
    )
    with pytest.raises(ConfigError, match="alice"):
        OperatorKeys(bad)


def test_the_key_table_decodes_strictly_from_toml() -> None:
    """Unknown fields and unknown roles in `[operator_auth.keys.*]` are errors."""
    good = b'[keys.a]\npublic_key = "x"\noperator = "alice"\nrole = "viewer"\n'
    assert msgspec.toml.decode(good, type=OperatorAuthConfig).keys["a"].role is OperatorRole.VIEWER
    for bad in (
        good.replace(b"viewer", b"root"),
        good + b"colour = 1\n",
        good.replace(b'operator = "alice"\n', b""),
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.toml.decode(bad, type=OperatorAuthConfig)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=5), st.floats(min_value=0.0, max_value=40.0)),
        max_size=40,
    )
)
def test_no_replay_inside_the_window_passes_and_memory_holds_only_the_window(
    steps: list[tuple[int, float]],
) -> None:
    """Whatever the order and timing, a used signature never passes again while it is fresh."""
    keys = OperatorKeys(CONFIG)
    issued = [NOW + timedelta(seconds=20.0 * index) for index in range(6)]
    requests = [
        signed(msgspec.structs.replace(PAUSE, request_id=RequestId(f"req-{i}")), at=at)
        for i, at in enumerate(issued)
    ]
    now, used = NOW, set()
    for index, advance_s in steps:
        now += timedelta(seconds=advance_s)
        request = requests[index]
        if keys.verify(request, now).refusal:
            continue
        verdict = keys.remember(request, now)
        assert verdict == ("replayed" if index in used else ""), (index, now)
        used.add(index)
        # Remembered: exactly the used signatures that could still pass the freshness check.
        window = {i for i in used if issued[i].timestamp() + CONFIG.max_skew_s >= now.timestamp()}
        assert keys.remembered == len(window)
