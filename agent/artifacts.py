"""Fetches firmware artifacts safely into a content-addressed on-disk cache.

Nothing reaches a device before its size and digest are verified: sha256 when the command carries
one, otherwise md5 (and sha1 when given), as Memfault supplies them. Only allow-listed hosts are
fetched, over HTTPS unless configured otherwise, and never from private, loopback or link-local
addresses unless configured (as the simulator setup does, or a site mirror in a listed network).

The address check cannot be raced by DNS (rebinding): the host name is resolved once per connection
by `PinnedBackend`, every address of the answer is checked, and the socket connects to a checked
address, while the Host header, TLS SNI and the certificate check stay on the name. Redirects are
followed by hand (at most `MAX_REDIRECTS`), each target checked like the first URL, never from
HTTPS down to HTTP. Proxy environment variables are ignored: a proxy is used only when configured,
and then the proxy resolves and connects (its own egress policy must keep it out of the network).
A partial download resumes with a Range request; the cache evicts the least recently used files.
"""

import asyncio
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from agent.errors import ConfigError, DownloadError
from schemas import ReasonCode

MAX_REDIRECTS: Final = 3

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Host name and port to the addresses to connect to (injectable: tests answer as they please)."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    allowed_private_networks: tuple[str, ...] = ()
    """Private networks (CIDR) that are allowed anyway, e.g. a site mirror's `10.1.2.0/24`."""
    max_artifact_bytes: int = 16 * 1024 * 1024
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    proxy_url: str = ""
    """An HTTP(S) proxy for downloads; "" connects directly (proxy environment variables are ignored)."""

    def __post_init__(self) -> None:
        """Refuse a malformed network at construction, not at the first download."""
        for network in self.allowed_private_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as error:
                raise ConfigError(f"allowed_private_networks: {error}") from None

    def address_refusal(self, address: str) -> str:
        """Why connecting to `address` breaks the policy ("" when it may be used)."""
        try:
            parsed: IpAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if self.allow_private_addresses or _is_public(parsed):
            return ""
        for network in self.allowed_private_networks:
            if parsed in ipaddress.ip_network(network, strict=False):
                return ""
        return f"{parsed} is a private, loopback, link-local or reserved address"


def _is_public(address: IpAddress) -> bool:
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for `host` (every address, in its order, without repeats)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves a host once, checks every address against the policy, connects to a checked one.

    httpcore calls `connect_tcp` with the URL's host and starts TLS on the returned stream with
    that same host as server name, so SNI and certificate verification stay on the name while
    the socket goes only to an address that was checked: a second DNS answer is never asked for.
    """

    def __init__(self, policy: DownloadPolicy, resolver: Resolver) -> None:
        """Check addresses against `policy`; resolve names with `resolver`."""
        self._policy = policy
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first reachable checked address of `host`.

        Raises:
            ArtifactRefused: an address of the answer breaks the policy (URL_NOT_ALLOWED), or the
                name does not resolve (DOWNLOAD_FAILED).
        """
        addresses = await self._addresses(host, port)
        # One bad address refuses the whole answer: a rebinding server mixes good and bad ones.
        for address in addresses:
            if refusal := self._policy.address_refusal(address):
                raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, f"{host} resolves to {refusal}")
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None  # noqa: S101 (addresses is never empty here)
        raise last_error

    async def _addresses(self, host: str, port: int) -> list[str]:
        literal = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            pass
        else:
            return [literal]
        try:
            addresses = list(await self._resolver(host, port))
        except OSError as error:
            raise ArtifactRefused(ReasonCode.DOWNLOAD_FAILED, f"cannot resolve {host}: {error}") from None
        if not addresses:
            raise ArtifactRefused(ReasonCode.DOWNLOAD_FAILED, f"{host} has no address")
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: artifacts come over TCP."""
        raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, "unix sockets are not used for downloads")

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop."""
        await self._inner.sleep(seconds)


