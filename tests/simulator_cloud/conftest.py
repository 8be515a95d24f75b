"""Fixtures of the cloud emulator tests: a fake clock, a running emulator and an HTTP client."""

from collections.abc import AsyncIterator

import httpx
import pytest

from simulator.cloud import CloudEmulator
from tests.simulator_cloud.queries import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture
async def cloud(clock: FakeClock) -> AsyncIterator[CloudEmulator]:
    """A running emulator on a free loopback port, driven by the fake clock."""
    async with CloudEmulator(clock=clock, secret=b"s" * 32) as emulator:
        yield emulator


@pytest.fixture
async def http(cloud: CloudEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client aimed at the running emulator."""
    async with httpx.AsyncClient(base_url=cloud.base_url, timeout=10.0) as client:
        yield client
