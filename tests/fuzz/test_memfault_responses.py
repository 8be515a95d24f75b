"""Malformed HTTP from "Memfault": the controller's client answers or raises its own error, nothing else.

A raw TCP server on loopback writes hypothesis-drawn responses byte for byte (any status, bad
headers, a wrong or missing Content-Length, truncated or hostile bodies, mutated release JSON),
so framing errors reach httpx exactly as a broken proxy would send them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import strategies as st

from controller.errors import MemfaultError
from controller.memfault import MemfaultClient, MemfaultSettings
from controller.memfault_answers import DeviceQuery, DeviceRefused, ReleaseOffer, Unanswered, UpToDate
from tests.fuzz.payloads import JSON_VALUES, drawn, mutations

pytestmark = pytest.mark.integration
EXAMPLES = 150
VALID_RELEASE = json.dumps(
    {
        "id": 7,
        "created_date": "2026-11-25T00:00:00Z",
        "version": "1.1.0",
        "revision": "abc",
        "must_pass_through": False,
        "notes": "",
        "reason": "",
        "is_delta": False,
        "artifacts": [
            {
                "id": 1,
                "created_date": "2026-11-25T00:00:00Z",
                "type": "firmware",
                "hardware_version": "hw",
                "filename": "app.bin",
                "file_size": 1000,
                "url": "http://127.0.0.1/a",
                "md5": "0" * 32,
                "sha1": "0" * 40,
                "sha256": "0" * 64,
            }
        ],
    }
).encode()


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """One raw HTTP/1.1 response, possibly malformed anywhere."""
    status = draw(st.sampled_from([200, 200, 200, 204, 301, 400, 403, 404, 418, 429, 500, 502, 503]))
    body = draw(
        st.one_of(
            st.binary(max_size=300),
            JSON_VALUES.map(lambda value: json.dumps(value).encode()),
            mutations(VALID_RELEASE),
            st.just(VALID_RELEASE),
        )
    )
    headers = [f"HTTP/1.1 {status} X".encode()]
    length = draw(st.sampled_from(["exact", "longer", "shorter", "absent", "garbage"]))
    if length == "exact":
        headers.append(f"Content-Length: {len(body)}".encode())
    elif length == "longer":
        headers.append(f"Content-Length: {len(body) + 50}".encode())
    elif length == "shorter" and body:
        headers.append(f"Content-Length: {len(body) // 2}".encode())
    elif length == "garbage":
        headers.append(b"Content-Length: " + draw(st.sampled_from([b"-1", b"abc", b"1e9", b"99999999999"])))
    headers.append(
        b"Content-Type: " + draw(st.sampled_from([b"application/json", b"text/html", b"\xff\xfe"]))
    )
    retry_after = draw(
        st.one_of(st.none(), st.sampled_from(["0", "2", "99999999", "-5", "Tue, 99 Foo 2026", ""]), st.text())
    )
    if retry_after is not None:
        headers.append(
            b"Retry-After: " + retry_after.encode(errors="replace").replace(b"\r", b"").replace(b"\n", b"")
        )
    if draw(st.booleans()):
        headers.append(
            b"memfault-reason: " + draw(st.binary(max_size=40)).replace(b"\r", b"").replace(b"\n", b"")
        )
    headers.append(b"Connection: close")
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


class ScriptedServer:
    """Answers each connection with the next scripted raw response, then closes it."""

    def __init__(self) -> None:
        self.next_response = b""
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.next_response)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def drawn_responses() -> list[bytes]:
    """The hypothesis examples, gathered once (the server lives on the test's event loop)."""
    found = drawn(responses(), EXAMPLES)
    # Always included: a release whose version is not UTF-8 (msgspec raises UnicodeDecodeError).
    body = VALID_RELEASE.replace(b'"1.1.0"', b'"1.\xe1(.0"')
    found.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    return found


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    """The scripted server on a free loopback port."""
    async with ScriptedServer() as scripted:
        yield scripted


async def test_every_malformed_response_is_an_answer_or_a_memfault_error(server: ScriptedServer) -> None:
    """No response, however broken, escapes as anything but a typed answer or a MemfaultError."""
    query = DeviceQuery("DEV-1", "hw", "app", "1.0.0", "key")
    outcomes: dict[str, int] = {}
    async with httpx.AsyncClient() as http:
        for raw in drawn_responses():
            server.next_response = raw
            client = MemfaultClient(
                MemfaultSettings(
                    base_url=f"http://127.0.0.1:{server.port}",
                    max_retries=0,
                    timeout_s=2.0,
                    requests_per_s=1e6,
                ),
                http,
            )
            try:
                answer = await client.latest_release(query, fresh=True)
            except MemfaultError as error:
                outcomes[type(error).__name__] = outcomes.get(type(error).__name__, 0) + 1
                continue
            assert isinstance(answer, ReleaseOffer | UpToDate | DeviceRefused | Unanswered), answer
            outcomes[type(answer).__name__] = outcomes.get(type(answer).__name__, 0) + 1
    # The drawn responses reach every kind of outcome, so each path was exercised.
    assert {"ReleaseOffer", "UpToDate", "DeviceRefused", "MemfaultUnavailable"} <= set(outcomes), outcomes
