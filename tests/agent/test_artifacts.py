"""Artifact downloads over real HTTP on loopback: policy, verification, resume and the LRU cache."""

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.artifacts import ArtifactCache, ArtifactFetcher, ArtifactRefused, DownloadPolicy
from schemas import ReasonCode

pytestmark = pytest.mark.integration

PAYLOAD = bytes(range(256)) * 400
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class ArtifactServer:
    """A loopback HTTP server with well-behaved and misbehaving artifact routes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.truncate_next = False
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def artifact(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, request.headers.get("Range")))
        start = 0
        if header := request.headers.get("Range"):
            start = int(header.removeprefix("bytes=").split("-")[0])
        body = PAYLOAD[start:]
        status = 206 if start else 200
        response = web.StreamResponse(status=status)
        response.content_length = len(body)
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
        await response.prepare(request)
        if self.truncate_next:
            self.truncate_next = False
            await response.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body)
        return response

    async def lying_length(self, request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD + b"extra")

    async def redirect_same(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{self.port}/artifact")

    async def redirect_other(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{self.port}/artifact")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/artifact", self.artifact)
        app.router.add_get("/lying", self.lying_length)
        app.router.add_get("/redirect-same", self.redirect_same)
        app.router.add_get("/redirect-other", self.redirect_other)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def server() -> AsyncIterator[ArtifactServer]:
    instance = ArtifactServer()
    await instance.start()
    yield instance
    assert instance.runner is not None
    await instance.runner.cleanup()


def _fetcher(tmp_path: Path, **policy: Any) -> ArtifactFetcher:
    base = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_http=True, allow_private_addresses=True)
    return ArtifactFetcher(ArtifactCache(tmp_path / "cache", 10 * len(PAYLOAD)), replace(base, **policy))


async def test_download_is_verified_and_cached(tmp_path: Path, server: ArtifactServer) -> None:
    """A good artifact lands under its sha; the second fetch is a cache hit with no request."""
    fetcher = _fetcher(tmp_path)
    path = await fetcher.fetch(server.url("/artifact"), len(PAYLOAD), SHA)
    assert path.read_bytes() == PAYLOAD
    again = await fetcher.fetch(server.url("/artifact"), len(PAYLOAD), SHA)
    assert again == path
    assert len(server.requests) == 1
    assert (fetcher.cache.stats.hits, fetcher.cache.stats.misses) == (1, 1)


async def test_wrong_hash_is_refused_and_nothing_kept(tmp_path: Path, server: ArtifactServer) -> None:
    """An artifact whose sha256 differs from the command's is refused and deleted."""
    fetcher = _fetcher(tmp_path)
    with pytest.raises(ArtifactRefused) as caught:
        await fetcher.fetch(server.url("/artifact"), len(PAYLOAD), "0" * 64)
    assert caught.value.reason is ReasonCode.HASH_MISMATCH
    assert list((tmp_path / "cache").iterdir()) == []


async def test_size_lies_are_refused(tmp_path: Path, server: ArtifactServer) -> None:
    """A server sending more bytes than the command says is refused."""
    with pytest.raises(ArtifactRefused) as caught:
        await _fetcher(tmp_path).fetch(server.url("/lying"), len(PAYLOAD), SHA)
    assert caught.value.reason is ReasonCode.SIZE_MISMATCH


async def test_an_interrupted_download_resumes_with_range(tmp_path: Path, server: ArtifactServer) -> None:
    """After a cut connection the next fetch asks only for the missing bytes."""
    fetcher = _fetcher(tmp_path)
    server.truncate_next = True
    with pytest.raises(ArtifactRefused):
        await fetcher.fetch(server.url("/artifact"), len(PAYLOAD), SHA)
    path = await fetcher.fetch(server.url("/artifact"), len(PAYLOAD), SHA)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"


@pytest.mark.parametrize(
    ("policy", "url_path"),
    [
        ({"allowed_hosts": ("cdn.example.com",)}, "/artifact"),
        ({"allow_http": False}, "/artifact"),
        ({"allow_private_addresses": False}, "/artifact"),
        ({}, "/redirect-other"),
    ],
)
async def test_policy_violations_are_refused(
    tmp_path: Path,
    server: ArtifactServer,
    policy: dict[str, object],
    url_path: str,
) -> None:
    """Unlisted hosts, plain HTTP, private addresses and cross-host redirects are all refused."""
    with pytest.raises(ArtifactRefused) as caught:
        await _fetcher(tmp_path, **policy).fetch(server.url(url_path), len(PAYLOAD), SHA)
    assert caught.value.reason is ReasonCode.URL_NOT_ALLOWED


async def test_same_host_redirect_is_followed(tmp_path: Path, server: ArtifactServer) -> None:
    """A redirect within the same host is allowed (re-checked against the policy)."""
    path = await _fetcher(tmp_path).fetch(server.url("/redirect-same"), len(PAYLOAD), SHA)
    assert path.read_bytes() == PAYLOAD


async def test_oversized_artifacts_are_refused_before_any_request(
    tmp_path: Path, server: ArtifactServer
) -> None:
    """An artifact above the size cap is refused without contacting the server."""
    with pytest.raises(ArtifactRefused) as caught:
        await _fetcher(tmp_path, max_artifact_bytes=1000).fetch(server.url("/artifact"), len(PAYLOAD), SHA)
    assert caught.value.reason is ReasonCode.ARTIFACT_TOO_LARGE
    assert server.requests == []


def test_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    """Past its cap the cache drops the least recently used files first."""
    cache = ArtifactCache(tmp_path, max_bytes=250)
    for index, name in enumerate(["a", "b", "c"]):
        path = cache.path_for(name)
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + index, 1000 + index))
    cache.make_room(100, keep="new")
    assert not cache.path_for("a").exists()
    assert not cache.path_for("b").exists()
    assert cache.path_for("c").exists()
    assert cache.stats.evicted_files == 2


async def test_without_sha256_the_md5_and_sha1_are_verified(tmp_path: Path, server: ArtifactServer) -> None:
    """With no sha256, an artifact matching md5 and sha1 is accepted; a wrong md5 or sha1 refuses it."""
    md5 = hashlib.md5(PAYLOAD, usedforsecurity=False).hexdigest()
    sha1 = hashlib.sha1(PAYLOAD, usedforsecurity=False).hexdigest()
    fetcher = _fetcher(tmp_path)
    for wrong_md5, wrong_sha1 in (("0" * 32, sha1), (md5, "0" * 40)):
        with pytest.raises(ArtifactRefused) as caught:
            await fetcher.fetch(
                server.url("/artifact"), len(PAYLOAD), None, md5_hex=wrong_md5, sha1_hex=wrong_sha1
            )
        assert caught.value.reason is ReasonCode.HASH_MISMATCH
    assert list((tmp_path / "cache").iterdir()) == []
    path = await fetcher.fetch(server.url("/artifact"), len(PAYLOAD), None, md5_hex=md5, sha1_hex=sha1)
    assert path.read_bytes() == PAYLOAD


async def test_a_command_without_sha256_or_md5_is_refused(tmp_path: Path, server: ArtifactServer) -> None:
    """Nothing is downloaded for an artifact that names no digest the agent can verify."""
    with pytest.raises(ArtifactRefused) as caught:
        await _fetcher(tmp_path).fetch(server.url("/artifact"), len(PAYLOAD), None)
    assert caught.value.reason is ReasonCode.HASH_MISMATCH
    assert server.requests == []
