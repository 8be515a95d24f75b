"""Fetches firmware artifacts safely into a content-addressed on-disk cache.

Nothing reaches a device before its size and sha256 are verified. Only allow-listed hosts are
fetched, over HTTPS unless configured otherwise, never from private or loopback addresses unless
configured (as the simulator setup does), and never through a redirect to another host. A partial
download resumes with a Range request; the cache evicts the least recently used files past its cap.
"""

import asyncio
import hashlib
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urljoin, urlsplit

import httpx

from agent.errors import DownloadError
from schemas import ReasonCode

MAX_REDIRECTS: Final = 3


class ArtifactRefused(DownloadError):
    """The artifact or its URL breaks the download policy, or its bytes are wrong.

    Attributes:
        reason: the job reason code to report.
    """

    def __init__(self, reason: ReasonCode, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """What the agent may download."""

    allowed_hosts: tuple[str, ...]
    """Exact host names, or `.example.com` for any subdomain of example.com."""
    allow_http: bool = False
    allow_private_addresses: bool = False
    max_artifact_bytes: int = 16 * 1024 * 1024
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0


@dataclass
class CacheStats:
    """Cache activity, read by the metrics collector."""

    hits: int = 0
    misses: int = 0
    downloaded_bytes: int = 0
    evicted_files: int = 0


@dataclass
class ArtifactCache:
    """Files named by their sha256, evicted least-recently-used past `max_bytes`."""

    directory: Path
    max_bytes: int
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256_hex: str) -> Path:
        """Where the verified file with this digest lives."""
        return self.directory / f"{sha256_hex}.bin"

    def partial_path(self, sha256_hex: str) -> Path:
        """Where an unfinished download of this digest is kept for resuming."""
        return self.directory / f"{sha256_hex}.part"

    def lookup(self, sha256_hex: str, size_bytes: int) -> Path | None:
        """Return the cached file when present with the right size, marking it recently used."""
        path = self.path_for(sha256_hex)
        try:
            if path.stat().st_size != size_bytes:
                path.unlink()
                return None
        except FileNotFoundError:
            return None
        os.utime(path)
        return path

    def used_bytes(self) -> int:
        """Bytes held by complete and partial files."""
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def make_room(self, incoming_bytes: int, keep: str) -> None:
        """Evict least recently used files until `incoming_bytes` fit (never the file `keep`)."""
        files = sorted(
            (p for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(keep)),
            key=lambda p: p.stat().st_mtime,
        )
        used = self.used_bytes()
        for path in files:
            if used + incoming_bytes <= self.max_bytes:
                break
            used -= path.stat().st_size
            path.unlink(missing_ok=True)
            self.stats.evicted_files += 1


