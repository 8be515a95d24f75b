"""CBOR as Zephyr's zcbor speaks it: replies with indefinite-length containers, strict request decoding.

Rules of this file:
- Encoding writes maps as `bf ... ff` and arrays as `9f ... ff` (zcbor without ZCBOR_CANONICAL, the
  Zephyr default) and integers, strings and simple values in their shortest form.
- Decoding reads one request map, definite or indefinite, and raises only `CborDecodeError`: a length
  that runs past the payload, a reserved or unexpected byte, nesting deeper than `MAX_NESTING`, a
  non-text or repeated key in the top-level map. Nested containers are skipped (zcbor's `any_skip`),
  so a handler sees them as `NESTED`, which no field accessor accepts.
- Text is kept byte-exact: invalid UTF-8 survives a decode/encode round trip (surrogateescape), as
  zcbor never validates UTF-8.
"""

import struct
from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

from simulator.errors import CborDecodeError

MAX_NESTING: Final = 8
UINT32_MAX: Final = 0xFFFFFFFF


class _Nested:
    """The value of a key whose CBOR item is an array, a map or a tag over one of them."""

    def __repr__(self) -> str:
        return "NESTED"


NESTED: Final = _Nested()

Scalar: TypeAlias = int | float | str | bytes | bool | None
RequestValue: TypeAlias = Scalar | _Nested
ReplyValue: TypeAlias = "Scalar | Sequence[ReplyValue] | Mapping[str, ReplyValue]"

_BREAK: Final = 0xFF
_SIMPLE_VALUES: Final[dict[int, Scalar]] = {20: False, 21: True, 22: None, 23: None}
_FLOAT_FORMATS: Final = {25: struct.Struct(">e"), 26: struct.Struct(">f"), 27: struct.Struct(">d")}
_TEXT_ERRORS: Final = "surrogateescape"


