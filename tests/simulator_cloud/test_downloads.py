"""Artifact downloads over real HTTP on loopback: signed expiring URLs and byte ranges."""

import hashlib
from collections.abc import Callable

import httpx
import pytest

from simulator.cloud import CloudEmulator, Endpoint
from tests.simulator_cloud.queries import HARDWARE, PROJECT_KEY, FakeClock, ask

pytestmark = pytest.mark.integration

PAYLOAD = bytes(range(256)) * 40


async def _url(cloud: CloudEmulator, http: httpx.AsyncClient) -> str:
    cloud.add_release(
        PROJECT_KEY, "1.1.0", {HARDWARE: PAYLOAD}, filename_by_hardware={HARDWARE: "zephyr.signed.bin"}
    )
    cloud.activate(PROJECT_KEY, "1.1.0")
    url: str = (await ask(http)).json()["artifacts"][0]["url"]
    return url


async def test_a_download_has_length_type_and_name(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """A plain GET returns every byte with Content-Length, Accept-Ranges, ETag and the file name."""
    response = await http.get(await _url(cloud, http))
    assert (response.status_code, response.content) == (200, PAYLOAD)
    assert response.headers["content-length"] == str(len(PAYLOAD))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == f'"{hashlib.sha256(PAYLOAD).hexdigest()}"'
    assert response.headers["content-disposition"] == 'attachment; filename="zephyr.signed.bin"'
    head = await http.head(_fresh_url(cloud))
    assert (head.status_code, head.headers["content-length"], head.content) == (200, str(len(PAYLOAD)), b"")


def _fresh_url(cloud: CloudEmulator) -> str:
    return cloud.artifact_url(cloud.model.projects[PROJECT_KEY].release("1.1.0").artifacts[0].id)


async def test_urls_expire_after_six_hours(
    cloud: CloudEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    """A URL works until its expiry and is refused with 403 from then on; a fresh one works again."""
    url = await _url(cloud, http)
    clock.advance(6 * 3600 - 1)
    assert (await http.get(url)).status_code == 200
    clock.advance(1)
    expired = await http.get(url)
    assert (expired.status_code, expired.json()) == (403, {"error": {"message": "Request has expired"}})
    assert (await http.get((await ask(http)).json()["artifacts"][0]["url"])).status_code == 200


async def test_the_url_lifetime_is_configurable(clock: FakeClock) -> None:
    """url_ttl_s sets how long a URL stays valid."""
    async with (
        CloudEmulator(clock=clock, url_ttl_s=30) as cloud,
        httpx.AsyncClient(base_url=cloud.base_url) as http,
    ):
        url = await _url(cloud, http)
        clock.advance(30)
        assert (await http.get(url)).status_code == 403


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url.replace("signature=", "signature=0"),
        lambda url: url.replace("expires=", "expires=9"),
        lambda url: url.replace("/artifacts/1?", "/artifacts/2?"),
        lambda url: url.split("?")[0],
        lambda url: url + "&expires=1",
    ],
)
async def test_tampered_urls_are_refused(
    cloud: CloudEmulator, http: httpx.AsyncClient, tamper: Callable[[str], str]
) -> None:
    """A changed signature, expiry or artifact id, or a missing signature, gets 403."""
    url = await _url(cloud, http)
    response = await http.get(tamper(url))
    assert response.status_code == 403


SIZE = len(PAYLOAD)


@pytest.mark.parametrize(
    ("range_header", "expected"),
    [
        ("bytes=0-99", (206, f"bytes 0-99/{SIZE}", PAYLOAD[:100])),
        ("bytes=10000-", (206, f"bytes 10000-10239/{SIZE}", PAYLOAD[10000:])),
        ("bytes=-16", (206, f"bytes 10224-10239/{SIZE}", PAYLOAD[-16:])),
        ("bytes=10000-999999", (206, f"bytes 10000-10239/{SIZE}", PAYLOAD[10000:])),
        ("bytes=10240-", (416, f"bytes */{SIZE}", b"")),
        ("bytes=-0", (416, f"bytes */{SIZE}", b"")),
        ("bytes=5-1", (200, None, PAYLOAD)),
        ("bytes=0-1,4-5", (200, None, PAYLOAD)),
        ("pages=1-2", (200, None, PAYLOAD)),
        ("bytes=x-y", (200, None, PAYLOAD)),
    ],
)
async def test_byte_ranges(
    cloud: CloudEmulator, http: httpx.AsyncClient, range_header: str, expected: tuple[int, str | None, bytes]
) -> None:
    """One range gets 206 with Content-Range; an unsatisfiable one 416; anything odd the whole body."""
    response = await http.get(await _url(cloud, http), headers={"Range": range_header})
    assert (response.status_code, response.headers.get("content-range"), response.content) == expected
    assert response.headers["content-length"] == str(len(expected[2]))


async def test_if_range_with_another_etag_gets_the_whole_body(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """A resume whose validator no longer matches restarts from the first byte."""
    url = await _url(cloud, http)
    etag = f'"{hashlib.sha256(PAYLOAD).hexdigest()}"'
    same = await http.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    other = await http.get(url, headers={"Range": "bytes=100-", "If-Range": '"stale"'})
    assert (same.status_code, other.status_code, other.content) == (206, 200, PAYLOAD)


async def test_a_resumed_download_reassembles_the_artifact(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """Chunks fetched with consecutive ranges add up to the artifact, and every one is counted."""
    url = await _url(cloud, http)
    parts = [
        (await http.get(url, headers={"Range": f"bytes={start}-{start + 4095}"})).content
        for start in (0, 4096, 8192)
    ]
    assert b"".join(parts) == PAYLOAD
    assert cloud.counters.answers(Endpoint.ARTIFACT, 206) == 3


async def test_download_faults_apply_only_when_included(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """Forced 503s spare downloads unless include_downloads is set."""
    url = await _url(cloud, http)
    cloud.faults.force(503, count=1)
    assert (await http.get(url)).status_code == 200
    cloud.faults.configure(include_downloads=True)
    failed = await http.get(url)
    assert (failed.status_code, failed.headers["retry-after"]) == (503, "2")
