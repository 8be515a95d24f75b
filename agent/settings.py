"""The agent's configuration: `/etc/mcufleet/agent.toml` plus `MCUFLEET_AGENT__...` overrides.

Every table forbids unknown keys, so a typo stops the agent at start with the key named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from agent.smp.upload import DEFAULT_GROW_AFTER, DEFAULT_MAX_WINDOW, DEFAULT_PROBE_AFTER, WindowLimits
from service_runtime.settings import LogConfig, MetricsConfig, MqttConfig, Port, PositiveSeconds

__all__ = [
    "AgentSettings",
    "BleConfig",
    "DiscoveryConfig",
    "DownloadConfig",
    "JobsConfig",
    "LogConfig",
    "MetricsConfig",
    "MqttConfig",
    "SerialDevice",
    "UdpDevice",
    "WindowConfig",
]


class DiscoveryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How often devices are probed and when an unheard device counts as lost."""

    refresh_interval_s: PositiveSeconds = 300.0
    lost_after_s: PositiveSeconds = 900.0
    retry_interval_s: PositiveSeconds = 15.0
    """How soon an unreachable device is probed again."""
    smp_timeout_s: PositiveSeconds = 2.5
    probe_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8


class UdpDevice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A device reached with SMP over UDP (also how the agent reaches simulated devices)."""

    host: str
    port: Port = 1337


class SerialDevice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A device reached with SMP over a serial line (UART, USB CDC ACM, or a serial server).

    Identity: a device with Memfault group 128 is known by the serial it reports. One without
    the group (rc 8) is reported with `memfault = "no_group"` under `serial` when it is set here,
    else as `serial:<port name>` (`serial:ttyACM0`, `serial:127.0.0.1:4000`); an OTA command
    addresses it by that same id.
    """

    url: str
    """A device path (`/dev/serial/by-id/...`, `/dev/ttyACM0`) or a pyserial URL (`socket://host:port`)."""
    serial: Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9][A-Za-z0-9._:@-]*)?$", max_length=128)] = ""
    """The id to report when the device has no group 128 (default `serial:<port name>`)."""
    baudrate: Annotated[int, msgspec.Meta(ge=300, le=12_000_000)] = 115_200
    line_length: Annotated[int, msgspec.Meta(ge=8, le=4096)] = 128
    """The longest console line the device accepts (`CONFIG_UART_MCUMGR_RX_BUF_SIZE`)."""
    buf_size: Annotated[int, msgspec.Meta(ge=16, le=65_535)] | None = None
    """The device's SMP buffer, for firmware that does not report its MCUmgr parameters."""


class BleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bluetooth LE discovery (BlueZ through bleak)."""

    enabled: bool = False
    adapters: tuple[str, ...] = ("hci0",)
    max_links_per_adapter: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    name_prefix: str = ""
    """Fallback filter for devices that do not advertise the SMP service UUID."""
    scan_window_s: PositiveSeconds = 10.0
    """How long each scan lasts."""
    scan_interval_s: PositiveSeconds = 30.0
    """A scan starts every this many seconds (at most `scan_window_s`: scan continuously). Between
    scans the radio is free for connections (and, on a Raspberry Pi, for the Wi-Fi it shares an
    antenna with); a link waiting for its device's advertisement turns scanning on at once."""
    passive_scan: bool = False
    """Listen without scan requests (BlueZ >= 5.56 started with `--experimental`, Linux >= 5.10);
    names and UUIDs sent only in scan responses are then not seen."""
    connect_timeout_s: PositiveSeconds = 20.0
    """Longest wait for a device to advertise again and for a connection to be established."""
    pair_when_access_denied: bool = False
    """Pair (and bond) with a device only once it answers rc 11, MGMT_ERR_EACCESSDENIED."""
    reassembly: Literal["params", "always", "never"] = "params"
    """Whether devices reassemble a frame that spans ATT writes (CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY):
    `params`: those that answer the MCUmgr parameters read do, up to their `buf_size` (smpclient's
    rule); `never`: every frame fits one write (MTU - 3); `always`: split up to `buf_size`."""

    def __post_init__(self) -> None:
        if self.scan_interval_s < self.scan_window_s:
            raise ValueError("ble.scan_interval_s must be at least ble.scan_window_s")


