"""MCUboot on a pure device: test swaps, reverts, permanent installs, bad builds, what group 128 reports."""

from typing import Any

import pytest

from simulator.device import BootOutcome, DevicePhase, FaultPlan, MemfaultMode, SimDevice, SwapType
from simulator.image import build_mcuboot_image, parse_mcuboot_image
from tests.simulator.frames import NEW, NEW_HASH, body, exchange, make_device, request, upload

BOOT_S = 0.02  # FAST_FIRMWARE: boot 0.01 plus 0.01 per swap


def reboot(device: SimDevice, now_s: float) -> float:
    """Reset through SMP at `now_s` and run the timers until the device answers; return the time then."""
    assert body(exchange(device, request(0, 5, op=2), now_s)) == {}
    while (due_s := device.next_timer_s()) is not None:
        device.poll(due_s)
        now_s = due_s
    return now_s


def phase(device: SimDevice) -> DevicePhase:
    """The device's phase (read through a call, so type narrowing does not outlive `poll`)."""
    return device.phase


def versions(device: SimDevice) -> list[tuple[str, bool, bool]]:
    """(version, active, confirmed) per reported slot."""
    return [(s.version, s.active, s.confirmed) for s in device.image_states()]


def device_info(device: SimDevice, now_s: float) -> Any:
    """The group 128 device-info reply."""
    return body(exchange(device, request(128, 0), now_s))


def test_unconfirmed_test_image_reverts_on_the_next_reset() -> None:
    """Test, reset: the new image runs unconfirmed; reset again without confirming: the old one is back."""
    device = make_device()
    upload(device)
    exchange(device, request(1, 0, {"hash": NEW_HASH}, op=2))
    now_s = reboot(device, 1.0)
    assert device.swap_type is SwapType.REVERT
    assert versions(device) == [("1.1.0", True, False), ("1.0.0", False, True)]
    assert device_info(device, now_s)["current_version"] == "1.1.0"
    now_s = reboot(device, now_s + 1)
    assert [boot.outcome for boot in device.boots] == [BootOutcome.SWAPPED, BootOutcome.REVERTED]
    assert versions(device) == [("1.0.0", True, True), ("1.1.0", False, False)]
    assert device_info(device, now_s)["current_version"] == "1.0.0"


def test_permanent_install_needs_no_confirm() -> None:
    """`confirm: true` with the slot 1 hash swaps for good: the new image is confirmed after one reset."""
    device = make_device()
    upload(device)
    exchange(device, request(1, 0, {"hash": NEW_HASH, "confirm": True}, op=2))
    reboot(device, 1.0)
    assert device.swap_type is SwapType.NONE
    assert versions(device) == [("1.1.0", True, True), ("1.0.0", False, False)]


def test_bad_build_never_comes_up_and_the_device_reverts() -> None:
    """A test boot of a bad build ends with the old image running and the new one left in slot 1."""
    device = make_device(faults=FaultPlan(bad_build_versions=frozenset({"1.1.0"})))
    upload(device)
    exchange(device, request(1, 0, {"hash": NEW_HASH}, op=2))
    now_s = reboot(device, 1.0)
    assert device.boots[-1].outcome is BootOutcome.BAD_BUILD_REVERTED
    assert versions(device) == [("1.0.0", True, True), ("1.1.0", False, False)]
    assert device_info(device, now_s)["current_version"] == "1.0.0"


def test_bad_build_installed_permanently_bricks_the_device() -> None:
    """A permanent install of a bad build leaves nothing that answers."""
    device = make_device(faults=FaultPlan(bad_build_versions=frozenset({"1.1.0"})))
    upload(device)
    exchange(device, request(1, 0, {"hash": NEW_HASH, "confirm": True}, op=2))
    exchange(device, request(0, 5, op=2), 1.0)
    device.poll(2.0)
    assert device.phase is DevicePhase.BRICKED
    assert exchange(device, request(0, 6), 3.0) == []


def test_corrupted_secondary_is_erased_instead_of_swapped() -> None:
    """MCUboot refuses a slot 1 image whose hash does not match its bytes, and erases it."""
    device = make_device()
    corrupt = bytearray(NEW)
    corrupt[100] ^= 0xFF
    upload(device, bytes(corrupt))
    exchange(device, request(1, 0, {"hash": parse_mcuboot_image(bytes(corrupt)).hash_sha256}, op=2))
    reboot(device, 1.0)
    assert device.boots[-1].outcome is BootOutcome.SECONDARY_INVALID
    assert versions(device) == [("1.0.0", True, True)]


def test_device_is_silent_while_booting_and_a_swap_takes_longer() -> None:
    """Between the reboot and the end of the boot (longer with a swap) nothing is answered."""
    device = make_device()
    upload(device)
    exchange(device, request(1, 0, {"hash": NEW_HASH}, op=2))
    exchange(device, request(0, 5, op=2), 1.0)
    device.poll(1.01)
    assert phase(device) is DevicePhase.BOOTING
    assert device.next_timer_s() == pytest.approx(1.01 + BOOT_S)
    assert exchange(device, request(0, 6), 1.025) == []
    device.poll(1.01 + BOOT_S)
    assert phase(device) is DevicePhase.RUNNING


def test_reboot_loses_the_upload_session_but_keeps_slot_one_bytes() -> None:
    """A reboot mid-upload forgets the session: resume by sha starts over at offset 0."""
    device = make_device()
    exchange(device, request(1, 1, {"off": 0, "data": NEW[:1000], "len": len(NEW), "sha": b"s" * 32}, op=2))
    device.power_cycle(1.0)
    device.poll(2.0)
    assert device.upload_session is None
    assert device.mcuboot.secondary.written_bytes == 1000
    assert [state.slot for state in device.image_states()] == [0]


def test_memfault_group_absent_and_empty_strings() -> None:
    """Without the group every command is rc 8; with NULL device info the four strings are empty."""
    assert device_info(make_device(memfault_mode=MemfaultMode.GROUP_ABSENT), 0.0) == {"rc": 8}
    assert device_info(make_device(memfault_mode=MemfaultMode.EMPTY_STRINGS), 0.0) == {
        "device_serial": "",
        "hardware_version": "",
        "software_type": "",
        "current_version": "",
    }


def test_current_version_shows_the_build_number_in_zephyr_form() -> None:
    """An image built as 2.0.0+7 reports current_version 2.0.0.7, like image state."""
    device = SimDevice(make_device().identity, build_mcuboot_image("2.0.0+7"))
    assert device_info(device, 0.0)["current_version"] == "2.0.0.7"
