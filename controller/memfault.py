"""The Memfault releases API over httpx: which release each device should run.

One pooled async client; answers cached per device and version for a TTL; bounded concurrency and a
request-rate limit; `Retry-After` honoured for its scope: a 503 pauses every query until it passes,
a 429 (Memfault limits latest-release calls per device) only that device's, which then raises
`MemfaultRateLimited` at once rather than holding a request slot while it waits; exponential
backoff (`service_runtime.backoff.Backoff`, never shorter than a pending 503 pause) on 5xx and
timeouts. An outage raises `MemfaultUnavailable` with the delay the next retry would have waited,
which makes the scheduler pause dispatch: it never fails a device. An answer that is wrong for one
device only (404, garbage, a truncated or oversized body, or a 5xx that persists while other devices
are answered; the correlation view tells the two apart by asking another device) is the value
`Unanswered`: that device is excluded, nothing else stops. Artifact URLs expire (six hours), so a
dispatch asks with `fresh=True` right before it sends the command.
"""

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import httpx
import msgspec

from controller.errors import MemfaultRateLimited, MemfaultUnavailable
from controller.memfault_answers import (
    ArtifactRef,
    DeviceQuery,
    DeviceRefused,
    ReleaseAnswer,
    ReleaseOffer,
    Unanswered,
    UpToDate,
)
from controller.metrics import memfault_latency_histogram
from service_runtime.backoff import Backoff

LATEST_PATH: Final = "/api/v0/releases/latest"
MAX_BODY_BYTES: Final = 1024 * 1024


class _Artifact(msgspec.Struct, frozen=True):
    url: str
    file_size: int
    sha256: str = ""
    md5: str = ""
    sha1: str = ""
    hardware_version: str = ""
    filename: str = ""
    type: str = ""


class _Release(msgspec.Struct, frozen=True):
    id: int
    version: str
    artifacts: list[_Artifact]
    is_delta: bool = False
    must_pass_through: bool = False


_RELEASE_DECODER: Final = msgspec.json.Decoder(_Release)


@dataclass
class MemfaultStats:
    """What the client did (read by the controller's metrics collector)."""

    requests_by_status: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    retries: int = 0
    unanswered_by_reason: dict[str, int] = field(default_factory=dict)
    """Devices Memfault gave no usable answer, by `Unanswered.reason`."""


@dataclass(frozen=True, slots=True)
class MemfaultSettings:
    """Limits of the Memfault client."""

    base_url: str = "https://api.memfault.com"
    cache_ttl_s: float = 600.0
    max_concurrency: int = 8
    requests_per_s: float = 20.0
    max_retries: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 10.0


