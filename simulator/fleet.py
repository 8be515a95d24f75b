"""Fleet descriptions: which simulated devices exist, from a TOML file or generated from a seed.

A fleet file (every key optional except each device's `serial`)::

    seed = 7                               # link loss randomness
    [defaults]                             # any device key, applied to every device
    hardware_version = "nrf54l15dk"
    image_version = "1.0.0"
    [profiles.slow]                        # link profiles, besides the built-in ones
    latency_s = 0.02
    bandwidth_bytes_per_s = 20000
    loss_rate = 0.01
    buf_size_bytes = 2475
    buf_count = 4
    [[devices]]
    serial = "SIM-0001"
    software_type = "app"
    project_key = "sim-project-key"
    link = "slow"                          # a profile name
    memfault = "normal"                    # or no_project_key, access_denied, group_absent, empty_strings
    image_payload_size_bytes = 4096
    [devices.faults]                       # FaultPlan fields
    drop_responses = [3]
    delay_responses_s = { "2" = 1.5 }
    [devices.firmware]                     # FirmwareOptions fields
    reset_delay_s = 0.1

Bad input raises `FleetError` naming the offending key, e.g. `devices[2].faults.drop_responses`.
"""

import dataclasses
import functools
import random
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from simulator.device import DeviceIdentity, FaultPlan, FirmwareOptions, LinkProfile, MemfaultMode, SimDevice
from simulator.device.os_group import BootloaderMode
from simulator.errors import FleetError, ImageFormatError
from simulator.image import ImageVersion, build_mcuboot_image

DEFAULT_HARDWARE_VERSION: Final = "nrf54l15dk"
DEFAULT_SOFTWARE_TYPE: Final = "app"
DEFAULT_IMAGE_VERSION: Final = "1.0.0"
DEFAULT_PROJECT_KEY: Final = "sim-project-key"
DEFAULT_PAYLOAD_SIZE_BYTES: Final = 4096

BUILTIN_PROFILES: Final[Mapping[str, LinkProfile]] = {
    "loopback": LinkProfile(name="loopback"),
    "lan": LinkProfile(name="lan", latency_s=0.001),
    "ble": LinkProfile(
        name="ble", latency_s=0.015, bandwidth_bytes_per_s=20_000.0, buf_size_bytes=2475, buf_count=4
    ),
    "lossy": LinkProfile(name="lossy", latency_s=0.01, loss_rate=0.05),
}
_GENERATED_HARDWARE: Final = ("nrf52840dk", "nrf5340dk", "nrf54l15dk")
_GENERATED_VERSIONS: Final = ("1.0.0", "1.0.0", "1.0.1", "1.1.0")


@functools.lru_cache(maxsize=64)
def firmware_image(version: str, payload_size_bytes: int = DEFAULT_PAYLOAD_SIZE_BYTES) -> bytes:
    """The MCUboot image a fleet device of `version` boots with (shared between devices)."""
    return build_mcuboot_image(version, payload_size=payload_size_bytes, seed=zlib.crc32(version.encode()))


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One simulated device, as described."""

    serial: str
    hardware_version: str = DEFAULT_HARDWARE_VERSION
    software_type: str = DEFAULT_SOFTWARE_TYPE
    image_version: str = DEFAULT_IMAGE_VERSION
    project_key: str = DEFAULT_PROJECT_KEY
    link: LinkProfile = field(default_factory=LinkProfile)
    faults: FaultPlan = field(default_factory=FaultPlan)
    memfault_mode: MemfaultMode = MemfaultMode.NORMAL
    firmware: FirmwareOptions = field(default_factory=FirmwareOptions)
    image_payload_size_bytes: int = DEFAULT_PAYLOAD_SIZE_BYTES

    def build(self, *, seed: int = 0) -> SimDevice:
        """A fresh simulated device running `image_version` (confirmed), slot 1 empty."""
        return SimDevice(
            DeviceIdentity(self.serial, self.hardware_version, self.software_type, self.project_key),
            firmware_image(self.image_version, self.image_payload_size_bytes),
            link=self.link,
            faults=self.faults,
            options=self.firmware,
            memfault_mode=self.memfault_mode,
            seed=zlib.crc32(f"{seed}:{self.serial}".encode()),
        )


@dataclass(frozen=True, slots=True)
class Fleet:
    """A set of devices with unique serials."""

    devices: tuple[DeviceSpec, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for index, spec in enumerate(self.devices):
            if spec.serial in seen:
                raise FleetError(f"devices[{index}].serial: {spec.serial!r} appears twice")
            seen.add(spec.serial)

    def build_devices(self) -> list[SimDevice]:
        """One fresh `SimDevice` per spec, in order."""
        return [spec.build(seed=self.seed) for spec in self.devices]


def generate_fleet(n: int, seed: int, *, link: str = "loopback") -> Fleet:
    """`n` devices with random (but `seed`-determined) serials, hardware and initial versions."""
    if n < 0:
        raise FleetError(f"devices: {n} is negative")
    if link not in BUILTIN_PROFILES:
        raise FleetError(f"link: unknown profile {link!r}")
    rng = random.Random(seed)
    serials: list[str] = []
    while len(serials) < n:
        serial = f"{rng.getrandbits(64):016X}"
        if serial not in serials:
            serials.append(serial)
    specs = tuple(
        DeviceSpec(
            serial=serial,
            hardware_version=rng.choice(_GENERATED_HARDWARE),
            image_version=rng.choice(_GENERATED_VERSIONS),
            link=BUILTIN_PROFILES[link],
        )
        for serial in serials
    )
    return Fleet(specs, seed=seed)


def load_fleet(path: Path) -> Fleet:
    """Read a fleet file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FleetError(f"{path}: cannot read: {error}") from error
    return parse_fleet(text, source=str(path))


