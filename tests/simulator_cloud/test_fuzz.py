"""Hostile input over real HTTP on loopback: random paths, queries, headers and bodies never get a 5xx."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.cloud import CloudEmulator
from simulator.cloud.signing import UrlSigner
from tests.simulator_cloud.queries import (
    HARDWARE,
    LATEST,
    LATEST_URL,
    PROJECT_KEY,
    START_S,
    FakeClock,
    device_params,
)

pytestmark = pytest.mark.integration

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    # One emulator serves every example: a request leaves no state that changes the next answer's class.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SECRET = b"f" * 32
ARTIFACT_QUERY = UrlSigner(SECRET).query(1, START_S)
DEVICE_PARAMETERS = [*device_params().items(), *(pair.split("=") for pair in ARTIFACT_QUERY.split("&"))]
REAL_PATHS = [LATEST, LATEST_URL, "/artifacts/1", "/artifacts/2"]
OTHER_PATHS = ["/artifacts/", "/artifacts/99999999999999999999", "/_emulator/health", "/", "/api"]

# Header values h11 lets through: printable ASCII and Latin-1, no surrounding whitespace.
header_values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
odd_paths = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"), max_size=40
)
raw_queries = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=80
)
query_values = st.sampled_from(
    ["SIM-1", HARDWARE, "app", "1.0.0", "1.1.0", "", "v2", "0-rc.1+5", "x" * 200]
) | st.text(max_size=40)
range_values = st.from_regex(
    r"(bytes|items)=[ \t]*[0-9]{0,25}-[0-9]{0,25}(,[0-9]{0,3}-[0-9]{0,3})?", fullmatch=True
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=8,
)


@dataclass(frozen=True)
class FuzzRequest:
    """One random request."""

    method: str
    url: httpx.URL
    headers: list[tuple[bytes, bytes]]


def _mostly(draw: st.DrawFn, usual: st.SearchStrategy[str], odd: st.SearchStrategy[str]) -> str:
    """A value from `usual` nine times in ten, else from `odd`: most examples get past the first check."""
    return draw(usual) if draw(st.integers(0, 9)) else draw(odd)


@st.composite
def fuzz_requests(draw: st.DrawFn) -> FuzzRequest:
    """Mostly well-formed requests with a few parts broken, dropped, repeated or replaced."""
    method = _mostly(draw, st.just("GET"), st.sampled_from(["HEAD", "POST", "PUT", "DELETE", "OPTIONS"]))
    path = _mostly(
        draw, st.sampled_from(REAL_PATHS), st.sampled_from(OTHER_PATHS) | odd_paths.map("/{}".format)
    )
    parameters: list[tuple[str, str]] = []
    for name, value in DEVICE_PARAMETERS:
        match _mostly(draw, st.just("keep"), st.sampled_from(["drop", "replace", "repeat"])):
            case "keep":
                parameters.append((name, value))
            case "replace":
                parameters.append((name, draw(query_values)))
            case "repeat":
                parameters += [(name, value), (name, draw(query_values))]
    parameters += draw(st.lists(st.tuples(st.text(max_size=10), query_values), max_size=2))
    url = httpx.URL(path, params=parameters)
    if draw(st.integers(0, 9)) == 0:
        url = url.copy_with(query=draw(raw_queries).encode("ascii"))
    headers = [("Memfault-Project-Key", _mostly(draw, st.just(PROJECT_KEY), header_values))]
    if draw(st.booleans()):
        headers.append(("Range", draw(range_values | header_values)))
    extra_names = st.sampled_from(["If-Range", "Accept", "X-Anything"])
    headers += draw(st.lists(st.tuples(extra_names, header_values), max_size=3))
    return FuzzRequest(method, url, [(name.encode(), value.encode("latin-1")) for name, value in headers])


@pytest.fixture
async def fuzz_target() -> AsyncIterator[tuple[CloudEmulator, httpx.AsyncClient]]:
    """An emulator with one active release (artifact 1, signed at START_S), and a client for it."""
    async with (
        CloudEmulator(clock=FakeClock(), secret=SECRET) as cloud,
        httpx.AsyncClient(base_url=cloud.base_url, timeout=10.0) as http,
    ):
        cloud.add_release(PROJECT_KEY, "1.1.0", {HARDWARE: bytes(range(64))})
        cloud.activate(PROJECT_KEY, "1.1.0")
        yield cloud, http


@FUZZ_SETTINGS
@given(attempt=fuzz_requests())
async def test_random_requests_never_get_a_5xx(
    fuzz_target: tuple[CloudEmulator, httpx.AsyncClient], attempt: FuzzRequest
) -> None:
    """Whatever the method, path, query and headers, the answer is below 500."""
    _, http = fuzz_target
    response = await http.request(attempt.method, attempt.url, headers=attempt.headers)
    assert response.status_code < 500, response.text


@FUZZ_SETTINGS
@given(
    path=st.sampled_from(
        ["/_emulator/faults", "/_emulator/faults/force", "/_emulator/activate", "/_emulator/assign"]
    ),
    body=st.one_of(json_values.map(lambda value: json.dumps(value).encode()), st.binary(max_size=60)),
)
async def test_random_admin_bodies_never_get_a_5xx(
    fuzz_target: tuple[CloudEmulator, httpx.AsyncClient], path: str, body: bytes
) -> None:
    """Random JSON and bytes sent to the admin API are answered below 500."""
    cloud, http = fuzz_target
    method = "PUT" if path == "/_emulator/faults" else "POST"
    response = await http.request(method, path, content=body)
    assert response.status_code < 500, response.text
    cloud.faults.reset()


@pytest.mark.parametrize(
    "request_options",
    [
        {"headers": {"Memfault-Project-Key": "k" * 20_000}},
        {"headers": {f"X-Header-{number}": "v" for number in range(200)}},
        {"params": {"device_serial": "s" * 20_000}},
    ],
)
async def test_oversized_requests_get_a_4xx(
    fuzz_target: tuple[CloudEmulator, httpx.AsyncClient], request_options: dict[str, Any]
) -> None:
    """Huge header values, many headers and huge query strings are refused with a 4xx."""
    _, http = fuzz_target
    response = await http.get(LATEST, **request_options)
    assert 400 <= response.status_code < 500


async def test_an_oversized_admin_body_gets_413(fuzz_target: tuple[CloudEmulator, httpx.AsyncClient]) -> None:
    """Admin bodies past the size cap are refused with 413."""
    _, http = fuzz_target
    response = await http.put("/_emulator/faults", content=b"{" + b" " * 100_000 + b"}")
    assert response.status_code == 413
