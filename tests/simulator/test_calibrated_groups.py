"""OS info, the enumeration group and switched-off groups, by the rules measured on the real build."""

import pytest

from simulator.device import FirmwareOptions
from simulator.device.calibration import native_sim_udp_device
from tests.simulator.frames import FAST_FIRMWARE, body, exchange, make_device, request


@pytest.mark.parametrize(
    ("format_letters", "output"),
    [
        (None, "Zephyr"),
        ("", "Zephyr"),
        ("s", "Zephyr"),
        ("vs", "Zephyr 4.4.0"),
        ("ss", "Zephyr"),
        ("i", "native_sim/native"),
        (
            "a",
            "Zephyr unknown 684c9e8f32e4 4.4.0 Wed Jun  3 22:19:37 2026 posix x86 native_sim/native Zephyr",
        ),
    ],
)
def test_os_info_joins_the_selected_fields_in_a_fixed_order(format_letters: str | None, output: str) -> None:
    """Letters select fields; order and repetition in the request do not matter; none means "s"."""
    payload = {} if format_letters is None else {"format": format_letters}
    assert body(exchange(make_device(), request(0, 7, payload))) == {"output": output}


def test_os_info_rejects_unknown_letters_and_non_text_formats() -> None:
    """An unknown letter is OS group error 2; a format that is not text is rc 3; a write is rc 8."""
    device = make_device()
    assert body(exchange(device, request(0, 7, {"format": "sq"}))) == {"err": {"group": 0, "rc": 2}}
    assert body(exchange(device, request(0, 7, {"format": 1}))) == {"rc": 3}
    assert body(exchange(device, request(0, 7, op=2))) == {"rc": 8}


def test_enumeration_counts_lists_and_walks_the_served_groups() -> None:
    """A full device lists enum, os, img and Memfault; single walks them and marks the end."""
    device = make_device()
    assert body(exchange(device, request(10, 0))) == {"count": 4}
    assert body(exchange(device, request(10, 1))) == {"groups": [10, 0, 1, 128]}
    assert body(exchange(device, request(10, 2))) == {"group": 10}
    assert body(exchange(device, request(10, 2, {"index": 3}))) == {"group": 128, "end": True}
    assert body(exchange(device, request(10, 2, {"index": 4}))) == {"err": {"group": 10, "rc": 4}}
    assert body(exchange(device, request(10, 2, {"index": "x"}))) == {"rc": 3}


def test_enumeration_details_filter_by_the_ids_asked_in_registration_order() -> None:
    """Details names the groups asked for that exist, in the device's order; a non-list asks for all."""
    device = make_device()
    assert body(exchange(device, request(10, 3, {"groups": [0, 10, 77]}))) == {
        "groups": [
            {"group": 10, "name": "enum mgmt", "handlers": 4},
            {"group": 0, "name": "os mgmt", "handlers": 9},
        ]
    }
    assert len(body(exchange(device, request(10, 3, {"groups": "x"})))["groups"]) == 4


def test_switched_off_groups_answer_rc_8_and_leave_the_list() -> None:
    """The native_sim_udp profile has no image, Memfault or bootloader info: rc 8, and lists os + enum."""
    device = native_sim_udp_device()  # 3 ms per request: each one a second after the last
    for second, (group, command) in enumerate(((1, 0), (128, 0), (0, 8))):
        assert body(exchange(device, request(group, command), now_s=second)) == {"rc": 8}
    assert body(exchange(device, request(10, 1), now_s=10)) == {"groups": [10, 0]}
    assert body(exchange(device, request(0, 6), now_s=11)) == {"buf_size": 2048, "buf_count": 2}


def test_no_enumeration_group_without_it() -> None:
    """A build without CONFIG_MCUMGR_GRP_ENUM answers group 10 with rc 8."""
    options = FirmwareOptions(enumeration_group=False, reset_delay_s=FAST_FIRMWARE.reset_delay_s)
    assert body(exchange(make_device(options=options), request(10, 0))) == {"rc": 8}
