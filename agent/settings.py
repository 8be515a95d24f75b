"""The agent's configuration: `/etc/mcufleet/agent.toml` plus `MCUFLEET_AGENT__...` overrides.

Every table forbids unknown keys, so a typo stops the agent at start with the key named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


class MqttConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The broker and this gateway's credentials."""

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, msgspec.Meta(ge=0)] = 7 * 24 * 3600
    topic_prefix: str = "mcufleet/v1"
    outbox_limit: Annotated[int, msgspec.Meta(ge=10)] = 10_000


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where `/metrics` is served (loopback by default; port 0 picks a free one)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Log level and format (JSON lines for journald, console for a terminal)."""

    level: str = "info"
    json: bool = True


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
    pair_when_access_denied: bool = False


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


class DownloadConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which artifact URLs may be fetched, and the on-disk cache."""

    allowed_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    allow_private_addresses: bool = False
    max_artifact_bytes: Annotated[int, msgspec.Meta(ge=1)] = 16 * 1024 * 1024
    cache_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 256 * 1024 * 1024
    connect_timeout_s: PositiveSeconds = 10.0
    read_timeout_s: PositiveSeconds = 60.0


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

    @property
    def state_path(self) -> Path:
        """The directory holding the journal, the epoch file and the artifact cache."""
        return Path(self.state_dir)
