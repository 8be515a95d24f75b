"""HTTP byte ranges (RFC 9110 section 14) for artifact downloads: one range, or the whole body (pure).

A syntactically invalid Range, another unit or several ranges are ignored (the whole body is sent,
which RFC 9110 allows); a valid range that misses the body is unsatisfiable (HTTP 416).
"""

import re
from dataclasses import dataclass
from typing import Final

MAX_OFFSET_DIGITS: Final = 18
"""Longer offsets are clamped to 10**18, past any artifact (and past `int()`'s digit limit)."""
_SINGLE_RANGE: Final = re.compile(r"bytes=[ \t]*(\d*)-(\d*)[ \t]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class WholeBody:
    """Send everything with HTTP 200."""


@dataclass(frozen=True, slots=True)
class ByteSpan:
    """Send bytes `first..last` (inclusive) with HTTP 206."""

    first: int
    last: int

    @property
    def length_bytes(self) -> int:
        """Bytes in the span."""
        return self.last - self.first + 1

    def content_range(self, size_bytes: int) -> str:
        """The Content-Range header value."""
        return f"bytes {self.first}-{self.last}/{size_bytes}"


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Answer HTTP 416 with `Content-Range: bytes */size`."""

    def content_range(self, size_bytes: int) -> str:
        """The Content-Range header value."""
        return f"bytes */{size_bytes}"


RangeAnswer = WholeBody | ByteSpan | Unsatisfiable


def resolve_range(header: str | None, size_bytes: int) -> RangeAnswer:
    """What to send for a Range header value (None when absent) and a body of `size_bytes`."""
    match = _SINGLE_RANGE.fullmatch(header) if header is not None else None
    if match is None or match.groups() == ("", ""):
        return WholeBody()
    first_text, last_text = match.groups()
    if not first_text:
        return _suffix(_offset(last_text), size_bytes)
    return _span(_offset(first_text), _offset(last_text) if last_text else None, size_bytes)


def _suffix(length_bytes: int, size_bytes: int) -> RangeAnswer:
    """`bytes=-n`: the last n bytes."""
    if length_bytes == 0 or size_bytes == 0:
        return Unsatisfiable()
    return ByteSpan(max(0, size_bytes - length_bytes), size_bytes - 1)


def _span(first: int, last: int | None, size_bytes: int) -> RangeAnswer:
    """`bytes=a-b` or `bytes=a-`."""
    if last is not None and last < first:
        return WholeBody()
    if first >= size_bytes:
        return Unsatisfiable()
    return ByteSpan(first, size_bytes - 1 if last is None else min(last, size_bytes - 1))


def _offset(digits: str) -> int:
    return 10**MAX_OFFSET_DIGITS if len(digits) > MAX_OFFSET_DIGITS else int(digits)
