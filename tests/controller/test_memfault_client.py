"""The Memfault client: answers, cache, Retry-After, backoff and outages, with a scripted transport."""

import json
from collections.abc import Callable

import httpx
import pytest

from controller.errors import MemfaultRateLimited, MemfaultUnavailable
from controller.memfault import MemfaultClient, MemfaultSettings
from controller.memfault_answers import DeviceQuery, DeviceRefused, ReleaseOffer, Unanswered, UpToDate

QUERY = DeviceQuery("S1", "nrf54l15dk", "app", "1.0.0", "key-1")
RELEASE = {
    "id": 7,
    "created_date": "2026-11-24T00:00:00.000000+00:00",
    "version": "1.1.0",
    "revision": "r",
    "must_pass_through": False,
    "notes": "",
    "reason": "",
    "is_delta": False,
    "artifacts": [
        {
            "id": 1,
            "created_date": "2026-11-24T00:00:00.000000+00:00",
            "type": "firmware",
            "hardware_version": "nrf54l15dk",
            "filename": "app.bin",
            "file_size": 1234,
            "url": "https://cdn.example/app.bin?sig=x",
            "md5": "m",
            "sha1": "s",
            "sha256": "AB" * 32,
        }
    ],
}


class FakeTime:
    """A clock that advances only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _client(
    handler: Callable[[httpx.Request], httpx.Response], time: FakeTime, **settings: float
) -> MemfaultClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return MemfaultClient(
        MemfaultSettings(base_url="https://api.test", **settings),  # type: ignore[arg-type]
        http,
        clock=time.clock,
        sleep=time.sleep,
    )


async def test_an_offer_carries_the_matching_artifact() -> None:
    """A 200 becomes an offer with the artifact of the device's hardware; the query is exact."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=RELEASE)

    answer = await _client(handler, FakeTime()).latest_release(QUERY)
    assert isinstance(answer, ReleaseOffer)
    assert (answer.version, answer.artifact.size_bytes, answer.artifact.sha256) == ("1.1.0", 1234, "ab" * 32)
    assert seen[0].headers["Memfault-Project-Key"] == "key-1"
    assert dict(seen[0].url.params) == {
        "device_serial": "S1",
        "hardware_version": "nrf54l15dk",
        "software_type": "app",
        "current_version": "1.0.0",
    }


async def test_204_and_device_errors_are_answers_not_outages() -> None:
    """204 is up to date with its reason; 400 and 403 are device-level refusals with the message."""
    responses = iter(
        [
            httpx.Response(204, headers={"memfault-reason": "latest"}),
            httpx.Response(403, json={"error": {"message": "bad project key"}}),
        ]
    )
    client = _client(lambda _r: next(responses), FakeTime())
    assert await client.latest_release(QUERY) == UpToDate("latest")
    refused = await client.latest_release(QUERY, fresh=True)
    assert refused == DeviceRefused(403, "bad project key")


async def test_answers_are_cached_until_the_ttl_or_a_fresh_query() -> None:
    """A second query within the TTL is served from the cache; fresh=True always asks."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=RELEASE)

    time = FakeTime()
    client = _client(handler, time, cache_ttl_s=60.0)
    await client.latest_release(QUERY)
    await client.latest_release(QUERY)
    assert len(calls) == 1
    await client.latest_release(QUERY, fresh=True)
    time.now += 61
    await client.latest_release(QUERY)
    assert len(calls) == 3
    assert client.stats.cache_hits == 1


async def test_retry_after_is_honoured_then_the_query_succeeds() -> None:
    """A 503 with Retry-After pauses queries for that long, then the retry gets the answer."""
    responses = iter([httpx.Response(503, headers={"Retry-After": "7"}), httpx.Response(200, json=RELEASE)])
    time = FakeTime()
    answer = await _client(lambda _r: next(responses), time).latest_release(QUERY)
    assert isinstance(answer, ReleaseOffer)
    assert max(time.slept) >= 7


async def test_a_persistent_outage_raises_unavailable_with_a_wait() -> None:
    """After the retries a 503 storm is an outage: MemfaultUnavailable says how long to wait."""
    time = FakeTime()
    client = _client(lambda _r: httpx.Response(503, headers={"Retry-After": "30"}), time, max_retries=2)
    with pytest.raises(MemfaultUnavailable) as caught:
        await client.latest_release(QUERY)
    assert caught.value.retry_after_s > 0
    assert client.paused_for_s() > 0


async def test_timeouts_back_off_exponentially() -> None:
    """Transport errors are retried with growing delays, then reported as an outage."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    time = FakeTime()
    with pytest.raises(MemfaultUnavailable):
        await _client(handler, time, max_retries=3, backoff_initial_s=1.0).latest_release(QUERY)
    assert time.slept == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", json.dumps({"version": "1"}).encode(), json.dumps({**RELEASE, "artifacts": 5}).encode()],
)
async def test_malformed_releases_are_unanswered(body: bytes) -> None:
    """Garbage in a 200 is that device's `Unanswered` (counted by reason), never a crash or an outage."""
    client = _client(lambda _r: httpx.Response(200, content=body), FakeTime())
    answer = await client.latest_release(QUERY)
    assert isinstance(answer, Unanswered)
    assert answer.reason == "malformed"
    assert client.stats.unanswered_by_reason == {"malformed": 1}


