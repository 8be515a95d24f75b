"""Image management on a pure device: state flags, state write rules, upload checks and resume, erase."""

import hashlib
from typing import Any

import pytest

from simulator.device import FirmwareOptions, SimDevice, SwapType
from simulator.fleet import firmware_image
from simulator.image import build_mcuboot_image
from tests.simulator.frames import (
    CHUNK,
    NEW,
    NEW_HASH,
    OLD_HASH,
    body,
    exchange,
    make_device,
    request,
    upload,
)


def state(device: SimDevice) -> list[dict[str, Any]]:
    """The `images` list of a state read."""
    images: list[dict[str, Any]] = body(exchange(device, request(1, 0)))["images"]
    return images


def flags(entry: dict[str, Any]) -> set[str]:
    """The names of an image entry's true flags (bootable aside)."""
    return {name for name in ("pending", "confirmed", "active", "permanent") if entry[name]}


def write_state(device: SimDevice, fields: dict[str, Any], version: int = 1) -> Any:
    """Send a state write and return the reply map."""
    return body(exchange(device, request(1, 0, fields, op=2, version=version)))


def test_fresh_device_reports_only_its_confirmed_active_slot() -> None:
    """Empty slot 1 is omitted; slot 0 is active and confirmed, with all five flags and splitStatus."""
    reply = body(exchange(make_device(), request(1, 0)))
    assert reply == {
        "images": [
            {
                "slot": 0,
                "version": "1.0.0",
                "hash": OLD_HASH,
                "bootable": True,
                "pending": False,
                "confirmed": True,
                "active": True,
                "permanent": False,
            }
        ],
        "splitStatus": 0,
    }


def test_upload_writes_slot_one_and_reports_match() -> None:
    """A full upload walks the offsets, ends with `match: true`, and slot 1 shows the new image unflagged."""
    device = make_device()
    replies = upload(device)
    assert [reply["off"] for reply in replies] == [1000, 2000, 3000, len(NEW)]
    assert replies[-1]["match"] is True
    assert all("match" not in reply for reply in replies[:-1])
    assert device.upload_session is None
    slot1 = state(device)[1]
    assert (slot1["version"], slot1["hash"], flags(slot1)) == ("1.1.0", NEW_HASH, set())


@pytest.mark.parametrize(
    ("confirm", "swap", "slot0", "slot1"),
    [
        (False, SwapType.TEST, {"active", "confirmed"}, {"pending"}),
        (True, SwapType.PERM, {"active", "confirmed"}, {"pending", "permanent"}),
    ],
)
def test_state_write_marks_slot_one(confirm: bool, swap: SwapType, slot0: set[str], slot1: set[str]) -> None:
    """Test and permanent requests produce the flags of Zephyr's table, and answer the full state."""
    device = make_device()
    upload(device)
    reply = write_state(device, {"hash": NEW_HASH, "confirm": confirm})
    assert device.swap_type is swap
    assert [flags(entry) for entry in reply["images"]] == [slot0, slot1]
    assert reply["splitStatus"] == 0


def test_test_boot_then_confirm() -> None:
    """After a test swap the new image runs unconfirmed (REVERT); confirming makes it stay."""
    device = make_device()
    upload(device)
    write_state(device, {"hash": NEW_HASH})
    device.power_cycle(1.0)
    device.poll(2.0)
    images = state(device)
    assert [(entry["version"], flags(entry)) for entry in images] == [
        ("1.1.0", {"active"}),
        ("1.0.0", {"confirmed"}),
    ]
    assert write_state(device, {"hash": OLD_HASH, "confirm": True})["images"][1]["confirmed"]  # no-op
    reply = write_state(device, {"confirm": True})
    assert [flags(entry) for entry in reply["images"]] == [{"active", "confirmed"}, set()]
    assert device.swap_type is SwapType.NONE


@pytest.mark.parametrize(
    ("fields", "expected_rc"),
    [
        ({}, 24),
        ({"confirm": False}, 24),
        ({"hash": b"\x01" * 31}, 24),
        ({"hash": b"\x01" * 32}, 8),
        ({"hash": OLD_HASH}, 33),
    ],
    ids=["nothing", "test-without-hash", "short-hash", "unknown-hash", "test-active"],
)
def test_state_write_errors(fields: dict[str, Any], expected_rc: int) -> None:
    """Bad state writes get the image group's error codes."""
    assert write_state(make_device(), fields) == {"err": {"group": 1, "rc": expected_rc}}


def test_state_write_rules_while_pending() -> None:
    """With a test pending: testing it again is fine, confirming anything is 28; v1 gets rc 6."""
    device = make_device()
    upload(device)
    write_state(device, {"hash": NEW_HASH})
    assert "images" in write_state(device, {"hash": NEW_HASH})
    assert write_state(device, {"confirm": True}) == {"err": {"group": 1, "rc": 28}}
    assert write_state(device, {"hash": NEW_HASH, "confirm": True}, version=0) == {"rc": 6}


def test_state_write_with_wrong_field_types_is_einval() -> None:
    """A hash that is not a byte string makes the request undecodable: rc 3."""
    assert write_state(make_device(), {"hash": "abc"}) == {"rc": 3}


