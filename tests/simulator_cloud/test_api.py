"""The latest-release endpoints over real HTTP on loopback: shapes, statuses, cohorts and faults."""

import asyncio
import hashlib

import httpx
import pytest

from simulator.cloud import CloudEmulator, Endpoint, LifecycleError
from tests.simulator_cloud.queries import (
    HARDWARE,
    LATEST,
    LATEST_URL,
    PROJECT_KEY,
    FakeClock,
    ask,
    device_params,
)

pytestmark = pytest.mark.integration

IMAGE = bytes(range(256)) * 16
ARTIFACT_FIELDS = {
    "id",
    "created_date",
    "type",
    "hardware_version",
    "filename",
    "file_size",
    "url",
    "md5",
    "sha1",
    "sha256",
}
RELEASE_FIELDS = {
    "id",
    "created_date",
    "version",
    "revision",
    "must_pass_through",
    "notes",
    "reason",
    "is_delta",
    "artifacts",
}


def _release(
    cloud: CloudEmulator, version: str = "1.1.0", *, percent: int = 100, must_pass_through: bool = False
) -> None:
    content = IMAGE + version.encode()
    cloud.add_release(PROJECT_KEY, version, {HARDWARE: content}, must_pass_through=must_pass_through)
    cloud.activate(PROJECT_KEY, version, percent=percent)


