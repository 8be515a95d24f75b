"""Downloads cannot be steered into the network (DNS rebinding, redirects, proxies, TLS names).

Against real HTTP(S) servers on loopback.
The "public" network of these tests is 127.0.0.1 (allowed by `allowed_private_networks`); the
network to protect is 127.0.0.2, where a second server listens on the same port and records
anything that reaches it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.artifacts import ArtifactCache, ArtifactFetcher, ArtifactRefused, DownloadPolicy
from agent.errors import ConfigError
from schemas import ReasonCode

pytestmark = pytest.mark.integration

PAYLOAD = bytes(range(256)) * 64
SHA = hashlib.sha256(PAYLOAD).hexdigest()
GOOD, INTERNAL = "127.0.0.1", "127.0.0.2"


@dataclass
class Server:
    """One loopback HTTP server that serves the artifact and redirects, recording every request."""

    host: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(path, Host header) of every request."""
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, port, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.headers.get("Host", "")))
        if request.path.startswith("/redirect/"):
            # /redirect/<host> sends the client to http://<host>:<same port>/artifact
            raise web.HTTPFound(f"http://{request.path.removeprefix('/redirect/')}:{self.port}/artifact")
        return web.Response(body=PAYLOAD)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Server, Server]]:
    """The artifact server on 127.0.0.1 and the internal one on 127.0.0.2, same port."""
    good, internal = Server(GOOD), Server(INTERNAL)
    await good.start()
    await internal.start(good.port)
    yield good, internal
    await good.stop()
    await internal.stop()


class ScriptedResolver:
    """Answers each name from a script, one answer per call (the last answer repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        script = self.answers[host]
        self.calls.append(host)
        return script.pop(0) if len(script) > 1 else script[0]


def fetcher(tmp_path: Path, resolver: ScriptedResolver, **policy: object) -> ArtifactFetcher:
    """A fetcher that may reach 127.0.0.1 but no other private address."""
    base: dict[str, object] = {
        "allowed_hosts": (".test",),
        "allow_http": True,
        "allowed_private_networks": (f"{GOOD}/32",),
    }
    return ArtifactFetcher(
        ArtifactCache(tmp_path / "cache", 10 * len(PAYLOAD)),
        DownloadPolicy(**{**base, **policy}),  # type: ignore[arg-type]
        resolver=resolver,
    )


async def test_dns_rebinding_cannot_redirect_the_connection(
    tmp_path: Path, servers: tuple[Server, Server]
) -> None:
    """A name answering a good then an internal address is resolved once; the socket goes to the good one.

    The Host header stays on the name.
    """
    good, internal = servers
    resolver = ScriptedResolver({"artifacts.test": [[GOOD], [INTERNAL]]})
    path = await fetcher(tmp_path, resolver).fetch(
        f"http://artifacts.test:{good.port}/artifact", len(PAYLOAD), SHA
    )
    assert path.read_bytes() == PAYLOAD
    assert resolver.calls == ["artifacts.test"]
    assert good.requests == [("/artifact", f"artifacts.test:{good.port}")]
    assert internal.requests == []


async def test_a_name_that_resolves_into_the_network_is_refused(
    tmp_path: Path, servers: tuple[Server, Server]
) -> None:
    """The internal address is refused before any connection, even when it answers second."""
    good, internal = servers
    for answer in ([INTERNAL], [GOOD, INTERNAL]):
        resolver = ScriptedResolver({"artifacts.test": [answer]})
        with pytest.raises(ArtifactRefused) as caught:
            await fetcher(tmp_path, resolver).fetch(
                f"http://artifacts.test:{good.port}/artifact", len(PAYLOAD), SHA
            )
        assert caught.value.reason is ReasonCode.URL_NOT_ALLOWED
    assert good.requests == internal.requests == []


@pytest.mark.parametrize("target", ["internal.test", INTERNAL, f"[::ffff:{INTERNAL}]"])
async def test_a_redirect_into_the_network_is_refused(
    tmp_path: Path, servers: tuple[Server, Server], target: str
) -> None:
    """A redirect into the network is refused: by name, by literal address, by IPv4-mapped IPv6.

    The literal addresses are allow-listed as hosts, so the address check is what refuses them.
    """
    good, internal = servers
    resolver = ScriptedResolver({"artifacts.test": [[GOOD]], "internal.test": [[INTERNAL]]})
    allowed = (".test", INTERNAL, f"::ffff:{INTERNAL}")
    with pytest.raises(ArtifactRefused) as caught:
        await fetcher(tmp_path, resolver, allowed_hosts=allowed).fetch(
            f"http://artifacts.test:{good.port}/redirect/{target}", len(PAYLOAD), SHA
        )
    assert caught.value.reason is ReasonCode.URL_NOT_ALLOWED
    assert [path for path, _ in good.requests] == [f"/redirect/{target}"]
    assert internal.requests == []


async def test_a_redirect_to_an_allowed_address_is_followed(
    tmp_path: Path, servers: tuple[Server, Server]
) -> None:
    """A redirect to another allow-listed name with a good address is followed (and resolved)."""
    good, internal = servers
    resolver = ScriptedResolver({"artifacts.test": [[GOOD]], "cdn.test": [[GOOD]]})
    path = await fetcher(tmp_path, resolver).fetch(
        f"http://artifacts.test:{good.port}/redirect/cdn.test", len(PAYLOAD), SHA
    )
    assert path.read_bytes() == PAYLOAD
    assert resolver.calls == ["artifacts.test", "cdn.test"]
    assert good.requests[-1] == ("/artifact", f"cdn.test:{good.port}")
    assert internal.requests == []


async def test_proxy_environment_is_ignored_and_a_configured_proxy_is_used(
    tmp_path: Path, servers: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY in the environment changes nothing; `proxy_url` sends the request to the proxy."""
    good, internal = servers
    proxy = Server("127.0.0.1")
    await proxy.start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{proxy.port}")
        resolver = ScriptedResolver({"artifacts.test": [[GOOD]]})
        url = f"http://artifacts.test:{good.port}/artifact"
        await fetcher(tmp_path / "direct", resolver).fetch(url, len(PAYLOAD), SHA)
        assert proxy.requests == []
        assert len(good.requests) == 1
        await fetcher(tmp_path / "proxied", resolver, proxy_url=f"http://127.0.0.1:{proxy.port}").fetch(
            url, len(PAYLOAD), SHA
        )
        assert proxy.requests == [("/artifact", f"artifacts.test:{good.port}")]
        assert len(good.requests) == 1
    finally:
        await proxy.stop()
    assert internal.requests == []


