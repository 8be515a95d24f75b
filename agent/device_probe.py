"""What the gateway knows about each device: probing over SMP and building retained device reports.

The project key is a credential: it is read from the device, reduced to a fingerprint for the
report, and sent in full only on the controller-only credential topic.
"""

import hashlib
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from agent.errors import SmpDeviceError, SmpRemoteError
from agent.link.session import SmpSession
from agent.smp import commands, group128
from schemas import (
    DeviceCredential,
    DeviceReport,
    DeviceSerial,
    GatewayId,
    ImageSlot,
    MemfaultAccess,
    Reachability,
    SmpCapabilities,
    Transport,
    is_valid_id,
)

FINGERPRINT_HEX_DIGITS: Final = 16
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._:@-]")


def fingerprint(project_key: str) -> str:
    """A short, one-way fingerprint of a project key, safe to show in reports and logs."""
    return hashlib.sha256(project_key.encode()).hexdigest()[:FINGERPRINT_HEX_DIGITS]


def fallback_serial(transport: Transport, address: str) -> str:
    """An id for a device whose Memfault group cannot be read (it is reported, never updated)."""
    return f"{transport.value}-{_UNSAFE.sub('-', address)}"[:128]


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One probe of a device over SMP."""

    transport: Transport
    address: str
    access: MemfaultAccess
    info: group128.DeviceInfo | None
    project_key: str | None
    slots: tuple[commands.SlotState, ...]
    params: commands.McumgrParams | None
    error: str = ""
    identity: str | None = None
    """The id configured for a device that cannot say who it is (no group 128), if any."""

    @property
    def serial(self) -> str:
        """The device's serial, else its configured identity, else a fallback id from its address."""
        if self.info is not None and is_valid_id(self.info.device_serial, 128):
            return self.info.device_serial
        if self.identity is not None and is_valid_id(self.identity, 128):
            return self.identity
        return fallback_serial(self.transport, self.address)

    @property
    def updatable(self) -> bool:
        """Only a device that told us who it is may be updated."""
        return self.access in (MemfaultAccess.OK, MemfaultAccess.NO_PROJECT_KEY) and self.info is not None


async def probe(
    session: SmpSession, transport: Transport, address: str, *, identity: str | None = None
) -> DeviceSnapshot:
    """Read group 128 (info, key), the image state and the MCUmgr parameters from a device.

    Errors of group 128 become the snapshot's access state; link errors propagate. `identity`
    names the device when group 128 does not (a configured serial device).
    """
    access, info, key, error = MemfaultAccess.OK, None, None, ""
    try:
        reply = await session.request(group128.encode_device_info_read)
        info = group128.parse_device_info(reply.raise_for_error())
    except SmpDeviceError as failure:
        access, error = group128.classify_error(failure), str(failure)
    except SmpRemoteError as failure:
        access, error = MemfaultAccess.ERROR, str(failure)
    if info is not None:
        try:
            reply = await session.request(group128.encode_project_key_read)
            key = group128.parse_project_key(reply.raise_for_error())
        except SmpDeviceError as failure:
            access, error = group128.classify_error(failure), str(failure)
        except SmpRemoteError as failure:
            access, error = MemfaultAccess.ERROR, str(failure)
    try:
        reply = await session.request(commands.encode_state_read)
        slots = tuple(commands.parse_state(reply.raise_for_error()))
    except (SmpDeviceError, SmpRemoteError):
        slots = ()
    return DeviceSnapshot(transport, address, access, info, key, slots, session.params, error[:200], identity)


@dataclass
class ReportSequencer:
    """Numbers the reports of one gateway session so the controller can see gaps."""

    gateway_id: GatewayId
    epoch: int = 0
    seq: int = 0

    def start_session(self, epoch: int) -> None:
        """A new MQTT session: new epoch, sequence from zero."""
        self.epoch, self.seq = epoch, 0

    def next_seq(self) -> int:
        """The sequence number of the next report."""
        self.seq += 1
        return self.seq


@dataclass
class KnownDevice:
    """A device in the gateway's inventory."""

    snapshot: DeviceSnapshot
    seen_at: datetime
    rssi_dbm: int | None = None
    reachability: Reachability = Reachability.PRESENT

    def report(
        self, sequencer: ReportSequencer, delta_capable_hardware: tuple[str, ...] = ()
    ) -> DeviceReport:
        """The retained report for this device (the project key only as a fingerprint).

        It declares `accepts_delta` when the device's hardware is in `delta_capable_hardware`.
        """
        snap = self.snapshot
        info = snap.info
        return DeviceReport(
            gateway_id=sequencer.gateway_id,
            epoch=sequencer.epoch,
            seq=sequencer.next_seq(),
            device_serial=DeviceSerial(snap.serial),
            hardware_version=info.hardware_version[:256] if info else "",
            software_type=info.software_type[:256] if info else "",
            current_version=info.current_version[:256] if info else "",
            accepts_delta=info is not None and info.hardware_version in delta_capable_hardware,
            memfault=snap.access,
            memfault_error=snap.error,
            project_key_fingerprint=fingerprint(snap.project_key) if snap.project_key else "",
            transport=snap.transport,
            address=snap.address,
            rssi_dbm=self.rssi_dbm,
            seen_at=self.seen_at,
            reachability=self.reachability,
            images=[
                ImageSlot(
                    image=s.image,
                    slot=s.slot,
                    version=s.version[:256],
                    hash_sha256=s.hash_sha256.hex(),
                    bootable=s.bootable,
                    pending=s.pending,
                    confirmed=s.confirmed,
                    active=s.active,
                    permanent=s.permanent,
                )
                for s in snap.slots
                if s.slot in (0, 1)
            ],
            smp=SmpCapabilities(
                buf_size=snap.params.buf_size if snap.params else None,
                buf_count=snap.params.buf_count if snap.params else None,
            ),
        )

    def credential(self, gateway_id: GatewayId) -> DeviceCredential | None:
        """The controller-only credential message, when the device gave a project key."""
        key = self.snapshot.project_key
        if not key or len(key) > 256:
            return None
        return DeviceCredential(
            gateway_id=gateway_id,
            device_serial=DeviceSerial(self.snapshot.serial),
            project_key=key,
            fingerprint=fingerprint(key),
        )

    def mark_lost(self) -> "KnownDevice":
        """The same device, reported unreachable."""
        return replace(self, reachability=Reachability.LOST)
