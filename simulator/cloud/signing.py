"""Expiring signed artifact URLs, like a CDN's: HMAC-SHA256 over the artifact id and expiry (pure)."""

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final
from urllib.parse import urlencode

DEFAULT_URL_TTL_S: Final = 6 * 3600.0
"""Memfault's artifact URLs expire after six hours (protocol.md section 6.1)."""
MAX_QUERY_VALUE_CHARS: Final = 128


class SignatureCheck(StrEnum):
    """The outcome of checking a download URL's signature."""

    VALID = "valid"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True, slots=True)
class UrlSigner:
    """Signs and checks `expires`/`signature` query parameters for artifact downloads."""

    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    url_ttl_s: float = DEFAULT_URL_TTL_S

    def query(self, artifact_id: int, now_s: float) -> str:
        """The query string (without `?`) of a download URL valid for `url_ttl_s` from `now_s`."""
        expires_s = math.ceil(now_s + self.url_ttl_s)
        return urlencode({"expires": expires_s, "signature": self._signature(artifact_id, expires_s)})

    def check(
        self, artifact_id: int, expires: str | None, signature: str | None, now_s: float
    ) -> SignatureCheck:
        """Whether the URL's parameters were signed by us for this artifact and are still valid."""
        if (
            expires is None
            or signature is None
            or len(expires) > MAX_QUERY_VALUE_CHARS
            or not expires.isascii()
            or not expires.isdigit()
        ):
            return SignatureCheck.BAD_SIGNATURE
        expires_s = int(expires)
        expected = self._signature(artifact_id, expires_s).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            return SignatureCheck.BAD_SIGNATURE
        if now_s >= expires_s:
            return SignatureCheck.EXPIRED
        return SignatureCheck.VALID

    def _signature(self, artifact_id: int, expires_s: int) -> str:
        message = f"{artifact_id}:{expires_s}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()