def _tls_server_context(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for DNS name `name`, client context trusting its CA)."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "artifact test CA")])

    def builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
        )

    ca = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


@pytest.mark.parametrize(("certificate_name", "accepted"), [("artifacts.test", True), ("other.test", False)])
async def test_tls_checks_the_certificate_against_the_name_not_the_address(
    tmp_path: Path, certificate_name: str, accepted: bool
) -> None:
    """Over HTTPS to the pinned address, the certificate is checked against the URL's name.

    A certificate for that name is accepted, one for another name is refused.
    """
    server_context, client_context = _tls_server_context(tmp_path, certificate_name)
    server = Server(GOOD)
    await server.start(ssl_context=server_context)
    try:
        resolver = ScriptedResolver({"artifacts.test": [[GOOD]]})
        fetch = ArtifactFetcher(
            ArtifactCache(tmp_path / "cache", 10 * len(PAYLOAD)),
            DownloadPolicy(allowed_hosts=("artifacts.test",), allowed_private_networks=(f"{GOOD}/32",)),
            resolver=resolver,
            ssl_context=client_context,
        ).fetch(f"https://artifacts.test:{server.port}/artifact", len(PAYLOAD), SHA)
        if accepted:
            assert (await fetch).read_bytes() == PAYLOAD
            assert server.requests == [("/artifact", f"artifacts.test:{server.port}")]
        else:
            with pytest.raises(ArtifactRefused) as caught:
                await fetch
            assert caught.value.reason is ReasonCode.DOWNLOAD_FAILED
            assert server.requests == []
    finally:
        await server.stop()


def test_address_policy() -> None:
    """Public addresses pass; private, loopback, link-local, mapped and unlisted ones do not."""
    policy = DownloadPolicy(allowed_hosts=(), allowed_private_networks=("10.1.2.0/24",))
    assert policy.address_refusal("93.184.216.34") == ""
    assert policy.address_refusal("2606:4700::1111") == ""
    assert policy.address_refusal("10.1.2.3") == ""
    for address in (
        "10.1.3.1",
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1%eth0",
        "::ffff:10.9.9.9",
        "0.0.0.0",  # noqa: S104 (an address under test, nothing binds to it)
    ):
        assert policy.address_refusal(address), address
    with pytest.raises(ConfigError):
        DownloadPolicy(allowed_hosts=(), allowed_private_networks=("not-a-network",))


async def test_a_redirect_from_https_to_http_is_refused(tmp_path: Path) -> None:
    """Even with plain HTTP allowed, an HTTPS download never continues over HTTP."""
    server_context, client_context = _tls_server_context(tmp_path, "artifacts.test")
    server = Server(GOOD)
    await server.start(ssl_context=server_context)
    try:
        with pytest.raises(ArtifactRefused) as caught:
            await ArtifactFetcher(
                ArtifactCache(tmp_path / "cache", 10 * len(PAYLOAD)),
                DownloadPolicy(
                    allowed_hosts=("artifacts.test",),
                    allow_http=True,
                    allowed_private_networks=(f"{GOOD}/32",),
                ),
                resolver=ScriptedResolver({"artifacts.test": [[GOOD]]}),
                ssl_context=client_context,
            ).fetch(f"https://artifacts.test:{server.port}/redirect/artifacts.test", len(PAYLOAD), SHA)
        assert caught.value.reason is ReasonCode.URL_NOT_ALLOWED
        assert [path for path, _ in server.requests] == ["/redirect/artifacts.test"]
    finally:
        await server.stop()
