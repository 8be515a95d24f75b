"""Property tests: no datagram, however hostile, makes a device raise or send a malformed reply."""

import struct

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.device import SimDevice
from tests.simulator.frames import make_device

GROUPS = st.sampled_from([0, 1, 2, 63, 128, 0xFFFF])
COMMANDS = st.integers(0, 9) | st.integers(0, 255)
cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
request_maps = st.dictionaries(
    st.sampled_from(
        ["d", "off", "len", "data", "sha", "hash", "confirm", "slot", "query", "upgrade", "image"]
    ),
    cbor_values,
    max_size=6,
)


@st.composite
def headers_and_payloads(draw: st.DrawFn) -> bytes:
    """A header with any op, version and flags, and a payload that is CBOR, truncated CBOR or garbage."""
    payload = draw(
        st.one_of(
            request_maps.map(lambda fields: cbor2.dumps(fields, canonical=True)),
            st.binary(max_size=64),
            request_maps.map(lambda fields: cbor2.dumps(fields)[:-1]),
        )
    )
    length = draw(st.sampled_from([len(payload), max(0, len(payload) - 1), len(payload) + 3, 0]))
    first = draw(st.integers(0, 255))
    header = struct.pack("!BBHHBB", first, draw(st.integers(0, 255)), length, draw(GROUPS), 7, draw(COMMANDS))
    return header + payload


def assert_valid_replies(device: SimDevice, datagram: bytes) -> None:
    """Every reply is a well-formed SMP response carrying one CBOR map."""
    for index, (send_at_s, frame) in enumerate(device.handle(datagram, 1.0)):
        assert send_at_s >= 1.0
        first, flags, length, _group, sequence, _command = struct.unpack_from("!BBHHBB", frame)
        assert len(frame) == 8 + length
        assert first & 7 in (1, 3) and first >> 3 in (0, 1) and flags == 0
        assert index > 0 or sequence == datagram[6]
        assert frame[8] == 0xBF
        assert isinstance(cbor2.loads(frame[8:]), dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(datagram: bytes) -> None:
    """Any datagram is answered with valid frames or silence."""
    assert_valid_replies(make_device(), datagram)


@settings(max_examples=500, deadline=None)
@given(st.lists(headers_and_payloads(), min_size=1, max_size=3))
def test_random_headers_with_garbage_cbor_never_raise(frames: list[bytes]) -> None:
    """Plausible headers over CBOR, truncated CBOR or garbage (several per datagram) never break a device."""
    device = make_device()
    for frame in frames:
        assert_valid_replies(device, frame)
    assert_valid_replies(device, b"".join(frames))
