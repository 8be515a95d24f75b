"""Fleet descriptions: the TOML format, its error messages, and generated fleets."""

import re
from pathlib import Path

import pytest

from simulator.device import FaultPlan, MemfaultMode
from simulator.errors import FleetError
from simulator.fleet import BUILTIN_PROFILES, generate_fleet, load_fleet, parse_fleet

FLEET = """
seed = 7
[defaults]
hardware_version = "nrf5340dk"
image_version = "1.0.0"
[profiles.slow]
latency_s = 0.02
bandwidth_bytes_per_s = 20000
loss_rate = 0.01
buf_size_bytes = 1024
buf_count = 2
[[devices]]
serial = "SIM-0001"
[[devices]]
serial = "SIM-0002"
image_version = "1.1.0+3"
link = "slow"
memfault = "no_project_key"
[devices.faults]
drop_responses = [3]
delay_responses_s = { "2" = 1.5 }
reboot_at_upload_offset = 4096
legacy_rc = true
extra_fields = { x = "y" }
bad_build_versions = ["1.2.0"]
[devices.firmware]
reset_delay_s = 0
image_check = false
erase_bytes_per_s = 50000
"""


def test_a_fleet_file_describes_devices_profiles_faults_and_firmware(tmp_path: Path) -> None:
    """Every section of the format reaches the device specs, with defaults filled in."""
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    fleet = load_fleet(path)
    plain, faulty = fleet.devices
    assert fleet.seed == 7
    assert (plain.serial, plain.hardware_version, plain.image_version, plain.link.name) == (
        "SIM-0001",
        "nrf5340dk",
        "1.0.0",
        "loopback",
    )
    assert plain.faults == FaultPlan()
    assert faulty.link.latency_s == 0.02
    assert faulty.link.buf_count == 2
    assert faulty.memfault_mode is MemfaultMode.NO_PROJECT_KEY
    assert faulty.faults == FaultPlan(
        drop_responses=frozenset({3}),
        delay_responses_s={2: 1.5},
        reboot_at_upload_offset=4096,
        legacy_rc=True,
        extra_fields={"x": "y"},
        bad_build_versions=frozenset({"1.2.0"}),
    )
    assert (faulty.firmware.reset_delay_s, faulty.firmware.image_check) == (0.0, False)
    assert faulty.firmware.erase_bytes_per_s == 50000
    devices = fleet.build_devices()
    assert [device.running_version for device in devices] == ["1.0.0", "1.1.0.3"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 1", "colour"),
        ("[[devices]]\nhardware_version = 'x'", "devices[0].serial"),
        ("[[devices]]\nserial = 'a'\nlink = 'moon'", "devices[0].link"),
        ("[[devices]]\nserial = 'a'\nmemfault = 'sometimes'", "devices[0].memfault"),
        ("[[devices]]\nserial = 'a'\nimage_version = '1.x'", "devices[0].image_version"),
        (
            "[[devices]]\nserial = 'a'\n[devices.faults]\ndrop_responses = [0]",
            "devices[0].faults.drop_responses",
        ),
        ("[[devices]]\nserial = 'a'\n[devices.faults]\nlegacy_rc = 1", "devices[0].faults.legacy_rc"),
        ("[[devices]]\nserial = 'a'\n[devices.faults]\nfrobnicate = 1", "devices[0].faults.frobnicate"),
        (
            "[[devices]]\nserial = 'a'\n[devices.firmware]\nboot_time_s = -1",
            "devices[0].firmware.boot_time_s",
        ),
        ("[profiles.p]\nloss_rate = 2", "profiles.p.loss_rate"),
        ("[[devices]]\nserial = 'a'\n[[devices]]\nserial = 'a'", "devices[1].serial"),
        ("[defaults]\nserial = 'a'\n[[devices]]\nserial = 'b'", "serial"),
        ("seed = ", "not TOML"),
    ],
)
def test_bad_fleet_files_name_the_offending_key(text: str, key: str) -> None:
    """A bad fleet file raises FleetError whose message names the key at fault."""
    with pytest.raises(FleetError, match=re.escape(key)):
        parse_fleet(text)


def test_unreadable_file_is_a_fleet_error(tmp_path: Path) -> None:
    """A missing file raises FleetError with its path."""
    with pytest.raises(FleetError, match=r"missing\.toml"):
        load_fleet(tmp_path / "missing.toml")


def test_generated_fleets_are_deterministic_and_varied() -> None:
    """The same n and seed give the same fleet; serials are unique; hardware and versions vary."""
    fleet = generate_fleet(50, seed=3)
    assert fleet == generate_fleet(50, seed=3)
    assert fleet != generate_fleet(50, seed=4)
    assert len({spec.serial for spec in fleet.devices}) == 50
    assert len({spec.hardware_version for spec in fleet.devices}) > 1
    assert len({spec.image_version for spec in fleet.devices}) > 1
    assert generate_fleet(2, seed=1, link="ble").devices[0].link == BUILTIN_PROFILES["ble"]


def test_generated_fleet_rejects_bad_arguments() -> None:
    """A negative size or an unknown profile is a FleetError."""
    with pytest.raises(FleetError):
        generate_fleet(-1, seed=0)
    with pytest.raises(FleetError, match="link"):
        generate_fleet(1, seed=0, link="carrier-pigeon")