class ArtifactFetcher:
    """Downloads artifacts under a policy into a cache, verifying size and sha256."""

    def __init__(self, cache: ArtifactCache, policy: DownloadPolicy, client: httpx.AsyncClient) -> None:
        """Use `client` (its transport is injectable) for every request; no redirects are followed."""
        self.cache = cache
        self.policy = policy
        self._client = client
        self._downloads: dict[str, asyncio.Lock] = {}

    async def fetch(
        self,
        url: str,
        size_bytes: int,
        sha256_hex: str,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Return the path of the verified artifact, downloading it unless cached.

        Raises:
            ArtifactRefused: policy, size or hash violation (reason code attached).
        """
        if size_bytes > self.policy.max_artifact_bytes:
            raise ArtifactRefused(
                ReasonCode.ARTIFACT_TOO_LARGE, f"{size_bytes} bytes exceeds {self.policy.max_artifact_bytes}"
            )
        # Two jobs for one release on one gateway share a download instead of racing on one file.
        # One lock per digest ever fetched: a handful per release, never worth evicting.
        async with self._downloads.setdefault(sha256_hex, asyncio.Lock()):
            return await self._fetch_locked(url, size_bytes, sha256_hex, on_progress)

    async def _fetch_locked(
        self, url: str, size_bytes: int, sha256_hex: str, on_progress: Callable[[int, int], None] | None
    ) -> Path:
        if cached := self.cache.lookup(sha256_hex, size_bytes):
            self.cache.stats.hits += 1
            return cached
        self.cache.stats.misses += 1
        self.cache.make_room(size_bytes, keep=sha256_hex)
        partial = self.cache.partial_path(sha256_hex)
        await self._download(url, size_bytes, partial, on_progress)
        digest = await asyncio.to_thread(_sha256_of, partial)
        if digest != sha256_hex:
            partial.unlink(missing_ok=True)
            raise ArtifactRefused(ReasonCode.HASH_MISMATCH, f"artifact sha256 {digest} != {sha256_hex}")
        final = self.cache.path_for(sha256_hex)
        partial.replace(final)
        return final

    async def check_url(self, url: str) -> None:
        """Refuse a URL that breaks the policy (scheme, host allow-list, private addresses).

        Raises:
            ArtifactRefused: with reason URL_NOT_ALLOWED.
        """
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and self.policy.allow_http):
            raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, f"scheme {parts.scheme!r} not allowed")
        host = (parts.hostname or "").lower()
        if not host or not any(
            host == allowed or (allowed.startswith(".") and host.endswith(allowed))
            for allowed in self.policy.allowed_hosts
        ):
            raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, f"host {host!r} is not allow-listed")
        if self.policy.allow_private_addresses:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443)
        except OSError as error:
            raise ArtifactRefused(ReasonCode.DOWNLOAD_FAILED, f"cannot resolve {host}: {error}") from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if address.is_private or address.is_loopback or address.is_link_local or address.is_reserved:
                raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, f"{host} resolves to private {address}")

    async def _download(
        self, url: str, size_bytes: int, partial: Path, on_progress: Callable[[int, int], None] | None
    ) -> None:
        have = _resume_offset(partial, size_bytes)
        for _ in range(MAX_REDIRECTS + 1):
            await self.check_url(url)
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                async with self._client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("location", ""))
                        if urlsplit(target).hostname != urlsplit(url).hostname:
                            raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, "redirect to another host")
                        url = target
                        continue
                    if response.status_code == httpx.codes.PARTIAL_CONTENT and have:
                        _check_content_range(response, have, size_bytes)
                    elif response.status_code == httpx.codes.OK:
                        have = 0
                    else:
                        raise ArtifactRefused(ReasonCode.DOWNLOAD_FAILED, f"HTTP {response.status_code}")
                    expected = size_bytes - have
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) != expected:
                        raise ArtifactRefused(
                            ReasonCode.SIZE_MISMATCH, f"server sends {declared} bytes, expected {expected}"
                        )
                    await self._stream_into(response, partial, have, size_bytes, on_progress)
                    return
            except httpx.HTTPError as error:
                raise ArtifactRefused(ReasonCode.DOWNLOAD_FAILED, f"download failed: {error}") from None
        raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, "too many redirects")

    async def _stream_into(
        self,
        response: httpx.Response,
        partial: Path,
        have: int,
        size_bytes: int,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        written = have
        with partial.open("ab" if have else "wb") as sink:
            async for block in response.aiter_bytes():
                written += len(block)
                if written > size_bytes:
                    raise ArtifactRefused(
                        ReasonCode.SIZE_MISMATCH, f"server sent more than {size_bytes} bytes"
                    )
                sink.write(block)
                self.cache.stats.downloaded_bytes += len(block)
                if on_progress is not None:
                    on_progress(written, size_bytes)
        if written != size_bytes:
            # Keep the partial file: the next attempt resumes from here with a Range request.
            raise ArtifactRefused(ReasonCode.SIZE_MISMATCH, f"got {written} of {size_bytes} bytes")


def _check_content_range(response: httpx.Response, have: int, size_bytes: int) -> None:
    expected = f"bytes {have}-{size_bytes - 1}/{size_bytes}"
    if response.headers.get("content-range", "") != expected:
        raise ArtifactRefused(
            ReasonCode.SIZE_MISMATCH,
            f"content-range {response.headers.get('content-range')!r} != {expected!r}",
        )


def _resume_offset(partial: Path, size_bytes: int) -> int:
    """Bytes already downloaded that a Range request can continue from (0 to start over)."""
    try:
        have = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if have >= size_bytes:
        partial.unlink()
        return 0
    return have


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