def encode(value: ReplyValue) -> bytes:
    """Encode a reply value as zcbor does (indefinite-length maps and arrays)."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _head(major: int, argument: int, out: bytearray) -> None:
    if argument < 24:
        out.append(major << 5 | argument)
    elif argument <= 0xFF:
        out += bytes((major << 5 | 24, argument))
    elif argument <= 0xFFFF:
        out.append(major << 5 | 25)
        out += argument.to_bytes(2, "big")
    elif argument <= UINT32_MAX:
        out.append(major << 5 | 26)
        out += argument.to_bytes(4, "big")
    else:
        out.append(major << 5 | 27)
        out += argument.to_bytes(8, "big")


def _encode(value: ReplyValue, out: bytearray) -> None:
    if value is None:
        out.append(0xF6)
    elif isinstance(value, bool):
        out.append(0xF5 if value else 0xF4)
    elif isinstance(value, int):
        if value >= 0:
            _head(0, value, out)
        else:
            _head(1, -1 - value, out)
    elif isinstance(value, float):
        out.append(0xFB)
        out += struct.pack(">d", value)
    elif isinstance(value, bytes):
        _head(2, len(value), out)
        out += value
    elif isinstance(value, str):
        raw = value.encode("utf-8", _TEXT_ERRORS)
        _head(3, len(raw), out)
        out += raw
    elif isinstance(value, Mapping):
        out.append(0xBF)
        for key, item in value.items():
            _encode(key, out)
            _encode(item, out)
        out.append(_BREAK)
    else:
        out.append(0x9F)
        for item in value:
            _encode(item, out)
        out.append(_BREAK)


class _Reader:
    """A cursor over a payload; every read is bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.pos:
            raise CborDecodeError(f"CBOR item runs {count} bytes past offset {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def peek_break(self) -> bool:
        if self.pos >= len(self.data):
            raise CborDecodeError("indefinite-length item is not terminated")
        if self.data[self.pos] == _BREAK:
            self.pos += 1
            return True
        return False

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if info > 27:
            raise CborDecodeError(f"reserved additional information {info} at offset {self.pos - 1}")
        return int.from_bytes(self.take(1 << (info - 24)), "big")


def _decode_item(reader: _Reader, depth: int) -> RequestValue:
    if depth > MAX_NESTING:
        raise CborDecodeError(f"CBOR nesting deeper than {MAX_NESTING}")
    initial = reader.byte()
    major, info = initial >> 5, initial & 0x1F
    if major == 7:
        return _decode_simple(reader, info)
    if info == 31:
        return _decode_indefinite(reader, major, depth)
    return _decode_definite(reader, major, reader.argument(info), depth)


def _decode_definite(reader: _Reader, major: int, argument: int, depth: int) -> RequestValue:
    match major:
        case 0:
            return argument
        case 1:
            return -1 - argument
        case 2:
            return reader.take(argument)
        case 3:
            return reader.take(argument).decode("utf-8", _TEXT_ERRORS)
        case 4 | 5:
            for _ in range(argument * (major - 3)):
                _decode_item(reader, depth + 1)
            return NESTED
        case _:  # 6: a tag; the tagged item is what counts
            return _decode_item(reader, depth + 1)


def _decode_indefinite(reader: _Reader, major: int, depth: int) -> RequestValue:
    if major in (2, 3):
        chunks = bytearray()
        while not reader.peek_break():
            chunk_head = reader.byte()
            if chunk_head >> 5 != major or chunk_head & 0x1F == 31:
                raise CborDecodeError("indefinite-length string has a chunk of another type")
            chunks += reader.take(reader.argument(chunk_head & 0x1F))
        return bytes(chunks) if major == 2 else chunks.decode("utf-8", _TEXT_ERRORS)
    if major in (4, 5):
        while not reader.peek_break():
            _decode_item(reader, depth + 1)
        return NESTED
    raise CborDecodeError(f"major type {major} cannot have an indefinite length")


def _decode_simple(reader: _Reader, info: int) -> Scalar:
    if info in _SIMPLE_VALUES:
        return _SIMPLE_VALUES[info]
    if info in _FLOAT_FORMATS:
        layout = _FLOAT_FORMATS[info]
        value: float = layout.unpack(reader.take(layout.size))[0]
        return value
    if info == 24:  # a one-byte simple value: unassigned, read as null
        reader.take(1)
        return None
    if info < 20:  # unassigned simple values, read as null
        return None
    raise CborDecodeError(f"simple value {info} is reserved or a stray break")


class RequestMap:
    """The top-level map of a request payload, with zcbor's typed field decoders."""

    def __init__(self, fields: dict[str, RequestValue]) -> None:
        self._fields = fields

    @classmethod
    def decode(cls, payload: bytes) -> "RequestMap":
        """Decode the first CBOR item of `payload`, which must be a map with unique text keys.

        Raises:
            CborDecodeError: anything else.
        """
        reader = _Reader(payload)
        initial = reader.byte()
        if initial >> 5 != 5:
            raise CborDecodeError(f"request payload starts with 0x{initial:02x}, not a map")
        info = initial & 0x1F
        count = None if info == 31 else reader.argument(info)
        fields: dict[str, RequestValue] = {}
        while (len(fields) < count) if count is not None else not reader.peek_break():
            key = _decode_item(reader, 1)
            if not isinstance(key, str):
                raise CborDecodeError(f"request map key {key!r} is not a text string")
            if key in fields:
                raise CborDecodeError(f"request map repeats key {key!r}")
            fields[key] = _decode_item(reader, 1)
        return cls(fields)

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def uint(self, key: str, *, maximum: int = UINT32_MAX) -> int | None:
        """The unsigned integer at `key` (None when absent), by zcbor_uint32_decode's rules."""
        if key not in self._fields:
            return None
        value = self._fields[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            raise CborDecodeError(f"{key!r} is {value!r}, not an unsigned integer up to {maximum}")
        return value

    def bstr(self, key: str) -> bytes | None:
        """The byte string at `key` (None when absent)."""
        if key not in self._fields:
            return None
        value = self._fields[key]
        if not isinstance(value, bytes):
            raise CborDecodeError(f"{key!r} is {value!r}, not a byte string")
        return value

    def tstr(self, key: str) -> str | None:
        """The text string at `key` (None when absent)."""
        if key not in self._fields:
            return None
        value = self._fields[key]
        if not isinstance(value, str):
            raise CborDecodeError(f"{key!r} is {value!r}, not a text string")
        return value

    def boolean(self, key: str) -> bool | None:
        """The boolean at `key` (None when absent)."""
        if key not in self._fields:
            return None
        value = self._fields[key]
        if not isinstance(value, bool):
            raise CborDecodeError(f"{key!r} is {value!r}, not a boolean")
        return value
