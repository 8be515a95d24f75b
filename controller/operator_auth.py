"""Operator authority on top of the broker ACL: who signed a request, whether it is fresh and allowed.

Rules of this file: no I/O and no clock (`now` is an argument), so every rule is a unit test.

With keys configured (`[operator_auth.keys]`), the controller accepts a request only when

- `key_id` names a configured key and `signature` (base64) verifies over
  `schemas.signing_payload(request)`, which covers every field but the signature, `issued_at`
  included;
- `issued_at` is within `max_skew_s` of the controller's clock (a captured request expires);
- the signature was not seen before (the memory of seen signatures holds only those still inside
  the skew window, so it is bounded by the request rate times twice the window);
- the key's role allows the request's kind (`REQUIRED_ROLE`, the one table of who may do what);
- `operator`, when the request names one, is the identity the key speaks for.

The identity the audit records is the key's, never the payload's. Key rotation: configure the new
key next to the old one for the same operator, switch the CLI profile, then remove the old key.
Without keys, requests are not signed and the broker ACL alone decides who may publish them.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controller.errors import ConfigError
from controller.settings import OperatorAuthConfig, OperatorRole
from schemas import OperatorRequest, signing_payload

REQUIRED_ROLE: Final[Mapping[str, OperatorRole]] = MappingProxyType(
    {
        # viewer: look, never change anything (rollout state is read from retained topics).
        "preview": OperatorRole.VIEWER,
        # operator: drive rollouts through the plan the controller made.
        "create": OperatorRole.OPERATOR,
        "start": OperatorRole.OPERATOR,
        "pause": OperatorRole.OPERATOR,
        "resume": OperatorRole.OPERATOR,
        "retry_failed": OperatorRole.OPERATOR,
        "cancel_device": OperatorRole.OPERATOR,
        # admin: stop rollouts and override the controller's own judgement. A new request kind (an
        # override such as accepting a device's project-key change) goes here; a kind missing from
        # this table needs admin anyway.
        "abort": OperatorRole.ADMIN,
        "accept_key_change": OperatorRole.ADMIN,
    }
)
"""Request kind (its `op` tag) -> the least role that may send it."""

_RANK: Final = {OperatorRole.VIEWER: 0, OperatorRole.OPERATOR: 1, OperatorRole.ADMIN: 2}


def required_role(op: str) -> OperatorRole:
    """The least role that may send a request of kind `op` (admin for any kind not in the table)."""
    return REQUIRED_ROLE.get(op, OperatorRole.ADMIN)


def request_op(request: OperatorRequest) -> str:
    """The request's kind, as its `op` tag."""
    return str(type(request).__struct_config__.tag)


@dataclass(frozen=True, slots=True)
class Authorisation:
    """The verdict on one request."""

    refusal: str
    """Machine-readable reason for refusing it, "" when authorised."""
    operator: str
    """Who the request speaks for: the key's identity, or the claimed name when nothing is signed."""
    role: OperatorRole | None = None
    """The key's role (None when signatures are not required)."""
    detail: str = ""
    """A sentence for the reply and the audit."""


@dataclass(frozen=True, slots=True)
class _Key:
    public_key: Ed25519PublicKey
    operator: str
    role: OperatorRole


