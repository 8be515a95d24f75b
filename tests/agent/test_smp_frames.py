"""SMP frame codec: requests byte-identical to the `smp` library, tolerant reply decoding, golden vectors."""

import cbor2
import pytest
import smp.image_management as smpimg
import smp.os_management as smpos
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import SmpDeviceError, SmpRemoteError
from agent.smp import commands, group128
from agent.smp.frame import Group, ImgMgmtErr, Op, decode_reply, encode_request
from schemas import MemfaultAccess
from simulator.device.codes import ImgErr
from tests.simulator.clients import DeviceInfoRead

# Byte vectors from research/protocol.md §1.6 and §2.6 (Zephyr's tests and Memfault's smpmgr plugin).
DEVICE_INFO_REQUEST = bytes.fromhex("0800000100800100a0")
DEVICE_INFO_OK = (
    bytes.fromhex("0900006c00800100")
    + b"\xbf"
    + b"\x6ddevice_serial\x70"
    + b"65071B2E77FB7451"
    + b"\x70hardware_version\x6a"
    + b"nrf54l15dk"
    + b"\x6dsoftware_type\x63"
    + b"app"
    + b"\x6fcurrent_version\x6c"
    + b"0.0.1+d07bd2"
    + b"\xff"
)
PROJECT_KEY_OK = bytes.fromhex("0900001800800101") + b"\xbf\x6bproject_key\x69dummy-key\xff"
ACCESS_DENIED = bytes.fromhex("0900000600800100bf62726 30bff".replace(" ", ""))
NO_PROJECT_KEY_V2 = bytes.fromhex(
    "0900001400800101bf636572 72bf6567726f7570188062726302ffff".replace(" ", "")
)
NO_PROJECT_KEY_V1 = bytes.fromhex("0100000600800101bf62726305ff")
WRITE_TO_INFO = bytes.fromhex("0b00000600800100bf62726308ff")


def test_device_info_request_matches_the_reference_bytes() -> None:
    """Our group 128 request equals the bytes the smp library sends (sequence 1)."""
    assert group128.encode_device_info_read(1) == DEVICE_INFO_REQUEST
    assert DeviceInfoRead(sequence=1).BYTES == DEVICE_INFO_REQUEST


def test_device_info_reply_vector_decodes() -> None:
    """The Memfault SDK's own reply bytes (indefinite-length map) decode to the four fields."""
    assert len(DEVICE_INFO_OK) == 8 + 0x6C
    reply = decode_reply(DEVICE_INFO_OK)
    info = group128.parse_device_info(reply.raise_for_error())
    assert info == group128.DeviceInfo("65071B2E77FB7451", "nrf54l15dk", "app", "0.0.1+d07bd2")
    assert reply.header.group == Group.MEMFAULT
    assert reply.header.sequence == 1


def test_project_key_reply_vector_decodes() -> None:
    """The project-key reply vector decodes to the key."""
    assert group128.parse_project_key(decode_reply(PROJECT_KEY_OK).raise_for_error()) == "dummy-key"


@pytest.mark.parametrize(
    ("frame", "access", "group_error", "rc"),
    [
        (ACCESS_DENIED, MemfaultAccess.ACCESS_DENIED, False, 11),
        (NO_PROJECT_KEY_V2, MemfaultAccess.NO_PROJECT_KEY, True, 2),
        (NO_PROJECT_KEY_V1, MemfaultAccess.NO_PROJECT_KEY, False, 5),
        (WRITE_TO_INFO, MemfaultAccess.NO_GROUP, False, 8),
    ],
)
def test_error_vectors_classify(frame: bytes, access: MemfaultAccess, group_error: bool, rc: int) -> None:
    """Each error vector raises a device error that maps to the right Memfault access state."""
    with pytest.raises(SmpDeviceError) as caught:
        decode_reply(frame).raise_for_error()
    assert (caught.value.group_error, caught.value.rc) == (group_error, rc)
    assert group128.classify_error(caught.value) is access


