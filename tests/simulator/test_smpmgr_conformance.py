"""An independent client against the simulator: smpmgr, in its own virtual environment, over UDP.

smpmgr (Intercreate's CLI, pinned by the Makefile's `smpmgr` target) frames, sends and parses every
request with its own stack; only the group 128 models are ours, in `smpmgr_plugin/`, as the Memfault
SDK ships them for smpmgr. smpmgr cannot choose a UDP port, so each device listens on 1337 at its
own loopback address, as the simulator does by default. Replies are compared with protocol.md's
byte vectors (§2.6), taken from smpmgr's printout of the raw `smp_data`.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulator.device import BootOutcome, MemfaultMode
from simulator.fleet import DeviceSpec, Fleet
from simulator.image import build_mcuboot_image, parse_mcuboot_image
from simulator.server import FleetServer
from tests.simulator.frames import FAST_FIRMWARE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = Path(__file__).with_name("smpmgr_plugin")
BASE_HOST = "127.0.77.1"
"""Far from the addresses other tests use, since every device here is on port 1337."""
SERIAL = "65071B2E77FB7451"
HARDWARE = "nrf54l15dk"
COMMAND_TIMEOUT_S = 30.0
SMP_DATA = re.compile(r"smp_data=(b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")")
SEQUENCE = re.compile(r"header=Header\([^)]*sequence=(\d+)")


def smpmgr_path() -> Path:
    """The smpmgr executable of the separate environment (`make test` builds it)."""
    path = Path(os.environ.get("MCUFLEET_SMPMGR", ROOT / ".cache/smpmgr/bin/smpmgr"))
    if not path.is_file():
        pytest.fail(f"smpmgr not found at {path}: run `make smpmgr` (part of `make test`)")
    return path


async def smpmgr(host: str, *args: str) -> str:
    """Run one smpmgr command against `host`; its printout (the command must succeed)."""
    process = await asyncio.create_subprocess_exec(
        str(smpmgr_path()),
        "--ip",
        host,
        "--timeout",
        "3",
        f"--plugin-path={PLUGIN_DIR}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # One line per object, no colour codes: the printout is parsed.
        env={**os.environ, "COLUMNS": "4000", "NO_COLOR": "1", "TERM": "dumb"},
    )
    out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"smpmgr {' '.join(args)} failed:\n{text}\n{err.decode(errors='replace')}"
    return text


def raw_reply(printout: str) -> bytes:
    """The reply frame smpmgr received, exactly as it printed it."""
    match = SMP_DATA.search(printout)
    assert match is not None, printout
    data = ast.literal_eval(match.group(1))
    assert isinstance(data, bytes)
    return data


def sequence_of(printout: str) -> int:
    """The sequence number smpmgr used (protocol.md's vectors use 1; smpmgr counts per process)."""
    match = SEQUENCE.search(printout)
    assert match is not None, printout
    return int(match.group(1))


def tstr(text: str) -> bytes:
    """A short CBOR text string (major type 3, length < 24), written out by hand."""
    encoded = text.encode()
    assert len(encoded) < 24
    return bytes([0x60 + len(encoded)]) + encoded


def device(serial: str, mode: MemfaultMode = MemfaultMode.NORMAL) -> DeviceSpec:
    """A device with protocol.md's identity (its version must be an MCUboot version: 0.0.1)."""
    return DeviceSpec(
        serial,
        hardware_version=HARDWARE,
        image_version="0.0.1",
        project_key="dummy-key",
        memfault_mode=mode,
        firmware=FAST_FIRMWARE,
    )


@pytest.fixture
async def devices() -> AsyncIterator[FleetServer]:
    """Four devices on 127.0.77.1-4, port 1337: normal, no project key, access denied, no group."""
    fleet = Fleet(
        (
            device(SERIAL),
            device("SIM-NOKEY", MemfaultMode.NO_PROJECT_KEY),
            device("SIM-DENIED", MemfaultMode.ACCESS_DENIED),
            device("SIM-ABSENT", MemfaultMode.GROUP_ABSENT),
        )
    )
    async with FleetServer(fleet, base_host=BASE_HOST) as server:
        yield server


def host_of(server: FleetServer, serial: str) -> str:
    """The loopback address a device listens on (always port 1337 here)."""
    host, port = server.endpoints[serial]
    assert port == 1337
    return host


async def test_memfault_group_replies_match_the_sdk_bytes(devices: FleetServer) -> None:
    """Device info and project key, read by smpmgr, are protocol.md's frames byte for byte."""
    printout = await smpmgr(host_of(devices, SERIAL), "memfault", "device-info")
    payload = (
        b"\xbf"
        + tstr("device_serial")
        + tstr(SERIAL)
        + tstr("hardware_version")
        + tstr(HARDWARE)
        + tstr("software_type")
        + tstr("app")
        + tstr("current_version")
        + tstr("0.0.1")
        + b"\xff"
    )
    header = bytes([0x09, 0x00, 0x00, len(payload), 0x00, 0x80, sequence_of(printout), 0x00])
    assert raw_reply(printout) == header + payload
    assert f"device_serial='{SERIAL}'" in printout and "current_version='0.0.1'" in printout

    printout = await smpmgr(host_of(devices, SERIAL), "memfault", "project-key")
    expected = f"09 00 00 18 00 80 {sequence_of(printout):02x} 01 bf 6b"
    assert raw_reply(printout) == bytes.fromhex(expected) + b"project_key\x69dummy-key\xff"


async def test_memfault_group_errors_match_the_sdk_shapes(devices: FleetServer) -> None:
    """No key is a v2 group error 2, access denied a plain rc 11, an absent group rc 8 (ENOTSUP)."""
    printout = await smpmgr(host_of(devices, "SIM-NOKEY"), "memfault", "project-key")
    sequence = sequence_of(printout)
    assert raw_reply(printout) == bytes.fromhex(
        f"09 00 00 14 00 80 {sequence:02x} 01 bf 63 65 72 72 bf 65 67 72 6f 75 70 18 80 62 72 63 02 ff ff"
    )
    assert "MemfaultErrorV2" in printout and "NO_PROJECT_KEY" in printout

    printout = await smpmgr(host_of(devices, "SIM-DENIED"), "memfault", "device-info")
    sequence = sequence_of(printout)
    assert raw_reply(printout) == bytes.fromhex(f"09 00 00 06 00 80 {sequence:02x} 00 bf 62 72 63 0b ff")
    assert "MemfaultErrorV1" in printout and "EACCESSDENIED" in printout

    printout = await smpmgr(host_of(devices, "SIM-ABSENT"), "memfault", "device-info")
    assert "ENOTSUP" in printout


async def test_os_group_echo_and_image_state_read(devices: FleetServer) -> None:
    """Built-in OS and image commands: echo round-trips; slot 0 is the confirmed active image."""
    host = host_of(devices, SERIAL)
    printout = await smpmgr(host, "os", "echo", "hello mcufleet")
    assert "r='hello mcufleet'" in printout
    printout = await smpmgr(host, "image", "state-read")
    running = next(state for state in devices.device(SERIAL).image_states() if state.active)
    assert f"hash=HashBytes('{running.hash_sha256.hex().upper()}')" in printout
    assert "active=True" in printout and "confirmed=True" in printout


async def read_states_once_back(host: str) -> str:
    """`image state-read`, retried while the device reboots (it is silent then)."""
    for _ in range(20):
        try:
            return await smpmgr(host, "image", "state-read")
        except AssertionError:
            await asyncio.sleep(0.2)
    return await smpmgr(host, "image", "state-read")


async def test_full_update_and_revert_driven_by_smpmgr(devices: FleetServer, tmp_path: Path) -> None:
    """Upload, test, reset, confirm: then a second image that is never confirmed reverts."""
    host = host_of(devices, SERIAL)
    simulated = devices.device(SERIAL)
    new = tmp_path / "app-0.1.0.bin"
    new.write_bytes(build_mcuboot_image("0.1.0", payload_size=30_000, seed=5))
    new_hash = parse_mcuboot_image(new.read_bytes()).hash_sha256.hex().upper()

    await smpmgr(host, "image", "upload", str(new))
    await smpmgr(host, "image", "state-write", new_hash)
    await smpmgr(host, "os", "reset")
    printout = await read_states_once_back(host)
    assert re.search(rf"slot=0, version='0\.1\.0'.*hash=HashBytes\('{new_hash}'\).*confirmed=False", printout)
    await smpmgr(host, "image", "state-write", "--confirm")
    running = next(state for state in simulated.image_states() if state.active)
    assert running.version == "0.1.0" and running.confirmed
    assert "current_version='0.1.0'" in await smpmgr(host, "memfault", "device-info")

    # A test boot that nobody confirms: the next reset brings 0.1.0 back.
    newer = tmp_path / "app-0.2.0.bin"
    newer.write_bytes(build_mcuboot_image("0.2.0", payload_size=30_000, seed=6))
    await smpmgr(host, "image", "upload", str(newer))
    await smpmgr(host, "image", "state-write", parse_mcuboot_image(newer.read_bytes()).hash_sha256.hex())
    await smpmgr(host, "os", "reset")
    await read_states_once_back(host)
    await smpmgr(host, "os", "reset")
    await read_states_once_back(host)
    running = next(state for state in simulated.image_states() if state.active)
    assert running.version == "0.1.0" and running.confirmed
    assert [boot.outcome for boot in simulated.boots][-2:] == [BootOutcome.SWAPPED, BootOutcome.REVERTED]
