"""Device inventory published by gateways: retained device reports and controller-only credentials."""

import enum
from datetime import datetime
from typing import Annotated

import msgspec

from schemas.ids import DeviceSerialField, Epoch, GatewayIdField, Sequence, ShortText


class Transport(enum.StrEnum):
    """How the gateway reaches the device."""

    BLE = "ble"
    UDP = "udp"
    SERIAL = "serial"


class MemfaultAccess(enum.StrEnum):
    """What the Memfault MCUmgr group (SMP group 128) answered."""

    OK = "ok"
    """Device info read; the device can be correlated with Memfault releases."""
    ACCESS_DENIED = "access_denied"
    """rc 11 from the device's access callback (often: link not encrypted or not bonded)."""
    NO_GROUP = "no_group"
    """rc 8 (ENOTSUP): the firmware has no Memfault group."""
    NO_PROJECT_KEY = "no_project_key"
    """Group error 2 on the project key read; device info may still be present."""
    ERROR = "error"
    """Any other error or a malformed reply; see `memfault_error`."""


class Reachability(enum.StrEnum):
    """Whether the gateway currently hears the device."""

    PRESENT = "present"
    LOST = "lost"
    """Not seen for longer than the gateway's TTL: unreachable, not failed."""


class ImageSlot(msgspec.Struct, frozen=True, kw_only=True):
    """One slot of the device's image state (SMP group 1, command 0)."""

    image: int = 0
    slot: Annotated[int, msgspec.Meta(ge=0, le=1)]
    version: ShortText
    hash_sha256: ShortText
    """The MCUboot SHA256 TLV of the image in the slot, lowercase hex."""
    bootable: bool = False
    pending: bool = False
    confirmed: bool = False
    active: bool = False
    permanent: bool = False


class SmpCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What the device's SMP server accepts (OS group, MCUmgr parameters)."""

    buf_size: int | None = None
    """Netbuf size in bytes: the largest SMP frame the device accepts."""
    buf_count: int | None = None
    """Netbufs: how many requests may be in flight."""
    smp_version: int = 2


class DeviceReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a gateway knows about one device (retained; an empty payload forgets the device).

    Reports evolve: readers must ignore unknown fields, and every new field gets a default.
    """

    gateway_id: GatewayIdField
    epoch: Epoch
    """The publishing gateway session's epoch; reports of older sessions are stale."""
    seq: Sequence
    """Per-session sequence of reports, so a reader can see gaps and ask for a rebirth."""
    device_serial: DeviceSerialField
    hardware_version: ShortText = ""
    software_type: ShortText = ""
    current_version: ShortText = ""
    accepts_delta: bool = False
    """The device's bootloader applies Memfault delta payloads (declared by the gateway's config;
    false by default): only then may the controller send it a patch instead of a whole image."""
    memfault: MemfaultAccess = MemfaultAccess.OK
    memfault_error: ShortText = ""
    project_key_fingerprint: ShortText = ""
    """First 16 hex digits of sha256(project key); the key itself never appears here."""
    transport: Transport
    address: ShortText
    """BLE address or `host:port`."""
    rssi_dbm: int | None = None
    seen_at: datetime
    reachability: Reachability = Reachability.PRESENT
    images: list[ImageSlot] = msgspec.field(default_factory=list)
    smp: SmpCapabilities = msgspec.field(default_factory=SmpCapabilities)


class DeviceCredential(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device's Memfault project key, sent only on a controller-only, non-retained topic."""

    gateway_id: GatewayIdField
    device_serial: DeviceSerialField
    project_key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    fingerprint: ShortText
    """First 16 hex digits of sha256(project key), as in the device report."""