_HTTPCORE_ERRORS: Final = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
)


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool whose connections go through `PinnedBackend`.

    httpx's own transport builds its pool without a network backend argument, hence this small
    adapter; httpcore's errors become `httpx.TransportError`, our `ArtifactRefused` passes through.
    """

    def __init__(
        self, policy: DownloadPolicy, resolver: Resolver, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Connect under `policy`; `ssl_context` defaults to the system's trust store."""
        context = ssl_context or ssl.create_default_context()
        self._pool: httpcore.AsyncConnectionPool | httpcore.AsyncHTTPProxy
        if policy.proxy_url:
            # The proxy resolves and connects: it is trusted, configured infrastructure.
            self._pool = httpcore.AsyncHTTPProxy(proxy_url=policy.proxy_url, ssl_context=context)
        else:
            self._pool = httpcore.AsyncConnectionPool(
                ssl_context=context, network_backend=PinnedBackend(policy, resolver)
            )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request through the pinned pool."""
        assert isinstance(request.stream, httpx.AsyncByteStream)  # noqa: S101 (an AsyncClient's request)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except _HTTPCORE_ERRORS as error:
            raise httpx.TransportError(str(error) or type(error).__name__) from error
        assert isinstance(response.stream, AsyncIterable)  # noqa: S101 (the async pool's stream)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CoreStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()


class _CoreStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream, with httpcore's errors translated."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except _HTTPCORE_ERRORS as error:
            raise httpx.TransportError(str(error) or type(error).__name__) from error

    async def aclose(self) -> None:
        closer = getattr(self._stream, "aclose", None)
        if closer is not None:
            await closer()


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

    def __init__(
        self,
        cache: ArtifactCache,
        policy: DownloadPolicy,
        *,
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Download under `policy`; `resolver` and `ssl_context` are injectable for tests.

        `transport` replaces the pinned network below the URL checks: only in-memory tests of the
        OTA flow pass one (they have no network to pin); production never does.
        """
        self.cache = cache
        self.policy = policy
        self._resolver = resolver
        self._ssl_context = ssl_context
        self._transport = transport
        self._downloads: dict[str, asyncio.Lock] = {}

    def _client(self) -> httpx.AsyncClient:
        # One client per download (downloads are rare: one per release per gateway); redirects are
        # followed by hand so that each hop is checked, and the environment is never consulted.
        return httpx.AsyncClient(
            transport=self._transport or PinnedTransport(self.policy, self._resolver, self._ssl_context),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self.policy.read_timeout_s, connect=self.policy.connect_timeout_s),
        )

    async def fetch(
        self,
        url: str,
        size_bytes: int,
        sha256_hex: str | None,
        on_progress: Callable[[int, int], None] | None = None,
        *,
        md5_hex: str | None = None,
        sha1_hex: str | None = None,
    ) -> Path:
        """Return the path of the verified artifact, downloading it unless cached.

        Every digest given is checked; at least sha256 or md5 must be given.

        Raises:
            ArtifactRefused: policy, size or hash violation, or no digest (reason code attached).
        """
        expected = ExpectedDigests(sha256_hex or None, md5_hex or None, sha1_hex or None)
        if expected.sha256 is None and expected.md5 is None:
            raise ArtifactRefused(ReasonCode.HASH_MISMATCH, "the command carries neither sha256 nor md5")
        if size_bytes > self.policy.max_artifact_bytes:
            raise ArtifactRefused(
                ReasonCode.ARTIFACT_TOO_LARGE, f"{size_bytes} bytes exceeds {self.policy.max_artifact_bytes}"
            )
        key = expected.cache_key
        # Two jobs for one release on one gateway share a download instead of racing on one file.
        # One lock per digest ever fetched: a handful per release, never worth evicting.
        async with self._downloads.setdefault(key, asyncio.Lock()):
            return await self._fetch_locked(url, size_bytes, expected, on_progress)

    async def _fetch_locked(
        self,
        url: str,
        size_bytes: int,
        expected: "ExpectedDigests",
        on_progress: Callable[[int, int], None] | None,
    ) -> Path:
        key = expected.cache_key
        if cached := self.cache.lookup(key, size_bytes):
            self.cache.stats.hits += 1
            return cached
        self.cache.stats.misses += 1
        self.cache.make_room(size_bytes, keep=key)
        partial = self.cache.partial_path(key)
        await self._download(url, size_bytes, partial, on_progress)
        actual = await asyncio.to_thread(_digests_of, partial)
        mismatch = expected.mismatch(actual)
        if mismatch:
            partial.unlink(missing_ok=True)
            raise ArtifactRefused(ReasonCode.HASH_MISMATCH, mismatch)
        final = self.cache.path_for(key)
        partial.replace(final)
        return final

    def check_url(self, url: str) -> None:
        """Refuse a URL whose scheme or host breaks the policy (addresses are checked at connect).

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

    async def _download(
        self, url: str, size_bytes: int, partial: Path, on_progress: Callable[[int, int], None] | None
    ) -> None:
        have = _resume_offset(partial, size_bytes)
        async with self._client() as client:
            for _ in range(MAX_REDIRECTS + 1):
                self.check_url(url)
                headers = {"Range": f"bytes={have}-"} if have else {}
                try:
                    async with client.stream("GET", url, headers=headers) as response:
                        if response.is_redirect:
                            url = _redirect_target(url, response.headers.get("location", ""))
                            continue
                        have = self._check_response(response, have, size_bytes)
                        await self._stream_into(response, partial, have, size_bytes, on_progress)
                        return
                except httpx.HTTPError as error:
                    raise ArtifactRefused(ReasonCode.DOWNLOAD_FAILED, f"download failed: {error}") from None
        raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, "too many redirects")

    def _check_response(self, response: httpx.Response, have: int, size_bytes: int) -> int:
        """The offset the body starts at, once status and length fit the request."""
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
        return have

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


def _redirect_target(url: str, location: str) -> str:
    """Where a redirect leads; the caller checks it like any URL. HTTPS never drops to HTTP."""
    if not location:
        raise ArtifactRefused(ReasonCode.DOWNLOAD_FAILED, "redirect without a location")
    target = urljoin(url, location)
    if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
        raise ArtifactRefused(ReasonCode.URL_NOT_ALLOWED, f"redirect from HTTPS to {target!r}")
    return target


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


@dataclass(frozen=True, slots=True)
class ExpectedDigests:
    """The digests a command gives for its artifact (lowercase hex; None when not given)."""

    sha256: str | None
    md5: str | None = None
    sha1: str | None = None

    @property
    def cache_key(self) -> str:
        """The cache file name: the sha256, else the md5 (prefixed so the two never collide)."""
        return self.sha256 if self.sha256 is not None else f"md5-{self.md5}"

    def mismatch(self, actual: "ExpectedDigests") -> str:
        """Why `actual` does not match every given digest ("" when it does)."""
        for name, want, have in (
            ("sha256", self.sha256, actual.sha256),
            ("md5", self.md5, actual.md5),
            ("sha1", self.sha1, actual.sha1),
        ):
            if want is not None and want.lower() != have:
                return f"artifact {name} {have} != {want}"
        return ""


def _digests_of(path: Path) -> ExpectedDigests:
    # md5 and sha1 verify what Memfault supplies when it gives no sha256; not a security choice of ours.
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    sha1 = hashlib.sha1(usedforsecurity=False)
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
            sha1.update(block)
    return ExpectedDigests(sha256.hexdigest(), md5.hexdigest(), sha1.hexdigest())
