"""Byte-range resolution and signed URL checks, without HTTP."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.cloud.ranges import ByteSpan, RangeAnswer, Unsatisfiable, WholeBody, resolve_range
from simulator.cloud.signing import SignatureCheck, UrlSigner


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, WholeBody()),
        ("bytes=0-9", ByteSpan(0, 9)),
        ("bytes=90-", ByteSpan(90, 99)),
        ("bytes=90-1000", ByteSpan(90, 99)),
        ("bytes=-10", ByteSpan(90, 99)),
        ("bytes=-1000", ByteSpan(0, 99)),
        ("bytes=100-", Unsatisfiable()),
        ("bytes=100-200", Unsatisfiable()),
        ("bytes=-0", Unsatisfiable()),
        ("bytes=99999999999999999999999-", Unsatisfiable()),
        ("bytes=9-1", WholeBody()),
        ("bytes=-", WholeBody()),
        ("bytes=0-1,5-6", WholeBody()),
        ("items=0-1", WholeBody()),
        ("bytes=a-b", WholeBody()),
        ("", WholeBody()),
    ],
)
def test_range_headers_resolve_like_rfc_9110(header: str | None, expected: RangeAnswer) -> None:
    """One valid range is served; an unsatisfiable one is 416; anything else gets the whole body."""
    assert resolve_range(header, 100) == expected


def test_nothing_in_an_empty_body_is_satisfiable() -> None:
    """Every range of a zero-length artifact is unsatisfiable."""
    assert resolve_range("bytes=0-", 0) == Unsatisfiable()
    assert resolve_range("bytes=-5", 0) == Unsatisfiable()


@given(st.text(max_size=40), st.integers(0, 10_000))
def test_any_header_resolves_inside_the_body(header: str, size_bytes: int) -> None:
    """Whatever the header, a span lies within the body."""
    answer = resolve_range(header, size_bytes)
    if isinstance(answer, ByteSpan):
        assert 0 <= answer.first <= answer.last < size_bytes


def test_signed_urls_expire_and_bind_the_artifact() -> None:
    """A signature is valid until its expiry, for its artifact only, and only with our secret."""
    signer = UrlSigner(b"k" * 32, url_ttl_s=60.0)
    params = dict(pair.split("=") for pair in signer.query(7, now_s=1000.0).split("&"))
    expires, signature = params["expires"], params["signature"]
    assert expires == "1060"
    assert signer.check(7, expires, signature, now_s=1059.0) is SignatureCheck.VALID
    assert signer.check(7, expires, signature, now_s=1060.0) is SignatureCheck.EXPIRED
    assert signer.check(8, expires, signature, now_s=1000.0) is SignatureCheck.BAD_SIGNATURE
    assert signer.check(7, "2000", signature, now_s=1000.0) is SignatureCheck.BAD_SIGNATURE
    assert UrlSigner(b"x" * 32).check(7, expires, signature, now_s=1000.0) is SignatureCheck.BAD_SIGNATURE
    assert signer.check(7, None, signature, now_s=1000.0) is SignatureCheck.BAD_SIGNATURE
    assert signer.check(7, expires, "é", now_s=1000.0) is SignatureCheck.BAD_SIGNATURE
