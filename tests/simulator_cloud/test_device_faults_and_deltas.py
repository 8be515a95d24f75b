"""Per-device faults, delta replies that list the whole image, and releases without sha256."""

import hashlib

import httpx
import msgspec
import pytest

from simulator.cloud import CloudEmulator, DeviceFaultKind, ModelError
from tests.simulator_cloud.queries import HARDWARE, PROJECT_KEY, ask

pytestmark = pytest.mark.integration

FULL = b"full image" * 100
PATCH = b"patch" * 10


def _publish(cloud: CloudEmulator, *, without_sha256: bool = False) -> None:
    cloud.add_project(PROJECT_KEY)
    cloud.add_release(
        PROJECT_KEY,
        "1.1.0",
        {HARDWARE: FULL},
        delta_bytes_by_hardware_and_base={(HARDWARE, "1.0.0"): PATCH},
        without_sha256=without_sha256,
    )
    cloud.activate(PROJECT_KEY, "1.1.0")


@pytest.mark.parametrize("kind", ["status", "garbage", "truncated"])
async def test_a_faulted_device_misbehaves_alone(
    cloud: CloudEmulator, http: httpx.AsyncClient, kind: str
) -> None:
    """A fault set for one serial spoils only that serial's answers; clearing it restores them."""
    _publish(cloud)
    cloud.faults.fault_device("BAD", kind, status=404)
    bad = await ask(http, "BAD")
    good = await ask(http, "GOOD")
    assert good.status_code == 200 and msgspec.json.decode(good.content)["version"] == "1.1.0"
    if kind == "status":
        assert bad.status_code == 404
    else:
        assert bad.status_code == 200
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(bad.content)
    cloud.faults.clear_device("BAD")
    assert (await ask(http, "BAD")).status_code == 200


async def test_device_faults_over_the_admin_api(cloud: CloudEmulator, http: httpx.AsyncClient) -> None:
    """The admin API sets and clears a device's fault; a bad body is a 400."""
    _publish(cloud)
    assert (
        await http.put("/_emulator/faults/devices/BAD", json={"kind": "status", "status": 500})
    ).status_code == 200
    assert (await ask(http, "BAD")).status_code == 500
    assert (await http.put("/_emulator/faults/devices/BAD", json={"kind": "nonsense"})).status_code == 400
    assert (await http.delete("/_emulator/faults/devices/BAD")).status_code == 200
    assert (await ask(http, "BAD")).status_code == 200
    with pytest.raises(ModelError):
        cloud.faults.fault_device("X", DeviceFaultKind.STATUS, status=200)


async def test_a_delta_reply_lists_the_patch_then_the_whole_image(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """On the From version the reply is a delta whose patch comes first and the full image second."""
    _publish(cloud)
    body = msgspec.json.decode((await ask(http, "S1", "1.0.0")).content)
    assert body["is_delta"] is True
    assert [a["type"] for a in body["artifacts"]] == ["delta", "firmware"]
    assert [a["sha256"] for a in body["artifacts"]] == [
        hashlib.sha256(PATCH).hexdigest(),
        hashlib.sha256(FULL).hexdigest(),
    ]
    for artifact in body["artifacts"]:
        assert (await http.get(artifact["url"])).status_code == 200
    other = msgspec.json.decode((await ask(http, "S1", "0.9.0")).content)
    assert other["is_delta"] is False and [a["type"] for a in other["artifacts"]] == ["firmware"]


async def test_a_release_without_sha256_gives_md5_and_sha1(
    cloud: CloudEmulator, http: httpx.AsyncClient
) -> None:
    """A release marked without sha256 replies with an empty sha256 and the real md5 and sha1."""
    _publish(cloud, without_sha256=True)
    artifact = msgspec.json.decode((await ask(http, "S1", "0.9.0")).content)["artifacts"][0]
    assert artifact["sha256"] == ""
    assert artifact["md5"] == hashlib.md5(FULL, usedforsecurity=False).hexdigest()
    assert artifact["sha1"] == hashlib.sha1(FULL, usedforsecurity=False).hexdigest()