async def test_a_404_is_the_device_s_own_unanswered() -> None:
    """A 404 for one device is `Unanswered("http_404")` at once (no retries, no pause)."""
    time = FakeTime()
    client = _client(lambda _r: httpx.Response(404, json={"error": {"message": "nope"}}), time)
    answer = await client.latest_release(QUERY)
    assert answer == Unanswered("http_404", "nope")
    assert time.slept == []


async def test_a_lasting_500_is_unavailable_for_the_view_to_judge() -> None:
    """A 500 after every retry raises MemfaultUnavailable (the correlation view tells outage from device)."""
    client = _client(lambda _r: httpx.Response(500), FakeTime(), max_retries=1, backoff_initial_s=1.0)
    with pytest.raises(MemfaultUnavailable):
        await client.latest_release(QUERY)


async def test_sha256_absent_keeps_md5_and_sha1_and_delta_lists_the_full_image() -> None:
    """A release without sha256 carries md5 and sha1; a delta release keeps its full image aside."""
    base = dict(RELEASE["artifacts"][0])  # type: ignore[index]
    delta = {**base, "type": "delta", "sha256": "", "md5": "A" * 32, "sha1": "b" * 40}
    full = {**base, "url": "https://cdn.example/full.bin", "sha256": "c" * 64}
    body = {**RELEASE, "is_delta": True, "artifacts": [delta, full]}
    answer = await _client(lambda _r: httpx.Response(200, json=body), FakeTime()).latest_release(QUERY)
    assert isinstance(answer, ReleaseOffer)
    assert answer.artifact.is_delta
    assert (answer.artifact.sha256, answer.artifact.md5, answer.artifact.sha1) == ("", "a" * 32, "b" * 40)
    assert answer.full_artifact is not None
    assert answer.full_artifact.url == "https://cdn.example/full.bin"
    assert not answer.full_artifact.is_delta


async def test_rate_limit_spaces_requests() -> None:
    """Requests beyond the per-second budget wait for tokens."""
    time = FakeTime()
    client = _client(lambda _r: httpx.Response(204), time, requests_per_s=2.0)
    for index in range(6):
        await client.latest_release(DeviceQuery(f"S{index}", "hw", "app", "1.0.0", "k"))
    assert sum(time.slept) >= 1.9


async def test_a_429_holds_back_only_its_device() -> None:
    """A 429 (a per-device limit) makes that device wait its Retry-After; others are asked at once."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["device_serial"] == "LIMITED":
            return httpx.Response(429, headers={"Retry-After": "30"})
        return httpx.Response(204)

    time = FakeTime()
    client = _client(handler, time)
    limited = DeviceQuery("LIMITED", "nrf54l15dk", "app", "1.0.0", "key-1")
    with pytest.raises(MemfaultRateLimited) as caught:
        await client.latest_release(limited)
    assert 29 <= caught.value.retry_after_s <= 30
    assert isinstance(await client.latest_release(QUERY), UpToDate)
    assert time.slept == []
    with pytest.raises(MemfaultRateLimited):
        await client.latest_release(limited)
    assert client.stats.requests_by_status.get("429") == 1
