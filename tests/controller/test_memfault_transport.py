"""The correlation view's aiohttp transport over real HTTP on loopback: answers, and errors as httpx's."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from controller.errors import MemfaultUnavailable
from controller.memfault import MemfaultClient, MemfaultSettings
from controller.memfault_answers import DeviceQuery, ReleaseOffer, UpToDate
from controller.memfault_transport import PooledAiohttpTransport
from simulator.cloud import CloudEmulator

pytestmark = pytest.mark.integration

KEY = "project-key-1"
IMAGE = b"\x3d\xb8\xf3\x96" + bytes(range(256)) * 8


def _query(version: str = "1.0.0", serial: str = "S1") -> DeviceQuery:
    return DeviceQuery(serial, "nrf52840dk", "app", version, KEY)


@asynccontextmanager
async def _cutting_server() -> AsyncIterator[str]:
    """An HTTP server that promises 1000 bytes, sends 10 and hangs up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        writer.write(b'{"data": ')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_many_queries_in_flight_come_back_typed() -> None:
    """Forty concurrent queries over a pool of four connections: every one answered, typed."""
    async with CloudEmulator() as cloud:
        cloud.add_project(KEY)
        cloud.add_release(KEY, "1.1.0", {"nrf52840dk": IMAGE})
        cloud.activate(KEY, "1.1.0")
        async with httpx.AsyncClient(transport=PooledAiohttpTransport(4)) as http:
            client = MemfaultClient(MemfaultSettings(base_url=cloud.base_url, requests_per_s=1000), http)
            answers = await asyncio.gather(
                *(client.latest_release(_query(serial=f"S{index}")) for index in range(40))
            )
            assert all(isinstance(answer, ReleaseOffer) and answer.version == "1.1.0" for answer in answers)
            assert isinstance(await client.latest_release(_query("1.1.0")), UpToDate)
            assert client.stats.requests_by_status == {"200": 40, "204": 1}


async def test_a_body_cut_short_is_a_transport_error_retried_then_unavailable() -> None:
    """The payload error of aiohttp leaves as httpx's: counted, retried, then MemfaultUnavailable."""
    async with _cutting_server() as base_url, httpx.AsyncClient(transport=PooledAiohttpTransport(2)) as http:
        settings = MemfaultSettings(base_url=base_url, max_retries=1, backoff_initial_s=0.01)
        client = MemfaultClient(settings, http)
        with pytest.raises(MemfaultUnavailable):
            await client.latest_release(_query())
        assert client.stats.requests_by_status == {"transport_error": 2}


async def test_a_refused_connection_is_an_httpx_transport_error() -> None:
    """Nothing listening: the transport raises httpx.TransportError, never an aiohttp type."""
    transport = PooledAiohttpTransport(2)
    try:
        with pytest.raises(httpx.TransportError):
            await transport.handle_async_request(
                httpx.Request("GET", f"http://127.0.0.1:{_closed_port()}/api/v0/releases/latest")
            )
    finally:
        await transport.aclose()
