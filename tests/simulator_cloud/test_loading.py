"""Loading projects, cohorts, devices, releases and artifact files from a cloud.toml directory."""

import hashlib
from pathlib import Path

import httpx
import pytest

from simulator.cloud import CloudConfigError, CloudEmulator, load_directory
from tests.simulator_cloud.queries import HARDWARE, PROJECT_KEY, FakeClock, ask

CLOUD_TOML = f"""
[[projects]]
key = "{PROJECT_KEY}"
hardware_versions = ["{HARDWARE}", "nrf5340dk"]
devices = {{ "CANARY-1" = "canary" }}
cohorts = {{ canary = {{ allow_downgrade = true }} }}

[[projects.releases]]
version = "1.1.0"
notes = "First update"
revision = "r110"
created_date = 2026-01-02T03:04:05Z
artifacts = [{{ hardware_version = "{HARDWARE}", file = "images/app-1.1.0.bin" }}]
activations = [{{ cohort = "default", percent = 100 }}, {{ cohort = "canary" }}]

[[projects.releases]]
version = "1.2.0"
must_pass_through = true
artifacts = [
    {{ hardware_version = "{HARDWARE}", file = "images/app-1.2.0.bin", filename = "zephyr.signed.bin" }},
    {{ hardware_version = "{HARDWARE}", file = "images/delta-1.1.0-1.2.0.bin", delta_from = "1.1.0" }},
]
activations = [{{ cohort = "canary", percent = 100 }}]
"""


def _write(directory: Path, config: str = CLOUD_TOML) -> None:
    (directory / "images").mkdir(exist_ok=True)
    (directory / "images" / "app-1.1.0.bin").write_bytes(b"image 1.1.0")
    (directory / "images" / "app-1.2.0.bin").write_bytes(b"image 1.2.0")
    (directory / "images" / "delta-1.1.0-1.2.0.bin").write_bytes(b"delta")
    (directory / "cloud.toml").write_text(config)


def test_a_directory_loads_into_the_model(tmp_path: Path) -> None:
    """Releases, artifacts, digests, dates, cohorts, devices and activations come from cloud.toml."""
    _write(tmp_path)
    model = load_directory(tmp_path, now_s=5.0)
    project = model.projects[PROJECT_KEY]
    first, second = project.release("1.1.0"), project.release("1.2.0")
    assert (first.notes, first.revision, first.created_s, second.created_s) == (
        "First update",
        "r110",
        1767323045.0,
        5.0,
    )
    assert first.artifacts[0].filename == "app-1.1.0.bin"
    assert first.artifacts[0].sha256 == hashlib.sha256(b"image 1.1.0").hexdigest()
    assert [a.filename for a in second.artifacts] == ["zephyr.signed.bin", "delta-1.1.0-1.2.0.bin"]
    assert second.must_pass_through and second.artifacts[1].base_version == "1.1.0"
    assert project.cohort_by_device == {"CANARY-1": "canary"}
    assert project.cohorts["canary"].allow_downgrade
    assert project.cohorts["canary"].percent_by_release_id == {first.id: 100, second.id: 100}
    assert "nrf5340dk" in project.hardware_versions()


@pytest.mark.integration
async def test_a_loaded_emulator_serves_the_directory(tmp_path: Path, clock: FakeClock) -> None:
    """An emulator built from a directory answers with its releases and artifact bytes."""
    _write(tmp_path)
    async with (
        CloudEmulator.from_directory(tmp_path, clock=clock) as cloud,
        httpx.AsyncClient(base_url=cloud.base_url) as http,
    ):
        fleet = (await ask(http, "FLEET-1")).json()
        canary = (await ask(http, "CANARY-1", current_version="1.1.0")).json()
        assert (fleet["version"], canary["version"], canary["is_delta"]) == ("1.1.0", "1.2.0", True)
        assert (await http.get(canary["artifacts"][0]["url"])).content == b"delta"
        other_board = await http.get(
            "/api/v0/releases/latest",
            params={"device_serial": "X", "hardware_version": "nrf5340dk", "software_type": "app"},
            headers={"Memfault-Project-Key": PROJECT_KEY},
        )
        assert (other_board.status_code, other_board.headers["memfault-reason"]) == (
            204,
            "no_artifact_for_hardware",
        )


RELEASE = "[[projects]]\nkey = 'k'\n[[projects.releases]]\n"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("projects = 3", "Expected `array`"),
        ("[[projects]]\nkey = 'k'\nunknown = 1", "unknown"),
        ("not toml [", "cloud.toml"),
        (
            RELEASE + "version = '1.0'\nartifacts = [{hardware_version = 'h', file = '../../etc/x'}]",
            "outside",
        ),
        (
            RELEASE + "version = '1.0'\nartifacts = [{hardware_version = 'h', file = 'missing.bin'}]",
            "missing.bin",
        ),
        (
            RELEASE
            + "version = 'one'\nartifacts = [{hardware_version = 'h', file = 'images/app-1.1.0.bin'}]",
            "version",
        ),
        (RELEASE + "version = '1.0'\nartifacts = []\nactivations = [{percent = 150}]", "<= 100"),
        (RELEASE + "version = '1.0'\nartifacts = []", "at least one artifact"),
    ],
)
def test_broken_directories_raise_config_errors(tmp_path: Path, config: str, problem: str) -> None:
    """Malformed TOML, unknown keys, bad versions and files outside or missing raise CloudConfigError."""
    _write(tmp_path, config)
    with pytest.raises(CloudConfigError, match=problem):
        load_directory(tmp_path, now_s=0.0)


def test_a_missing_directory_raises_a_config_error(tmp_path: Path) -> None:
    """A directory without cloud.toml is a CloudConfigError, not an OSError."""
    with pytest.raises(CloudConfigError, match=r"cloud\.toml"):
        load_directory(tmp_path / "nowhere", now_s=0.0)