def test_legacy_rc_zero_and_unknown_fields_are_tolerated() -> None:
    """A reply with `rc: 0` and extra fields is a success; the extras are ignored."""
    body = {
        "rc": 0,
        "device_serial": "S",
        "hardware_version": "h",
        "software_type": "app",
        "current_version": "1.0.0",
        "build_id": "abc",
    }
    frame = encode_request(Op.READ_RSP, Group.MEMFAULT, 0, 7, body)
    info = group128.parse_device_info(decode_reply(frame).raise_for_error())
    assert info.device_serial == "S"


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (commands.encode_state_read(3), smpimg.ImageStatesReadRequest(sequence=3).BYTES),
        (
            commands.encode_state_write(4, image_hash=b"\x01" * 32, confirm=False),
            smpimg.ImageStatesWriteRequest(sequence=4, hash=b"\x01" * 32, confirm=False).BYTES,
        ),
        (commands.encode_reset(5), smpos.ResetWriteRequest(sequence=5).BYTES),
        (commands.encode_params_read(6), smpos.MCUMgrParametersReadRequest(sequence=6).BYTES),
        (commands.encode_echo(7, "hi"), smpos.EchoWriteRequest(sequence=7, d="hi").BYTES),
        (
            commands.encode_upload(8, 0, b"\xaa" * 40, commands.FirstChunkFields(1000, b"\x02" * 32, True)),
            smpimg.ImageUploadWriteRequest(
                sequence=8, off=0, data=b"\xaa" * 40, image=0, len=1000, sha=b"\x02" * 32, upgrade=True
            ).BYTES,
        ),
        (
            commands.encode_upload(9, 4096, b"\xbb" * 300, None),
            smpimg.ImageUploadWriteRequest(sequence=9, off=4096, data=b"\xbb" * 300).BYTES,
        ),
    ],
)
def test_requests_are_byte_identical_to_the_smp_library(ours: bytes, theirs: bytes) -> None:
    """Every request we encode equals the smp library's encoding (golden oracle)."""
    assert ours == theirs


def test_state_reply_parses_full_and_frugal_lists() -> None:
    """Image state replies parse with all flags present or only the true ones."""
    body = {
        "images": [
            {
                "slot": 0,
                "version": "1.0.0",
                "hash": b"\x01" * 32,
                "bootable": True,
                "pending": False,
                "confirmed": True,
                "active": True,
                "permanent": False,
            },
            {"slot": 1, "version": "1.1.0", "hash": b"\x02" * 32, "pending": True},
        ],
        "splitStatus": 0,
    }
    slots = commands.parse_state(body)
    assert [s.version for s in slots] == ["1.0.0", "1.1.0"]
    assert slots[0].active and slots[0].confirmed and not slots[0].pending
    assert slots[1].pending and not slots[1].active


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x09\x00",
        bytes.fromhex("0900000500800100a0"),
        bytes.fromhex("0800000100800100a0"),
        bytes.fromhex("0900000100800100ff"),
        bytes.fromhex("090000010080010080"),
    ],
)
def test_malformed_replies_are_remote_errors(frame: bytes) -> None:
    """Short frames, length mismatches, request ops, garbage CBOR and non-map bodies are SmpRemoteError."""
    with pytest.raises(SmpRemoteError):
        decode_reply(frame)


@given(st.binary(max_size=300))
def test_arbitrary_replies_never_escape_as_other_errors(frame: bytes) -> None:
    """Whatever a device sends, decoding yields a reply or an agent SmpError, nothing else."""
    try:
        reply = decode_reply(frame)
        body = reply.raise_for_error()
        group128.parse_device_info(body)
    except (SmpRemoteError, SmpDeviceError):
        return


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.one_of(st.integers(), st.text(), st.binary(), st.booleans(), st.lists(st.integers(), max_size=3)),
        max_size=6,
    )
)
def test_arbitrary_bodies_parse_or_raise_remote_errors(body: dict[str, object]) -> None:
    """Reply parsers accept well-formed bodies and raise SmpRemoteError for anything else."""
    frame = encode_request(Op.READ_RSP, Group.IMAGE, 0, 1, body)
    try:
        success = decode_reply(frame).raise_for_error()
    except (SmpRemoteError, SmpDeviceError):
        return
    for parse in (commands.parse_state, commands.parse_params, commands.parse_upload_ack):
        try:
            parse(success)
        except SmpRemoteError:
            continue
    assert cbor2.loads(frame[8:]) == body


def test_the_image_group_error_codes_match_the_simulators_independent_table() -> None:
    """Every image-group code the agent names has the number the simulator (the oracle) gives it."""
    assert {e.name: e.value for e in ImgMgmtErr} == {e.name: ImgErr[e.name].value for e in ImgMgmtErr}