WindowSize = Annotated[int, msgspec.Meta(ge=1, le=32)]


class WindowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Upload requests in flight (`[jobs.window]`): the window follows the device (AIMD).

    It starts at `initial` (default: the device's `buf_count - 1`, within `minimum`..`maximum`),
    halves when a request is lost or skipped by the device, and grows by one after `grow_after`
    clean replies, never above where it started; a size that lost a request is tried again only
    after `probe_after` clean replies (agent/smp/upload.py `WindowControl`).

    Defaults are omitted when the settings are written out: TOML has no null for `initial`.
    """

    initial: WindowSize | None = None
    minimum: WindowSize = 1
    maximum: WindowSize = DEFAULT_MAX_WINDOW
    grow_after: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = DEFAULT_GROW_AFTER
    probe_after: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = DEFAULT_PROBE_AFTER

    def __post_init__(self) -> None:
        """Reject limits that contradict each other (msgspec reports the ValueError with the key)."""
        self.limits()

    def limits(self) -> WindowLimits:
        """The window limits the uploader takes.

        Raises:
            ValueError: minimum above maximum, or initial outside them.
        """
        return WindowLimits(
            initial=self.initial,
            minimum=self.minimum,
            maximum=self.maximum,
            grow_after=self.grow_after,
            probe_after=self.probe_after,
        )


class JobsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """OTA execution limits."""

    concurrency: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    """Jobs run at a time."""
    upload_slots: Annotated[int, msgspec.Meta(ge=1, le=32)] | None = None
    """Uploads at a time: the radio's share (default: `concurrency`). With more jobs than upload
    slots, one device's download, test boot, reboot and confirm overlap another's upload, so the
    radio never idles while a device reboots."""
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64
    first_chunk_timeout_s: PositiveSeconds = 40.0
    chunk_timeout_s: PositiveSeconds = 5.0
    reboot_timeout_s: PositiveSeconds = 120.0
    keep_finished_days: PositiveSeconds = 30.0
    window: WindowConfig = WindowConfig()


class DownloadConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which artifact URLs may be fetched, and the on-disk cache."""

    allowed_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    allow_private_addresses: bool = False
    allowed_private_networks: tuple[str, ...] = ()
    """Private networks (CIDR, e.g. a site mirror's `10.1.2.0/24`) allowed despite the rule above."""
    max_artifact_bytes: Annotated[int, msgspec.Meta(ge=1)] = 16 * 1024 * 1024
    cache_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 256 * 1024 * 1024
    connect_timeout_s: PositiveSeconds = 10.0
    read_timeout_s: PositiveSeconds = 60.0
    proxy_url: str = ""
    """HTTP(S) proxy for downloads; "" (the default) connects directly. Proxy environment variables
    are never read: a proxy resolves names itself, so it must enforce its own egress policy."""


class AgentSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the agent reads from its config."""

    gateway_id: str
    site: str = ""
    state_dir: str = "/var/lib/mcufleet/agent"
    mqtt: MqttConfig = MqttConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    udp_devices: tuple[UdpDevice, ...] = ()
    serial_devices: tuple[SerialDevice, ...] = ()
    ble: BleConfig = BleConfig()
    jobs: JobsConfig = JobsConfig()
    downloads: DownloadConfig = DownloadConfig()
    delta_capable_hardware: tuple[str, ...] = ()
    """Hardware versions whose bootloader applies Memfault delta payloads (SMP cannot tell): their
    reports declare `accepts_delta`, so the controller may send them a patch instead of an image."""

    @property
    def state_path(self) -> Path:
        """The directory holding the journal, the epoch file and the artifact cache."""
        return Path(self.state_dir)