class OperatorKeys:
    """The operator keys a controller trusts, and the signatures it has seen (empty: none required)."""

    def __init__(self, config: OperatorAuthConfig) -> None:
        """Load the configured keys.

        Raises:
            ConfigError: a key is not a base64 raw Ed25519 public key.
        """
        self._keys: dict[str, _Key] = {}
        for key_id, key in config.keys.items():
            try:
                public_key = Ed25519PublicKey.from_public_bytes(
                    base64.b64decode(key.public_key, validate=True)
                )
            except (binascii.Error, ValueError) as error:
                raise ConfigError(
                    f"operator key {key_id!r} is not a base64 Ed25519 public key: {error}"
                ) from None
            self._keys[key_id] = _Key(public_key, key.operator, key.role)
        self._max_skew_s = config.max_skew_s
        self._capacity = config.max_remembered_signatures
        self._seen: set[str] = set()
        self._forget: list[tuple[float, str]] = []
        """(when to forget, signature): a heap, earliest first."""

    @property
    def required(self) -> bool:
        """Whether requests must be signed."""
        return bool(self._keys)

    @property
    def remembered(self) -> int:
        """How many signatures the replay memory holds."""
        return len(self._seen)

    def verify(self, request: OperatorRequest, now: datetime) -> Authorisation:  # noqa: PLR0911 (one return per refusal)
        """Check the signature, its freshness and the key's role (the replay memory is untouched)."""
        if not self._keys:
            return Authorisation("", request.operator or "operator")
        if not request.key_id or not request.signature:
            return Authorisation(
                "signature_required", "", detail="this controller accepts signed requests only"
            )
        key = self._keys.get(request.key_id)
        if key is None:
            return Authorisation("unknown_key", "", detail=f"no operator key {request.key_id!r}")
        try:
            key.public_key.verify(
                base64.b64decode(request.signature, validate=True), signing_payload(request)
            )
        except (binascii.Error, ValueError, InvalidSignature, msgspec.ValidationError):
            return Authorisation(
                "bad_signature", "", detail=f"signature does not verify with {request.key_id!r}"
            )
        issued_at = request.issued_at
        if issued_at is None or issued_at.tzinfo is None:
            return Authorisation(
                "issue_time_required", key.operator, key.role, "signed requests carry issued_at"
            )
        age_s = (now - issued_at).total_seconds()
        if age_s > self._max_skew_s:
            detail = f"issued {age_s:.0f} s ago, more than the {self._max_skew_s:.0f} s allowed"
            return Authorisation("expired", key.operator, key.role, detail)
        if -age_s > self._max_skew_s:
            detail = f"issued {-age_s:.0f} s in the future, more than the {self._max_skew_s:.0f} s allowed"
            return Authorisation("issued_in_future", key.operator, key.role, detail)
        if request.operator and request.operator != key.operator:
            detail = f"key {request.key_id!r} speaks for {key.operator!r}, not {request.operator!r}"
            return Authorisation("operator_mismatch", key.operator, key.role, detail)
        op = request_op(request)
        needed = required_role(op)
        if _RANK[key.role] < _RANK[needed]:
            detail = f"{key.operator} holds role {key.role}; {op} needs {needed}"
            return Authorisation("role_forbidden", key.operator, key.role, detail)
        return Authorisation("", key.operator, key.role)

    def remember(self, request: OperatorRequest, now: datetime) -> str:
        """Record the request's signature as used; a refusal reason when it was used before ("" if not).

        Call only for a request `verify` authorised and that is about to be acted on.
        """
        if not self._keys or request.issued_at is None:
            return ""
        now_s = now.timestamp()
        while self._forget and self._forget[0][0] < now_s:
            _, signature = heapq.heappop(self._forget)
            self._seen.discard(signature)
        # Ed25519 signatures are deterministic: the same signature means the same signed bytes.
        if request.signature in self._seen:
            return "replayed"
        if len(self._seen) >= self._capacity:
            return "replay_memory_full"
        self._seen.add(request.signature)
        # Past issued_at + skew the request is refused as expired anyway: forget it then.
        heapq.heappush(self._forget, (request.issued_at.timestamp() + self._max_skew_s, request.signature))
        return ""


def sign_request(
    request: OperatorRequest, key_id: str, private_key: Ed25519PrivateKey, issued_at: datetime
) -> OperatorRequest:
    """Return `request` issued at `issued_at` and signed with `private_key` under `key_id`."""
    unsigned = msgspec.structs.replace(request, key_id=key_id, signature="", issued_at=issued_at)
    signature = base64.b64encode(private_key.sign(signing_payload(unsigned))).decode()
    return msgspec.structs.replace(unsigned, signature=signature)