def parse_fleet(text: str, *, source: str = "<fleet>") -> Fleet:
    """Parse a fleet description (TOML)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise FleetError(f"{source}: not TOML: {error}") from error
    root = _Table(document, "")
    root.only({"seed", "defaults", "profiles", "devices"})
    profiles = dict(BUILTIN_PROFILES)
    for name, table in root.tables("profiles").items():
        profiles[name] = _profile(name, table)
    defaults = root.table("defaults")
    entries = root.array_of_tables("devices")
    specs = tuple(_device(entry, defaults, profiles) for entry in entries)
    return Fleet(specs, seed=root.integer("seed", 0))


_DEVICE_KEYS: Final = frozenset(
    {"serial", "hardware_version", "software_type", "image_version", "project_key", "link", "memfault"}
    | {"image_payload_size_bytes", "faults", "firmware"}
)


def _device(entry: "_Table", defaults: "_Table", profiles: Mapping[str, LinkProfile]) -> DeviceSpec:
    entry.only(_DEVICE_KEYS)
    defaults.only(_DEVICE_KEYS - {"serial"})
    merged = _Table({**defaults.data, **entry.data}, entry.path)
    link_name = merged.text("link", "loopback")
    if link_name not in profiles:
        raise FleetError(f"{merged.key('link')}: unknown profile {link_name!r}")
    mode_name = merged.text("memfault", MemfaultMode.NORMAL.value)
    if mode_name not in {mode.value for mode in MemfaultMode}:
        raise FleetError(f"{merged.key('memfault')}: unknown mode {mode_name!r}")
    version = merged.text("image_version", DEFAULT_IMAGE_VERSION)
    try:
        ImageVersion.parse(version)
    except ImageFormatError as error:
        raise FleetError(f"{merged.key('image_version')}: {error}") from error
    serial = merged.text("serial", None)
    return DeviceSpec(
        serial=serial,
        hardware_version=merged.text("hardware_version", DEFAULT_HARDWARE_VERSION),
        software_type=merged.text("software_type", DEFAULT_SOFTWARE_TYPE),
        image_version=version,
        project_key=merged.text("project_key", DEFAULT_PROJECT_KEY),
        link=profiles[link_name],
        faults=_faults(merged.table("faults")),
        memfault_mode=MemfaultMode(mode_name),
        firmware=_firmware(merged.table("firmware")),
        image_payload_size_bytes=merged.integer("image_payload_size_bytes", DEFAULT_PAYLOAD_SIZE_BYTES),
    )


def _profile(name: str, table: "_Table") -> LinkProfile:
    table.only({"latency_s", "bandwidth_bytes_per_s", "loss_rate", "buf_size_bytes", "buf_count"})
    bandwidth = table.number("bandwidth_bytes_per_s", 0.0)
    loss_rate = table.number("loss_rate", 0.0)
    if not 0.0 <= loss_rate <= 1.0:
        raise FleetError(f"{table.key('loss_rate')}: {loss_rate} is not between 0 and 1")
    return LinkProfile(
        name=name,
        latency_s=table.number("latency_s", 0.0),
        bandwidth_bytes_per_s=bandwidth or None,
        loss_rate=loss_rate,
        buf_size_bytes=table.integer("buf_size_bytes", 2048, minimum=9),
        buf_count=table.integer("buf_count", 4, minimum=1),
    )


def _faults(table: "_Table") -> FaultPlan:
    table.only({f.name for f in dataclasses.fields(FaultPlan)})
    delays = {}
    for number, delay in table.table("delay_responses_s").data.items():
        key = table.key(f"delay_responses_s.{number}")
        if not number.isdigit() or not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            raise FleetError(f"{key}: expected a reply number mapped to seconds >= 0")
        delays[int(number)] = float(delay)
    extra = table.table("extra_fields").data
    for name, value in extra.items():
        if not isinstance(value, str | int | bool):
            raise FleetError(f"{table.key('extra_fields.' + name)}: only strings, integers and booleans")
    silent_at = table.data.get("silent_at_upload_offset")
    reboot_at = table.data.get("reboot_at_upload_offset")
    return FaultPlan(
        drop_responses=frozenset(table.integers("drop_responses")),
        delay_responses_s=delays,
        silent_at_upload_offset=None if silent_at is None else table.integer("silent_at_upload_offset", 0),
        silent_duration_s=table.number("silent_duration_s", 0.0),
        reboot_at_upload_offset=None if reboot_at is None else table.integer("reboot_at_upload_offset", 0),
        first_chunk_erase_delay_s=table.number("first_chunk_erase_delay_s", 0.0),
        legacy_rc=table.boolean("legacy_rc", default=False),
        extra_fields=dict(extra),
        bad_build_versions=frozenset(table.texts("bad_build_versions")),
    )


def _firmware(table: "_Table") -> FirmwareOptions:
    defaults = FirmwareOptions()
    values: dict[str, Any] = {}
    for option in dataclasses.fields(FirmwareOptions):
        if option.name not in table.data:
            continue
        default = getattr(defaults, option.name)
        if option.name == "bootloader_mode":
            mode = table.integer(option.name, 0)
            if mode not in {m.value for m in BootloaderMode}:
                raise FleetError(f"{table.key(option.name)}: unknown bootloader mode {mode}")
            values[option.name] = BootloaderMode(mode)
        elif isinstance(default, bool):
            values[option.name] = table.boolean(option.name, default=default)
        elif isinstance(default, int):
            values[option.name] = table.integer(option.name, default, minimum=1)
        elif default is None:
            values[option.name] = table.number(option.name, 0.0) or None
        else:
            values[option.name] = table.number(option.name, default)
    table.only({option.name for option in dataclasses.fields(FirmwareOptions)})
    return dataclasses.replace(defaults, **values)


class _Table:
    """A TOML table with its dotted path, and typed getters that name the offending key."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = dict(data)
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def only(self, allowed: set[str] | frozenset[str]) -> None:
        for name in self.data:
            if name not in allowed:
                raise FleetError(f"{self.key(name)}: unknown key")

    def _get(self, name: str, kinds: tuple[type, ...], what: str) -> Any:
        value = self.data[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise FleetError(f"{self.key(name)}: expected {what}, got {value!r}")
        return value

    def text(self, name: str, default: str | None) -> str:
        if name not in self.data:
            if default is None:
                raise FleetError(f"{self.key(name)}: missing")
            return default
        value: str = self._get(name, (str,), "a string")
        if not value and name == "serial":
            raise FleetError(f"{self.key(name)}: empty")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value: int = self._get(name, (int,), "an integer") if name in self.data else default
        if value < minimum:
            raise FleetError(f"{self.key(name)}: {value} is below {minimum}")
        return value

    def number(self, name: str, default: float) -> float:
        value = float(self._get(name, (int, float), "a number")) if name in self.data else default
        if value < 0:
            raise FleetError(f"{self.key(name)}: {value} is negative")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        return bool(self._get(name, (bool,), "true or false")) if name in self.data else default

    def integers(self, name: str) -> list[int]:
        values = self._get(name, (list,), "a list of integers") if name in self.data else []
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise FleetError(f"{self.key(name)}: expected positive integers, got {values!r}")
        return list(values)

    def texts(self, name: str) -> list[str]:
        values = self._get(name, (list,), "a list of strings") if name in self.data else []
        if not all(isinstance(v, str) for v in values):
            raise FleetError(f"{self.key(name)}: expected strings, got {values!r}")
        return list(values)

    def table(self, name: str) -> "_Table":
        value = self._get(name, (dict,), "a table") if name in self.data else {}
        return _Table(value, self.key(name))

    def tables(self, name: str) -> dict[str, "_Table"]:
        parent = self.table(name)
        return {key: parent.table(key) for key in parent.data}

    def array_of_tables(self, name: str) -> list["_Table"]:
        values = self._get(name, (list,), "an array of tables") if name in self.data else []
        tables = []
        for index, value in enumerate(values):
            if not isinstance(value, dict):
                raise FleetError(f"{self.key(name)}[{index}]: expected a table")
            tables.append(_Table(value, f"{self.key(name)}[{index}]"))
        return tables
