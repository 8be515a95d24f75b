"""Operator authority on top of the broker ACL: Ed25519 signatures over operator requests.

With keys configured, the controller accepts a request only when `key_id` names a configured key
and `signature` (base64) verifies over `schemas.signing_payload(request)`; a leaked gateway
credential can then publish on the request topic (if the ACL were wrong) and still change nothing.
Signatures are replay-protected by the request id: the controller answers a repeated id with the
first reply and never acts twice.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controller.errors import ConfigError
from schemas import OperatorRequest, signing_payload


class OperatorKeys:
    """The operator public keys a controller trusts (empty: signatures are not required)."""

    def __init__(self, public_keys_b64: Mapping[str, str]) -> None:
        """`public_keys_b64` maps key ids to raw 32-byte Ed25519 public keys in base64."""
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key_id, encoded in public_keys_b64.items():
            try:
                self._keys[key_id] = Ed25519PublicKey.from_public_bytes(
                    base64.b64decode(encoded, validate=True)
                )
            except (binascii.Error, ValueError) as error:
                raise ConfigError(
                    f"operator key {key_id!r} is not a base64 Ed25519 public key: {error}"
                ) from None

    @property
    def required(self) -> bool:
        """Whether requests must be signed."""
        return bool(self._keys)

    def refusal(self, request: OperatorRequest) -> str:
        """Why `request` is not authorised ("" when it is)."""
        if not self._keys:
            return ""
        if not request.key_id or not request.signature:
            return "signature_required"
        key = self._keys.get(request.key_id)
        if key is None:
            return "unknown_key"
        try:
            signature = base64.b64decode(request.signature, validate=True)
            key.verify(signature, signing_payload(request))
        except (binascii.Error, ValueError, InvalidSignature):
            return "bad_signature"
        return ""


def sign_request(request: OperatorRequest, key_id: str, private_key: Ed25519PrivateKey) -> OperatorRequest:
    """Return `request` signed with `private_key` under `key_id` (what `mcufleet rollout` does)."""
    unsigned = msgspec.structs.replace(request, key_id=key_id, signature="")
    signature = base64.b64encode(private_key.sign(signing_payload(unsigned))).decode()
    return msgspec.structs.replace(unsigned, signature=signature)
