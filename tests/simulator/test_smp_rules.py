"""Zephyr's SMP server rules on a pure device: framing, versions, unknown commands, the OS group."""

import pytest

from simulator.device import FirmwareOptions, LinkProfile
from tests.simulator.frames import body, exchange, make_device, reply, request


def test_fewer_than_eight_bytes_get_no_reply() -> None:
    """A datagram shorter than a header is dropped silently."""
    assert exchange(make_device(), b"\x08\x00\x00\x01\x00\x00\x01") == []


def test_short_payload_is_ecorrupt() -> None:
    """A header announcing more payload than the datagram holds is answered rc 9 (ECORRUPT)."""
    frame = request(0, 0, {"d": "hello"}, op=2)
    frames = exchange(make_device(), frame[:-2])
    header, payload = reply(frames[0])
    assert payload == {"rc": 9}
    assert header[0] == 3  # write_rsp


@pytest.mark.parametrize(
    ("group", "command", "op"),
    [(63, 0, 0), (1, 2, 2), (1, 1, 0), (0, 5, 0), (0, 6, 2), (128, 2, 0), (0, 1, 0)],
    ids=["unknown-group", "img-file", "upload-read", "reset-read", "params-write", "mf-cmd-2", "echo-ctl"],
)
def test_missing_handlers_are_enotsup(group: int, command: int, op: int) -> None:
    """Unknown groups, commands and ops without a handler are answered rc 8."""
    assert body(exchange(make_device(), request(group, command, op=op))) == {"rc": 8}


@pytest.mark.parametrize("op", [1, 3, 4, 7])
def test_response_and_undefined_ops_are_enotsup(op: int) -> None:
    """A read_rsp, write_rsp or undefined op is answered rc 8 with op write_rsp."""
    header, payload = reply(exchange(make_device(), request(0, 0, {"d": "x"}, op=op))[0])
    assert payload == {"rc": 8}
    assert header[0] == 3


def test_reply_echoes_sequence_group_and_command_with_the_request_version() -> None:
    """Replies copy sequence, group and command, keep v1 for v1, and answer read with read_rsp."""
    header, payload = reply(exchange(make_device(), request(0, 6, version=0, sequence=200))[0])
    assert header == (1, 0, 0, header[3], 0, 200, 6)
    assert payload == {"buf_size": 2048, "buf_count": 4}


def test_replies_are_indefinite_length_maps() -> None:
    """Every reply payload is an indefinite-length CBOR map (0xbf ... 0xff), as zcbor writes it."""
    frame = exchange(make_device(), request(1, 0))[0]
    assert frame[8] == 0xBF
    assert frame[-1] == 0xFF
    assert b"\x9f" in frame  # the images array is indefinite too


def test_several_requests_in_one_datagram_get_one_reply_each_until_an_error() -> None:
    """Concatenated requests are answered in order; the first error ends the datagram."""
    echo = request(0, 0, {"d": "a"}, op=2, sequence=1)
    bad = request(77, 0, sequence=2)
    never = request(0, 0, {"d": "c"}, op=2, sequence=3)
    frames = exchange(make_device(), echo + bad + never)
    assert [reply(frame)[1] for frame in frames] == [{"r": "a"}, {"rc": 8}]


@pytest.mark.parametrize("op", [0, 2])
def test_echo_answers_reads_and_writes(op: int) -> None:
    """Echo returns `d` as `r`, for reads and writes alike, and accepts indefinite-length requests."""
    device = make_device()
    assert body(exchange(device, request(0, 0, {"d": "hello"}, op=op))) == {"r": "hello"}
    indefinite = b"\xbf\x61d\x7f\x62he\x63llo\xff\xff"
    assert body(exchange(device, request(0, 0, indefinite, op=op))) == {"r": "hello"}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff",
        b"\x82\x01\x02",
        b"\xa1\x61d\x01",
        b"\xa2\x61d\x61a\x61d\x61b",
        b"\xa1\x01\x02",
        b"\xbf\x61d",
    ],
    ids=["empty", "break", "array", "wrong-type", "duplicate-key", "int-key", "unterminated"],
)
def test_echo_rejects_undecodable_payloads_with_einval(payload: bytes) -> None:
    """A payload that is not a map with a text `d` is answered rc 3 (EINVAL)."""
    assert body(exchange(make_device(), request(0, 0, payload, op=2))) == {"rc": 3}


def test_echo_round_trips_invalid_utf8_byte_for_byte() -> None:
    """Zcbor never validates UTF-8, so the echoed text is the very bytes that were sent."""
    frame = exchange(make_device(), request(0, 0, b"\xa1\x61d\x62\xc3\x28", op=2))[0]
    assert frame.endswith(b"\x61r\x62\xc3\x28\xff")


def test_reply_larger_than_buf_size_is_emsgsize() -> None:
    """A reply that does not fit the device's net_buf is answered rc 7."""
    device = make_device(link=LinkProfile(buf_size_bytes=64))
    assert body(exchange(device, request(0, 0, {"d": "x" * 51}, op=2))) == {"rc": 7}


def test_oversize_requests_are_dropped() -> None:
    """A request larger than buf_size never reaches the SMP server."""
    device = make_device(link=LinkProfile(buf_size_bytes=64))
    assert exchange(device, request(0, 0, {"d": "x" * 80}, op=2)) == []
    assert device.counters.datagrams_dropped == 1


def test_v1_without_original_protocol_is_too_old() -> None:
    """A build without original-protocol support answers every v1 request rc 12."""
    device = make_device(options=FirmwareOptions(original_protocol=False))
    assert body(exchange(device, request(0, 6, version=0))) == {"rc": 12}


@pytest.mark.parametrize(
    ("query", "expected"),
    [(None, {"bootloader": "MCUboot"}), ("mode", {"mode": 3}), ("what", {"err": {"group": 0, "rc": 3}})],
)
def test_bootloader_info(query: str | None, expected: dict[str, object]) -> None:
    """Bootloader info names MCUboot, reports the mode, and has no answer for other queries."""
    fields = {} if query is None else {"query": query}
    assert body(exchange(make_device(), request(0, 8, fields))) == expected


def test_reset_answers_an_empty_map_then_reboots_after_the_delay() -> None:
    """Reset replies `{}` at once; the reboot follows after the firmware's reset delay."""
    device = make_device()
    assert body(exchange(device, request(0, 5, op=2), now_s=10.0)) == {}
    assert device.next_timer_s() == pytest.approx(10.01)
    device.poll(10.01)
    assert [boot.outcome for boot in device.boots] == ["normal"]
    assert exchange(device, request(0, 6), now_s=10.015) == []
    device.poll(10.03)
    assert body(exchange(device, request(0, 6), now_s=10.03)) == {"buf_size": 2048, "buf_count": 4}
