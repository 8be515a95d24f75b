"""SMP console framing: the smp library's encoding, and a line decoder that survives noise and garbage."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.link.device_link import configured_serial_link, serial_identity
from agent.link.transport.serial import (
    MAX_LINE_BYTES,
    SERIAL_FRAMING_BYTES,
    ConsoleFrameDecoder,
    SerialTransport,
    encode_lines,
    port_name,
)
from agent.settings import AgentSettings, SerialDevice
from service_runtime.config import load_config
from service_runtime.errors import ConfigError

HELLO_LINE = b"\x06\tAA9IZWxsbywgd29ybGQhet4=\n"
"""`smp.packet.encode(b"Hello, world!")` as its documentation prints it."""


def test_a_frame_is_encoded_as_the_smp_library_documents() -> None:
    """Golden bytes: start delimiter, base64 of length + frame + CRC16, newline."""
    assert encode_lines(b"Hello, world!") == HELLO_LINE
    assert ConsoleFrameDecoder().feed(HELLO_LINE) == [b"Hello, world!"]


def test_long_frames_are_cut_into_lines_no_longer_than_the_device_accepts() -> None:
    """Every line fits `line_length`; the first starts with 06 09, the others with 04 14."""
    lines = encode_lines(bytes(range(256)) * 2, line_length=128).split(b"\n")[:-1]
    assert len(lines) > 1 and all(len(line) + 1 <= 128 for line in lines)
    assert lines[0][:2] == b"\x06\x09" and all(line[:2] == b"\x04\x14" for line in lines[1:])


@given(
    frames=st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=5),
    noise=st.lists(st.text(alphabet="abcdefghij <>:[]0123456789", max_size=40), min_size=6, max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=40),
)
def test_frames_come_back_whole_through_console_noise_and_any_split(
    frames: list[bytes], noise: list[str], cuts: list[int]
) -> None:
    """Log lines between frames and arbitrary read boundaries never change or lose a frame."""
    stream = b"".join(noise[i].encode() + b"\r\n" + encode_lines(f) for i, f in enumerate(frames))
    decoder = ConsoleFrameDecoder()
    received: list[bytes] = []
    position = 0
    for cut in cuts:
        received += decoder.feed(stream[position : position + cut])
        position += cut
    received += decoder.feed(stream[position:])
    assert received == frames
    assert decoder.counters.bad_frames == 0


def _line(payload: bytes, start: bool = True) -> bytes:
    return (b"\x06\x09" if start else b"\x04\x14") + base64.b64encode(payload) + b"\n"


@pytest.mark.parametrize(
    "garbage",
    [
        _line(struct.pack("!H", 7) + b"hello" + b"\x00\x00"),  # wrong CRC
        b"\x06\x09not base64!!\n",  # bad base64
        _line(b"\x00"),  # too short for a length
        _line(b"tail", start=False),  # a continuation with no frame started
        b"\x06\x09" + b"A" * (MAX_LINE_BYTES + 10),  # a line that never ends
    ],
)
def test_garbage_is_counted_and_the_next_frame_still_decodes(garbage: bytes) -> None:
    """A hostile or corrupted line is dropped (counted), never raised, and the stream recovers."""
    decoder = ConsoleFrameDecoder()
    assert decoder.feed(garbage) == []
    assert decoder.feed(b"\n" + encode_lines(b"after")) == [b"after"]
    assert decoder.counters.bad_frames + decoder.counters.console_lines >= 1


def test_a_new_start_abandons_a_half_received_frame() -> None:
    """A frame cut off mid-way (the device rebooted) is dropped when the next one starts."""
    first = encode_lines(bytes(300)).split(b"\n")[0] + b"\n"
    decoder = ConsoleFrameDecoder()
    assert decoder.feed(first + encode_lines(b"next")) == [b"next"]
    assert decoder.counters.bad_frames == 1


def test_frames_are_capped_at_buf_size_less_the_serial_framing() -> None:
    """The length and CRC share the device's buffer: frames are at most buf_size - 4 bytes."""
    transport = SerialTransport("socket://127.0.0.1:9")
    transport.set_frame_limit(384)
    assert SERIAL_FRAMING_BYTES == 4 and transport.max_frame_bytes == 380
    fixed = SerialTransport("socket://127.0.0.1:9", buf_size_bytes=256)
    fixed.set_frame_limit(2048)
    assert fixed.max_frame_bytes == 252


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/dev/ttyACM0", "ttyACM0"),
        ("/dev/serial/by-id/usb-ZEPHYR_board_0123-if00", "usb-ZEPHYR_board_0123-if00"),
        ("socket://127.0.0.1:4000", "127.0.0.1:4000"),
        ("rfc2217://ser2net.local:7000", "ser2net.local:7000"),
    ],
)
def test_a_device_without_group_128_is_named_after_its_port(url: str, name: str) -> None:
    """The default identity is `serial:<port name>`; a configured serial wins over it."""
    assert port_name(url) == name
    assert serial_identity(SerialDevice(url=url)) == f"serial:{name}"
    assert serial_identity(SerialDevice(url=url, serial="LAB-7")) == "LAB-7"
    assert configured_serial_link(SerialDevice(url=url)).identity == f"serial:{name}"


def test_serial_devices_are_read_from_the_config_and_typos_refused(tmp_path: Path) -> None:
    """`[[serial_devices]]` entries parse with their options; an unknown key names itself."""
    path = tmp_path / "agent.toml"
    path.write_text(
        'gateway_id = "gw-1"\n[[serial_devices]]\nurl = "/dev/ttyACM0"\nbaudrate = 1000000\n'
        '[[serial_devices]]\nurl = "socket://10.0.0.5:4000"\nserial = "BENCH-2"\nbuf_size = 512\n'
    )
    settings = load_config(AgentSettings, path, env_prefix="MCUFLEET_AGENT", environ={})
    assert [d.url for d in settings.serial_devices] == ["/dev/ttyACM0", "socket://10.0.0.5:4000"]
    assert settings.serial_devices[0].baudrate == 1_000_000 and settings.serial_devices[1].buf_size == 512
    path.write_text('gateway_id = "gw-1"\n[[serial_devices]]\nurl = "/dev/ttyACM0"\nbaud = 9600\n')
    with pytest.raises(ConfigError, match="baud"):
        load_config(AgentSettings, path, env_prefix="MCUFLEET_AGENT", environ={})
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"url": "/dev/ttyACM0", "line_length": 2}, SerialDevice)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"url": "/dev/ttyACM0", "serial": "has space/slash"}, SerialDevice)
    assert serial_identity(SerialDevice(url="/dev/tty weird#1")) == "serial:tty-weird-1"
