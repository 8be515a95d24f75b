"""Golden wire bytes: Zephyr's own smp_version test vectors and the Memfault group 128 replies."""

import pytest

from simulator.device import MemfaultMode
from simulator.device.codec import Header
from simulator.device.memfault_group import MemfaultDeviceInfo, handle_memfault
from simulator.device.replies import GroupError, Reply
from simulator.device.smp_server import SmpOptions, process_datagram
from tests.simulator.frames import exchange, make_device, request


def golden(*parts: str | bytes) -> bytes:
    """Concatenate hex strings and raw byte strings."""
    return b"".join(part if isinstance(part, bytes) else bytes.fromhex(part) for part in parts)


def os_group_error(header: Header, payload: bytes) -> Reply:
    """The handler of Zephyr's smp_version test: OS command 7 adds group error 2."""
    return GroupError(0, 2)


@pytest.mark.parametrize(
    ("version", "original_protocol", "expected"),
    [
        (0, True, "01 00 00 06 00 00 01 07 bf 62 72 63 03 ff"),
        (0, False, "01 00 00 06 00 00 01 07 bf 62 72 63 0c ff"),
        (1, True, "09 00 00 13 00 00 01 07 bf 63 65 72 72 bf 65 67 72 6f 75 70 00 62 72 63 02 ff ff"),
        (2, True, "09 00 00 06 00 00 01 07 bf 62 72 63 0d ff"),
    ],
)
def test_zephyr_smp_version_vectors(version: int, original_protocol: bool, expected: str) -> None:
    """v1 translation, v1 refused, v2 group error and a too-new version match Zephyr's test bytes."""
    answers = process_datagram(
        request(0, 7, version=version), os_group_error, SmpOptions(original_protocol=original_protocol)
    )
    assert [answer.frame for answer in answers] == [golden(expected)]


def test_memfault_device_info_matches_the_sdk_docstring() -> None:
    """Device info is the 108-byte indefinite map from the SDK's memfault_group.py, byte for byte."""
    info = MemfaultDeviceInfo("65071B2E77FB7451", "nrf54l15dk", "app", "0.0.1+d07bd2")

    def dispatch(header: Header, payload: bytes) -> Reply | None:
        return handle_memfault(
            header.command_id, header.op, info=info, project_key="k", mode=MemfaultMode.NORMAL
        )

    answers = process_datagram(request(128, 0), dispatch, SmpOptions())
    expected = golden(
        "09 00 00 6c 00 80 01 00 bf 6d",
        b"device_serial",
        "70",
        b"65071B2E77FB7451",
        "70",
        b"hardware_version",
        "6a",
        b"nrf54l15dk",
        "6d",
        b"software_type",
        "63",
        b"app",
        "6f",
        b"current_version",
        "6c",
        b"0.0.1+d07bd2",
        "ff",
    )
    assert [answer.frame for answer in answers] == [expected]


def test_the_request_helper_builds_the_smp_library_frame() -> None:
    """A v2 device-info read is `08 00 00 01 00 80 01 00 a0`, as the `smp` library sends it."""
    assert request(128, 0) == golden("08 00 00 01 00 80 01 00 a0")


@pytest.mark.parametrize(
    ("mode", "project_key", "frame", "expected"),
    [
        (
            MemfaultMode.NORMAL,
            "dummy-key",
            request(128, 1),
            ["09 00 00 18 00 80 01 01 bf 6b", b"project_key", "69", b"dummy-key", "ff"],
        ),
        (MemfaultMode.ACCESS_DENIED, "k", request(128, 0), ["09 00 00 06 00 80 01 00 bf 62 72 63 0b ff"]),
        (
            MemfaultMode.NORMAL,
            "",
            request(128, 1),
            ["09 00 00 14 00 80 01 01 bf 63 65 72 72 bf 65 67 72 6f 75 70 18 80 62 72 63 02 ff ff"],
        ),
        (
            MemfaultMode.NO_PROJECT_KEY,
            "k",
            request(128, 1, version=0),
            ["01 00 00 06 00 80 01 01 bf 62 72 63 05 ff"],
        ),
        (MemfaultMode.NORMAL, "k", request(128, 0, op=2), ["0b 00 00 06 00 80 01 00 bf 62 72 63 08 ff"]),
    ],
    ids=["project-key", "access-denied", "no-key-v2", "no-key-v1", "write-cmd-0"],
)
def test_memfault_group_vectors(
    mode: MemfaultMode, project_key: str, frame: bytes, expected: list[str | bytes]
) -> None:
    """Every group 128 vector of protocol.md section 2.6 comes out of a simulated device byte for byte."""
    device = make_device(memfault_mode=mode, project_key=project_key)
    assert exchange(device, frame) == [golden(*expected)]


def test_device_info_reports_the_running_image_version() -> None:
    """A device's device-info reply carries its identity and its slot 0 version as current_version."""
    device = make_device("1.2.3", serial="65071B2E77FB7451")
    expected = golden(
        "09 00 00 65 00 80 01 00 bf 6d",
        b"device_serial",
        "70",
        b"65071B2E77FB7451",
        "70",
        b"hardware_version",
        "6a",
        b"nrf54l15dk",
        "6d",
        b"software_type",
        "63",
        b"app",
        "6f",
        b"current_version",
        "65",
        b"1.2.3",
        "ff",
    )
    assert exchange(device, request(128, 0)) == [expected]