@pytest.mark.parametrize(
    ("fields", "expected_rc"),
    [
        ({"data": NEW[:100], "len": len(NEW)}, 20),
        ({"off": 0, "data": NEW[:31], "len": len(NEW)}, 22),
        ({"off": 0, "data": NEW[:100]}, 21),
        ({"off": 0, "data": b"\0" * 100, "len": len(NEW)}, 23),
        ({"off": 0, "data": NEW[:100], "len": len(NEW), "sha": b"\1" * 33}, 24),
        ({"off": 0, "data": NEW[:100], "len": 0x68001}, 30),
        ({"off": 0, "data": firmware_image("1.0.0")[:100], "len": 100, "upgrade": True}, 27),
    ],
    ids=["no-off", "short-header", "no-len", "magic", "long-sha", "too-large", "not-newer"],
)
def test_first_chunk_checks(fields: dict[str, Any], expected_rc: int) -> None:
    """The first chunk is checked in Zephyr's order, each failure a group 1 error."""
    assert body(exchange(make_device(), request(1, 1, fields, op=2))) == {
        "err": {"group": 1, "rc": expected_rc}
    }


def test_upgrade_accepts_a_newer_version() -> None:
    """With `upgrade`, a newer image is accepted."""
    assert upload(make_device(), upgrade=True)[-1]["match"] is True


def test_out_of_order_chunk_is_dropped_and_the_expected_offset_reported() -> None:
    """A chunk at the wrong offset writes nothing; the reply names the offset the device expects."""
    device = make_device()
    upload_first = {"off": 0, "data": NEW[:CHUNK], "len": len(NEW), "sha": hashlib.sha256(NEW).digest()}
    assert body(exchange(device, request(1, 1, upload_first, op=2))) == {"off": 1000}
    assert body(exchange(device, request(1, 1, {"off": 2000, "data": NEW[2000:3000]}, op=2))) == {"off": 1000}
    assert body(exchange(device, request(1, 1, {"off": 500, "data": NEW[500:1500]}, op=2))) == {"off": 1000}
    assert device.mcuboot.secondary.written_bytes == 1000


def test_continuation_without_a_session_reports_offset_zero() -> None:
    """After a reboot (or before any upload) every continuation chunk is answered `off: 0`."""
    assert body(exchange(make_device(), request(1, 1, {"off": 1000, "data": b"x"}, op=2))) == {"off": 0}


def test_overrun_is_an_error_and_ends_the_session() -> None:
    """Data past `len` is error 31, and the session is gone (a resume starts over)."""
    device = make_device()
    small = build_mcuboot_image("1.1.0", payload_size=1400)
    sha = hashlib.sha256(small).digest()
    exchange(device, request(1, 1, {"off": 0, "data": small[:CHUNK], "len": len(small), "sha": sha}, op=2))
    overrun = body(exchange(device, request(1, 1, {"off": 1000, "data": b"x" * 600}, op=2)))
    assert overrun == {"err": {"group": 1, "rc": 31}}
    assert device.upload_session is None


def test_resume_by_sha_returns_the_current_offset() -> None:
    """Re-sending the first chunk with the same sha resumes: the reply is the session's offset."""
    device = make_device()
    sha = hashlib.sha256(NEW).digest()
    first = {"off": 0, "data": NEW[:CHUNK], "len": len(NEW), "sha": sha}
    exchange(device, request(1, 1, first, op=2))
    exchange(device, request(1, 1, {"off": 1000, "data": NEW[1000:2000]}, op=2))
    assert body(exchange(device, request(1, 1, first, op=2))) == {"off": 2000}
    other = {**first, "sha": sha[:16]}
    assert body(exchange(device, request(1, 1, other, op=2))) == {"off": 1000}


def test_uploading_the_same_image_again_finishes_at_once() -> None:
    """With the image already in slot 1, the first chunk answers `off: len, match: true`."""
    device = make_device()
    upload(device)
    assert upload(device) == [{"off": len(NEW), "match": True}]


def test_wrong_sha_reports_match_false() -> None:
    """A sha that is not the file's SHA-256 uploads fine but ends with `match: false`."""
    assert upload(make_device(), sha=b"\x00" * 32)[-1]["match"] is False


def test_upload_is_refused_while_slot_one_is_pending() -> None:
    """With a test pending, slot 1 is in use: a new upload is error 9."""
    device = make_device()
    upload(device)
    write_state(device, {"hash": NEW_HASH})
    other = build_mcuboot_image("1.2.0", payload_size=100)
    assert upload(device, other) == [{"err": {"group": 1, "rc": 9}}]


def test_erase() -> None:
    """Erase clears slot 1 (default) and the session; a slot in use is error 9; slot 5 is error 14."""
    device = make_device()
    upload(device)
    assert body(exchange(device, request(1, 5, {"slot": 0}, op=2))) == {"err": {"group": 1, "rc": 9}}
    assert body(exchange(device, request(1, 5, {}, op=2))) == {}
    assert [entry["slot"] for entry in state(device)] == [0]
    assert body(exchange(device, request(1, 5, {"slot": 5}, op=2))) == {"err": {"group": 1, "rc": 14}}
    assert body(exchange(device, request(1, 5, {"slot": "one"}, op=2))) == {"rc": 3}


def test_frugal_list_reports_only_true_flags() -> None:
    """With CONFIG_MCUMGR_GRP_IMG_FRUGAL_LIST, false flags and splitStatus are left out."""
    device = make_device(options=FirmwareOptions(frugal_list=True))
    assert body(exchange(device, request(1, 0))) == {
        "images": [
            {
                "slot": 0,
                "version": "1.0.0",
                "hash": OLD_HASH,
                "bootable": True,
                "confirmed": True,
                "active": True,
            }
        ]
    }
