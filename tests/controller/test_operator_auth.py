"""Operator request signatures: valid ones pass; unsigned, unknown-key, tampered ones are refused."""

from __future__ import annotations

import base64

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from controller.errors import ConfigError
from controller.operator_auth import OperatorKeys, sign_request
from schemas import PauseRollout, RequestId, RolloutId

PRIVATE = Ed25519PrivateKey.generate()
PUBLIC_B64 = base64.b64encode(PRIVATE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
REQUEST = PauseRollout(request_id=RequestId("req-1"), rollout_id=RolloutId("r1"), operator="alice")


def test_a_signed_request_is_authorised() -> None:
    """A signature by a configured key over the canonical payload verifies."""
    keys = OperatorKeys({"alice-1": PUBLIC_B64})
    assert keys.refusal(sign_request(REQUEST, "alice-1", PRIVATE)) == ""


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (REQUEST, "signature_required"),
        (sign_request(REQUEST, "mallory", PRIVATE), "unknown_key"),
        (
            msgspec.structs.replace(sign_request(REQUEST, "alice-1", PRIVATE), rollout_id=RolloutId("r2")),
            "bad_signature",
        ),
        (sign_request(REQUEST, "alice-1", Ed25519PrivateKey.generate()), "bad_signature"),
        (msgspec.structs.replace(REQUEST, key_id="alice-1", signature="!!"), "bad_signature"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(request_: PauseRollout, reason: str) -> None:
    """Missing, foreign, tampered or garbage signatures are refused, each with its own reason."""
    assert OperatorKeys({"alice-1": PUBLIC_B64}).refusal(request_) == reason


def test_without_keys_signatures_are_not_required() -> None:
    """A controller without operator keys relies on the broker ACL alone."""
    assert OperatorKeys({}).refusal(REQUEST) == "" and not OperatorKeys({}).required


def test_a_malformed_configured_key_is_a_config_error() -> None:
    """A key that is not base64 Ed25519 stops the controller at start."""
    with pytest.raises(ConfigError, match="alice"):
        OperatorKeys({"alice": "not-a-key"})