async def test_a_release_carries_every_field_the_ios_decoder_needs(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """A 200 has every release and artifact field, with matching digests and a working URL."""
    cloud.add_release(PROJECT_KEY, "1.1.0", {HARDWARE: IMAGE}, notes="<b>new</b>", revision="abc123")
    cloud.activate(PROJECT_KEY, "1.1.0")
    response = await ask(http)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    release = response.json()
    assert set(release) == RELEASE_FIELDS
    assert (release["version"], release["revision"], release["notes"]) == ("1.1.0", "abc123", "<b>new</b>")
    assert (release["must_pass_through"], release["is_delta"], release["reason"]) == (False, False, "newest")
    assert release["created_date"] == "2027-01-15T08:00:00.000000+00:00"
    [artifact] = release["artifacts"]
    assert set(artifact) == ARTIFACT_FIELDS
    assert (artifact["hardware_version"], artifact["type"], artifact["file_size"]) == (
        HARDWARE,
        "firmware",
        len(IMAGE),
    )
    assert artifact["md5"] == hashlib.md5(IMAGE, usedforsecurity=False).hexdigest()
    assert artifact["sha1"] == hashlib.sha1(IMAGE, usedforsecurity=False).hexdigest()
    assert artifact["sha256"] == hashlib.sha256(IMAGE).hexdigest()
    download = await http.get(artifact["url"])
    assert (download.status_code, download.content) == (200, IMAGE)


async def test_the_url_endpoint_answers_the_artifact_url_as_text(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """`/latest/url` returns only the payload URL, and 204 when up to date."""
    _release(cloud)
    response = await ask(http, path=LATEST_URL)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith(f"{cloud.base_url}/artifacts/")
    assert (await http.get(response.text)).content == IMAGE + b"1.1.0"
    up_to_date = await ask(http, current_version="1.1.0", path=LATEST_URL)
    assert (up_to_date.status_code, up_to_date.content) == (204, b"")


async def test_an_up_to_date_device_gets_204_with_a_reason(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """204 carries `memfault-reason: latest`, and `not_newer` when the device is ahead."""
    _release(cloud)
    latest = await ask(http, current_version="1.1.0")
    assert (latest.status_code, latest.headers["memfault-reason"], latest.content) == (204, "latest", b"")
    ahead = await ask(http, current_version="1.2.0")
    assert (ahead.status_code, ahead.headers["memfault-reason"]) == (204, "not_newer")


@pytest.mark.parametrize(
    "params",
    [
        {"hardware_version": HARDWARE, "software_type": "app", "current_version": "1.0.0"},
        {**device_params(), "hardware_version": "unknown-board"},
        {**device_params(), "software_type": "modem"},
        {**device_params(), "current_version": "not a version"},
        {**device_params(), "device_serial": "x" * 129},
        {**device_params(), "device_serial": "tab\tinside"},
        {**device_params(), "device_serial": ""},
    ],
)
async def test_bad_parameters_get_400_with_an_error_body(
    cloud: CloudEmulator, http: httpx.AsyncClient, params: dict[str, str]
) -> None:
    """A missing serial, unknown hardware or software type, or malformed value is a 400."""
    _release(cloud)
    response = await http.get(LATEST, params=params, headers={"Memfault-Project-Key": PROJECT_KEY})
    assert response.status_code == 400
    assert isinstance(response.json()["error"]["message"], str)


async def test_a_repeated_parameter_is_a_400(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """Two values for one parameter are ambiguous and refused."""
    _release(cloud)
    params: list[tuple[str, str | int | float | bool | None]] = [
        *device_params().items(),
        ("device_serial", "SIM-0002"),
    ]
    response = await http.get(LATEST, params=params, headers={"Memfault-Project-Key": PROJECT_KEY})
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("project_key", "message"), [(None, "Missing project key"), ("wrong", "Invalid project key")]
)
async def test_a_missing_or_wrong_project_key_gets_403(
    cloud: CloudEmulator, http: httpx.AsyncClient, project_key: str | None, message: str
) -> None:
    """Both endpoints refuse requests without a known project key."""
    _release(cloud)
    for path in (LATEST, LATEST_URL):
        response = await ask(http, path=path, project_key=project_key)
        assert (response.status_code, response.json()) == (403, {"error": {"message": message}})


async def test_the_rate_limit_answers_429_with_retry_after(
    cloud: CloudEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Past the per-device limit a device gets 429 with Retry-After; others and later requests pass."""
    _release(cloud)
    cloud.faults.configure(rate_limit_per_minute=3)
    statuses = [(await ask(http)).status_code for _ in range(3)]
    limited = await ask(http)
    assert statuses == [200, 200, 200]
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "60")
    assert limited.json()["error"]["message"] == "Too many requests"
    assert (await ask(http, serial="SIM-0002")).status_code == 200
    clock.advance(60)
    assert (await ask(http)).status_code == 200
    assert cloud.counters.answers(Endpoint.LATEST, 429) == 1


async def test_forced_and_random_503s_carry_retry_after(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """Forced statuses answer the next N requests; error_rate 1 makes every request a 503."""
    _release(cloud)
    cloud.faults.force(503, count=2, retry_after_s=2)
    first, second, third = [await ask(http) for _ in range(3)]
    assert [(r.status_code, r.headers.get("retry-after")) for r in (first, second)] == [
        (503, "2"),
        (503, "2"),
    ]
    assert third.status_code == 200
    cloud.faults.configure(error_rate=1.0)
    failed = await ask(http, path=LATEST_URL)
    assert (failed.status_code, failed.headers["retry-after"]) == (503, "1")
    assert cloud.counters.requests_to(Endpoint.LATEST) == 3
    assert cloud.counters.answers(Endpoint.LATEST, 503) == 2


async def test_added_latency_delays_answers(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """latency_ms holds each release request back at least that long."""
    _release(cloud)
    cloud.faults.configure(latency_ms=150)
    started = asyncio.get_running_loop().time()
    assert (await ask(http)).status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.15


async def test_staged_rollouts_are_stable_and_proportional(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """A 25% rollout offers the release to about a quarter of 1,000 devices, the same ones every time."""
    _release(cloud, percent=25)
    serials = [f"SYN-{number:04d}" for number in range(1000)]

    async def staged(candidates: list[str]) -> set[str]:
        answers = [await ask(http, serial) for serial in candidates]
        assert {a.status_code for a in answers} <= {200, 204}
        assert {a.headers.get("memfault-reason") for a in answers if a.status_code == 204} <= {"not_staged"}
        return {
            serial for serial, answer in zip(candidates, answers, strict=True) if answer.status_code == 200
        }

    first = await staged(serials)
    assert 190 <= len(first) <= 310
    assert await staged(serials) == first
    cloud.activate(PROJECT_KEY, "1.1.0", percent=60)
    assert await staged(sorted(first)) == first


async def test_cohort_activation_targets_only_its_devices(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """A release active in the canary cohort reaches assigned devices only."""
    _release(cloud)
    cloud.add_release(PROJECT_KEY, "1.2.0", {HARDWARE: b"canary build"})
    cloud.activate(PROJECT_KEY, "1.2.0", "canary")
    cloud.assign(PROJECT_KEY, "CANARY-1", "canary")
    assert (await ask(http, "CANARY-1")).json()["version"] == "1.2.0"
    assert (await ask(http, "FLEET-1")).json()["version"] == "1.1.0"


async def test_must_pass_through_and_delta_precedence_over_http(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """A must-pass-through release is offered before newer ones; a matching delta is preferred."""
    _release(cloud, "1.1.0", must_pass_through=True)
    _release(cloud, "1.2.0")
    cloud.add_release(
        PROJECT_KEY,
        "1.3.0",
        {HARDWARE: b"full"},
        delta_bytes_by_hardware_and_base={(HARDWARE, "1.2.0"): b"patch"},
    )
    cloud.activate(PROJECT_KEY, "1.3.0")
    via = (await ask(http, current_version="1.0.0")).json()
    assert (via["version"], via["must_pass_through"], via["reason"]) == ("1.1.0", True, "must_pass_through")
    delta = (await ask(http, current_version="1.2.0")).json()
    assert (delta["version"], delta["is_delta"], delta["artifacts"][0]["file_size"]) == ("1.3.0", True, 5)
    assert (await http.get(delta["artifacts"][0]["url"])).content == b"patch"
    full = (await ask(http, current_version="1.1.0")).json()
    assert (full["version"], full["is_delta"]) == ("1.3.0", False)


async def test_downgrades_are_refused_unless_the_cohort_allows_them(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """After an abort, the older active release is refused by default and offered when allowed."""
    _release(cloud, "1.0.0")
    _release(cloud, "1.1.0")
    cloud.deactivate(PROJECT_KEY, "1.1.0")
    refused = await ask(http, current_version="1.1.0")
    assert (refused.status_code, refused.headers["memfault-reason"]) == (204, "not_newer")
    cloud.configure_cohort(PROJECT_KEY, "default", allow_downgrade=True)
    assert (await ask(http, current_version="1.1.0")).json()["version"] == "1.0.0"


async def test_unknown_paths_and_methods_get_json_4xx(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """Unknown paths are 404 and wrong methods 405, with error bodies, and are counted."""
    missing = await http.get("/api/v0/nothing")
    wrong_method = await http.post(LATEST)
    assert (missing.status_code, missing.json()) == (404, {"error": {"message": "Not Found"}})
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "GET,HEAD")
    assert cloud.counters.requests_to(Endpoint.OTHER) == 2


async def test_the_emulator_refuses_lifecycle_mistakes() -> None:
    """base_url needs a running emulator; starting twice is refused; stopping twice is harmless."""
    cloud = CloudEmulator()
    with pytest.raises(LifecycleError):
        _ = cloud.base_url
    await cloud.start()
    try:
        with pytest.raises(LifecycleError):
            await cloud.start()
        assert cloud.base_url.startswith("http://127.0.0.1:")
    finally:
        await cloud.stop()
    await cloud.stop()