class MemfaultClient:
    """Asks Memfault which release a device should get."""

    def __init__(
        self,
        settings: MemfaultSettings,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Use `client` (pooled; its transport is injectable) with the given limits and clock.

        `transport`, when given, is the one `client` was built on: clients made for other event
        loops (the correlation view's) are built on it too, so a test's transport sees every query.
        """
        self.settings = settings
        self.transport = transport
        self.stats = MemfaultStats()
        self.latency = memfault_latency_histogram()
        """Request latencies, observed as they happen (fixed buckets); the service registers it."""
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._cache: dict[tuple[str, str, str, str, str], tuple[float, ReleaseAnswer]] = {}
        self._gate = asyncio.Semaphore(settings.max_concurrency)
        self._tokens = settings.requests_per_s
        self._tokens_at = clock()
        self._paused_until = 0.0
        self._device_paused_until: dict[str, float] = {}

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._client.aclose()

    def paused_for_s(self) -> float:
        """Seconds until Memfault asked us to come back (0 when queries may go out)."""
        return max(0.0, self._paused_until - self._clock())

    async def latest_release(self, query: DeviceQuery, *, fresh: bool = False) -> ReleaseAnswer:
        """The release Memfault offers this device, from the cache unless `fresh`.

        Raises:
            MemfaultUnavailable: Memfault is down, rate-limiting or answering garbage.
        """
        # The project key is part of the key: an answer for one project says nothing about another.
        key = (
            query.device_serial,
            query.hardware_version,
            query.software_type,
            query.current_version,
            query.project_key,
        )
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and not fresh and now - cached[0] < self.settings.cache_ttl_s:
            self.stats.cache_hits += 1
            return cached[1]
        self.stats.cache_misses += 1
        answer = await self._query(query)
        if isinstance(answer, Unanswered):
            self.stats.unanswered_by_reason[answer.reason] = (
                self.stats.unanswered_by_reason.get(answer.reason, 0) + 1
            )
        self._cache[key] = (self._clock(), answer)
        return answer

    def forget(self, device_serial: str) -> None:
        """Drop cached answers of a device (it changed version or project key)."""
        for key in [k for k in self._cache if k[0] == device_serial]:
            del self._cache[key]

    def _device_wait_s(self, serial: str) -> float:
        until = self._device_paused_until.get(serial)
        if until is None:
            return 0.0
        wait = until - self._clock()
        if wait <= 0:
            del self._device_paused_until[serial]
        return max(0.0, wait)

    async def _query(self, query: DeviceQuery) -> ReleaseAnswer:
        backoff = Backoff(
            initial_s=self.settings.backoff_initial_s, max_s=self.settings.backoff_max_s, sleep=self._sleep
        )
        for attempt in range(self.settings.max_retries + 1):
            if (device_wait := self._device_wait_s(query.device_serial)) > 0:
                raise MemfaultRateLimited(device_wait, f"Memfault limits {query.device_serial}'s queries")
            if (wait := self.paused_for_s()) > 0:
                if attempt == self.settings.max_retries:
                    raise MemfaultUnavailable(wait, "Memfault asked us to wait")
                await self._sleep(wait)
            async with self._gate:
                await self._take_token()
                try:
                    response = await self._send(query)
                except (httpx.TimeoutException, httpx.TransportError) as error:
                    failure = f"{type(error).__name__}: {error}"
                    self._count("transport_error")
                else:
                    self._count(str(response.status_code))
                    answer = self._interpret(response)
                    if answer is not None:
                        return answer
                    failure = f"HTTP {response.status_code}"
            if (device_wait := self._device_wait_s(query.device_serial)) > 0:
                raise MemfaultRateLimited(device_wait, f"Memfault limits {query.device_serial}'s queries")
            if attempt < self.settings.max_retries:
                self.stats.retries += 1
                await backoff.wait(at_least_s=self.paused_for_s())
        raise MemfaultUnavailable(max(self.paused_for_s(), backoff.upcoming_s), failure)

    async def _send(self, query: DeviceQuery) -> httpx.Response:
        started = self._clock()
        try:
            return await self._client.get(
                self.settings.base_url.rstrip("/") + LATEST_PATH,
                params={
                    "device_serial": query.device_serial,
                    "hardware_version": query.hardware_version,
                    "software_type": query.software_type,
                    "current_version": query.current_version,
                },
                headers={"Memfault-Project-Key": query.project_key, "Accept": "application/json"},
                timeout=self.settings.timeout_s,
            )
        finally:
            self.latency.observe(self._clock() - started)

    def _interpret(self, response: httpx.Response) -> ReleaseAnswer | None:
        """An answer, or None for a response worth retrying (5xx, 429)."""
        status = response.status_code
        if status == httpx.codes.OK:
            return self._offer(response)
        if status == httpx.codes.NO_CONTENT:
            return UpToDate(response.headers.get("memfault-reason", "latest")[:200])
        if status in (httpx.codes.BAD_REQUEST, httpx.codes.FORBIDDEN):
            return DeviceRefused(status, _error_message(response))
        if status in (httpx.codes.TOO_MANY_REQUESTS, httpx.codes.SERVICE_UNAVAILABLE):
            retry_after = _retry_after_s(response.headers.get("retry-after"), time.time())
            if status == httpx.codes.TOO_MANY_REQUESTS:
                serial = response.request.url.params.get("device_serial", "")
                self._device_paused_until[serial] = self._clock() + retry_after
            else:
                self._paused_until = max(self._paused_until, self._clock() + retry_after)
            return None
        if status >= httpx.codes.INTERNAL_SERVER_ERROR:
            return None
        return Unanswered(f"http_{status}", _error_message(response))

    def _offer(self, response: httpx.Response) -> ReleaseAnswer:
        content = response.content
        if len(content) > MAX_BODY_BYTES:
            return Unanswered("too_large", f"release body of {len(content)} bytes")
        try:
            release = _RELEASE_DECODER.decode(content)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
            # (msgspec raises UnicodeDecodeError for a string that is not UTF-8)
            self._count("malformed")
            return Unanswered("malformed", str(error)[:200])
        hardware = response.request.url.params.get("hardware_version", "")
        matching = [a for a in release.artifacts if a.hardware_version in ("", hardware)]
        if not matching:
            return DeviceRefused(
                response.status_code, f"release {release.version} has no artifact for {hardware}"
            )
        # A delta release lists its patch first; the release's whole image may follow (type firmware).
        first = matching[0]
        delta = release.is_delta or first.type == "delta"
        full = next((a for a in matching[1:] if a.type != "delta"), None) if delta else None
        return ReleaseOffer(
            release_id=release.id,
            version=release.version,
            is_delta=release.is_delta,
            must_pass_through=release.must_pass_through,
            artifact=_artifact_ref(first, is_delta=delta),
            full_artifact=_artifact_ref(full, is_delta=False) if full is not None else None,
        )

    async def _take_token(self) -> None:
        rate = self.settings.requests_per_s
        while True:
            now = self._clock()
            self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
            self._tokens_at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await self._sleep((1 - self._tokens) / rate)

    def _count(self, status: str) -> None:
        self.stats.requests_by_status[status] = self.stats.requests_by_status.get(status, 0) + 1


def _artifact_ref(artifact: _Artifact, *, is_delta: bool) -> ArtifactRef:
    return ArtifactRef(
        url=artifact.url,
        size_bytes=artifact.file_size,
        sha256=_hex_or_empty(artifact.sha256, 64),
        hardware_version=artifact.hardware_version,
        filename=artifact.filename,
        md5=_hex_or_empty(artifact.md5, 32),
        sha1=_hex_or_empty(artifact.sha1, 40),
        is_delta=is_delta,
    )


def _hex_or_empty(digest: str, length: int) -> str:
    """The digest in lowercase when it is `length` hex digits; "" otherwise (it cannot be verified)."""
    digest = digest.strip().lower()
    if len(digest) == length and all(c in "0123456789abcdef" for c in digest):
        return digest
    return ""


def _retry_after_s(header: str | None, now_unix_s: float) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); 1 s when absent or bad."""
    if not header:
        return 1.0
    header = header.strip()
    if header.isdigit():
        return min(float(header), 3600.0)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return 1.0
    return min(max(0.0, when.timestamp() - now_unix_s), 3600.0)


def _error_message(response: httpx.Response) -> str:
    try:
        body = msgspec.json.decode(response.content[:4096])
    except (msgspec.DecodeError, UnicodeDecodeError):
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:200] or f"HTTP {response.status_code}"
    return f"HTTP {response.status_code}"
