"""Where the real Zephyr builds are and what their manifest says about each.

`make firmware-deps` unpacks smpclient 7.3.0's sdist into `.cache/smpclient-7.3.0` (checked against
its pinned sha256 and the fixtures' SHA256SUMS) and `make test` names it in MCUFLEET_FIRMWARE_DIR. A
missing fixture is an error that says how to get it, never a skip: these tests are the only proof
that mcufleet works against firmware it did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

DIR_VARIABLE: Final = "MCUFLEET_FIRMWARE_DIR"
DEFAULT_DIR: Final = Path(__file__).resolve().parents[2] / ".cache" / "smpclient-7.3.0"


class FirmwareMissing(RuntimeError):
    """A real-firmware fixture is absent or does not match SHA256SUMS; the message says what to run."""


@dataclass(frozen=True, slots=True)
class FirmwareBuild:
    """One build from the fixtures' manifest.json (the fields our tests use)."""

    artifact: Path
    target: str
    transport: str
    buf_size: int
    buf_count: int
    mcuboot: bool
    groups: tuple[str, ...]
    line_length_max: int | None
    qemu_cmd: str | None


def sdist_dir() -> Path:
    """The unpacked smpclient 7.3.0 sdist (its tests/integration is run against the simulator too)."""
    root = Path(os.environ.get(DIR_VARIABLE, DEFAULT_DIR))
    if not (root / ".checked").exists():
        raise FirmwareMissing(f"no checked real-firmware fixtures under {root}: run `make firmware-deps`")
    return root


def fixtures_dir() -> Path:
    """The folder holding the Zephyr builds, manifest.json and SHA256SUMS."""
    return sdist_dir() / "tests" / "fixtures" / "smp-server"


@cache
def _sums() -> dict[str, str]:
    lines = (fixtures_dir() / "SHA256SUMS").read_text().splitlines()
    return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in lines if line)}


def fixture(name: str) -> Path:
    """The path of fixture file `name`, checked against SHA256SUMS before it is used."""
    path = fixtures_dir() / name
    expected = _sums().get(name)
    if expected is None or not path.exists():
        raise FirmwareMissing(f"fixture {name} is not among the checked fixtures: run `make firmware-deps`")
    if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        raise FirmwareMissing(f"fixture {name} does not match SHA256SUMS: run `make firmware-deps` again")
    return path


@cache
def build(artifact: str) -> FirmwareBuild:
    """The manifest entry for `artifact` (for example `..._native_sim_udp.exe`), its file checked."""
    entries = json.loads((fixtures_dir() / "manifest.json").read_text())
    for entry in entries:
        if entry["artifact"] == artifact:
            return FirmwareBuild(
                artifact=fixture(artifact),
                target=entry["target"],
                transport=entry["transport"],
                buf_size=int(entry["buf_size"]),
                buf_count=int(entry["buf_count"]),
                mcuboot=bool(entry["mcuboot"]),
                groups=tuple(entry["groups"]),
                line_length_max=entry.get("line_length_max"),
                qemu_cmd=entry.get("qemu_cmd"),
            )
    raise FirmwareMissing(f"{artifact} is not in the fixtures' manifest.json")
