"""One prebuilt typed decoder per topic kind and one shared encoder: the only way payloads cross MQTT.

Inbound commands and operator requests decode strictly (their Structs forbid unknown fields and
every constraint is checked); reports decode leniently so newer gateways can add fields. Every
failure becomes a `PayloadError` that names the topic and the offending field.
"""

import re
from typing import Any, Final, TypeVar, cast

import msgspec

from schemas.errors import PayloadError
from schemas.topics import SPECS, TopicKind

T = TypeVar("T")

MAX_PAYLOAD_BYTES: Final = 256 * 1024
"""Payloads above this size are refused before decoding (the largest legitimate one is a plan)."""

_PATH_RE: Final = re.compile(r" - at `(?P<path>[^`]*)`$")
_UNKNOWN_FIELD_RE: Final = re.compile(r"unknown field `(?P<name>[^`]*)`")

_ENCODER: Final = msgspec.json.Encoder()
_DECODERS: Final[dict[TopicKind, msgspec.json.Decoder[Any]]] = {
    spec.kind: msgspec.json.Decoder(spec.payload) for spec in SPECS.values()
}


def encode(message: msgspec.Struct) -> bytes:
    """Encode a payload as JSON."""
    return _ENCODER.encode(message)


def decode(kind: TopicKind, payload: bytes, topic: str = "") -> object:
    """Decode a payload of a topic of `kind`.

    Raises:
        PayloadError: the payload is too large, not JSON, or violates the contract.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(topic, "$", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        return cast(object, _DECODERS[kind].decode(payload))
    except msgspec.ValidationError as error:
        text = str(error)
        match = _PATH_RE.search(text)
        field = match.group("path") if match else "$"
        reason = text[: match.start()] if match else text
        if unknown := _UNKNOWN_FIELD_RE.search(reason):
            field = f"{field}.{unknown.group('name')}"
        raise PayloadError(topic, field, reason) from None
    except msgspec.DecodeError as error:
        raise PayloadError(topic, "$", f"not valid JSON: {error}") from None
    except UnicodeDecodeError as error:  # msgspec raises it for a string that is not UTF-8
        raise PayloadError(topic, "$", f"not valid UTF-8: {error.reason} at byte {error.start}") from None


def decode_as(kind: TopicKind, payload: bytes, expected: type[T], topic: str = "") -> T:
    """Decode like `decode` and check the result is an `expected` (for single-type topics)."""
    message = decode(kind, payload, topic)
    if not isinstance(message, expected):
        raise PayloadError(topic, "$", f"expected {expected.__name__}, got {type(message).__name__}")
    return message
