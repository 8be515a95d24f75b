"""The admin HTTP API under /_emulator/: fault knobs, counters and rollout control from elsewhere."""

import httpx
import pytest

from simulator.cloud import CloudEmulator
from tests.simulator_cloud.queries import HARDWARE, PROJECT_KEY, ask

pytestmark = pytest.mark.integration


async def test_health_answers_ok(http: httpx.AsyncClient) -> None:
    """Other processes can wait for the emulator by polling /_emulator/health."""
    response = await http.get("/_emulator/health")
    assert (response.status_code, response.json()) == (200, {"ok": True})


async def test_faults_are_set_read_and_reset_over_http(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """PUT changes only the knobs given; GET shows them; DELETE resets them."""
    changed = await http.put("/_emulator/faults", json={"error_rate": 0.5, "rate_limit_per_minute": 10})
    assert changed.status_code == 200
    assert changed.json()["settings"] == {
        "latency_ms": 0.0,
        "error_rate": 0.5,
        "rate_limit_per_minute": 10,
        "include_downloads": False,
    }
    assert (cloud.faults.settings.error_rate, cloud.faults.settings.rate_limit_per_minute) == (0.5, 10)
    assert (await http.put("/_emulator/faults", json={"latency_ms": 1})).json()["settings"][
        "error_rate"
    ] == 0.5
    assert (await http.delete("/_emulator/faults")).json()["settings"]["error_rate"] == 0.0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"error_rate": 7}',
        b'{"colour": "red"}',
        b'{"rate_limit_per_minute": 0}',
        b'{"self": 1}',
    ],
)
async def test_bad_fault_bodies_get_400(cloud: CloudEmulator, http: httpx.AsyncClient, body: bytes) -> None:
    """Malformed JSON, unknown knobs and values out of range are refused, changing nothing."""
    response = await http.put("/_emulator/faults", content=body)
    assert response.status_code == 400
    assert "message" in response.json()["error"]
    assert cloud.faults.settings.error_rate == 0.0


async def test_forced_statuses_through_http(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """POST /faults/force makes the next N release requests answer that status."""
    cloud.add_release(PROJECT_KEY, "1.1.0", {HARDWARE: b"x"})
    cloud.activate(PROJECT_KEY, "1.1.0")
    forced = await http.post("/_emulator/faults/force", json={"status": 503, "count": 2, "retry_after_s": 5})
    assert forced.json()["forced_remaining"] == 2
    answers = [await ask(http) for _ in range(3)]
    assert [(a.status_code, a.headers.get("retry-after")) for a in answers] == [
        (503, "5"),
        (503, "5"),
        (200, None),
    ]
    assert (await http.post("/_emulator/faults/force", json={"status": 200})).status_code == 400


async def test_counters_are_read_and_reset_over_http(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """GET /counters reports requests and statuses per endpoint; DELETE zeroes them."""
    await ask(http)
    await ask(http, project_key=None)
    counters = (await http.get("/_emulator/counters")).json()
    assert counters["latest"] == {"requests": 2, "403": 2}
    assert (await http.delete("/_emulator/counters")).status_code == 204
    # The DELETE's own answer is counted after the reset, then the GET's arrival.
    assert (await http.get("/_emulator/counters")).json() == {"admin": {"requests": 1, "204": 1}}


async def test_rollouts_are_driven_over_http(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """Activate, assign and deactivate through the admin API change what devices are offered."""
    cloud.add_release(PROJECT_KEY, "1.1.0", {HARDWARE: b"x"})
    assert (await ask(http)).headers["memfault-reason"] == "no_active_release"
    activate = {"project_key": PROJECT_KEY, "version": "1.1.0", "cohort": "beta"}
    assert (await http.post("/_emulator/activate", json=activate)).status_code == 204
    assign = {"project_key": PROJECT_KEY, "device_serial": "SIM-0001", "cohort": "beta"}
    assert (await http.post("/_emulator/assign", json=assign)).status_code == 204
    assert (await ask(http)).json()["version"] == "1.1.0"
    deactivate = {"project_key": PROJECT_KEY, "version": "1.1.0", "cohort": "beta"}
    assert (await http.post("/_emulator/deactivate", json=deactivate)).status_code == 204
    assert (await ask(http)).status_code == 204
    unknown = {"project_key": PROJECT_KEY, "version": "9.0.0"}
    refused = await http.post("/_emulator/activate", json=unknown)
    assert refused.status_code == 400
    assert "9.0.0" in refused.json()["error"]["message"]
