"""The controller's Memfault client against the cloud emulator over real HTTP on loopback."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from controller.errors import MemfaultUnavailable
from controller.memfault import MemfaultClient, MemfaultSettings
from controller.memfault_answers import DeviceQuery, DeviceRefused, ReleaseOffer, UpToDate
from simulator.cloud import CloudEmulator

pytestmark = pytest.mark.integration

KEY = "project-key-1"
IMAGE = b"\x3d\xb8\xf3\x96" + bytes(range(256)) * 8


def _query(version: str = "1.0.0", key: str = KEY) -> DeviceQuery:
    return DeviceQuery("S1", "nrf52840dk", "app", version, key)


async def test_offer_up_to_date_and_refusal_come_back_typed() -> None:
    """200 becomes an offer whose artifact downloads and hashes right; 204 up to date; 403 refused."""
    async with CloudEmulator() as cloud, httpx.AsyncClient() as http:
        cloud.add_project(KEY)
        cloud.add_release(KEY, "1.1.0", {"nrf52840dk": IMAGE})
        cloud.activate(KEY, "1.1.0")
        client = MemfaultClient(MemfaultSettings(base_url=cloud.base_url, requests_per_s=1000), http)
        offer = await client.latest_release(_query())
        assert isinstance(offer, ReleaseOffer) and offer.version == "1.1.0"
        body = (await http.get(offer.artifact.url)).content
        assert (
            hashlib.sha256(body).hexdigest() == offer.artifact.sha256
            and len(body) == offer.artifact.size_bytes
        )
        assert isinstance(await client.latest_release(_query("1.1.0")), UpToDate)
        refused = await client.latest_release(_query(key="wrong-key"))
        assert isinstance(refused, DeviceRefused) and refused.status == 403


async def test_an_outage_raises_unavailable_with_a_retry_hint() -> None:
    """Forced 503s with Retry-After exhaust the retries and surface as MemfaultUnavailable."""
    async with CloudEmulator() as cloud, httpx.AsyncClient() as http:
        cloud.add_project(KEY)
        cloud.faults.force(status=503, count=100, retry_after_s=1)
        settings = MemfaultSettings(base_url=cloud.base_url, max_retries=1, backoff_initial_s=0.01)
        client = MemfaultClient(settings, http)
        with pytest.raises(MemfaultUnavailable) as caught:
            await client.latest_release(_query())
        assert caught.value.retry_after_s > 0
        assert client.stats.requests_by_status.get("503", 0) >= 2
