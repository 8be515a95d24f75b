"""The correlation view's HTTP transport: httpx's API over aiohttp's connection pool.

Why not httpx's own transport: the view asks Memfault once per device, and at fleet scale
(100k devices cold) the per-request cost of httpx's pure-Python pool (httpcore, h11) on the view's
thread took most of the process's GIL and capped the view near 250 answers/s. aiohttp parses HTTP
in C; the `httpx-aiohttp` package adapts it to httpx's transport interface, so
`MemfaultClient` and its tests (httpx.MockTransport) stay as they are.

What this file adds is only the error translation the adapter leaves out: anything aiohttp or
asyncio raises below the request (a reset, a timeout of the total budget, a payload cut short)
leaves as an `httpx.TransportError`, which `MemfaultClient` counts and retries like any other.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class PooledAiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on one aiohttp session, created on the loop of its first request."""

    def __init__(self, max_connections: int) -> None:
        """At most `max_connections` open connections (keep-alive, reused across queries)."""
        self._inner = AiohttpTransport(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; errors below HTTP become `httpx.TransportError`."""
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise httpx.TransportError(f"{type(error).__name__}: {error}") from error
        return response

    async def aclose(self) -> None:
        """Close the aiohttp session and its connections."""
        await self._inner.aclose()
