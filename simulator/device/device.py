"""`SimDevice`: one Zephyr + MCUboot + Memfault SDK device as a pure object fed frames and time.

Rules of this file:
- No sockets and no clock: `now_s` is an argument, replies come back as `Outgoing(send_at_s, frame)`
  and `next_timer_s()` says when `poll()` must run (reboots, boots, silences ending).
- `handle()` never raises: malformed traffic gets Zephyr's reply or silence.
- A request's effects on the device happen when it is handled; the link model only decides when
  (and whether) the request arrives and its replies leave. Replies already produced are delivered
  even if the device reboots before their send time.
- A reboot ends the upload session, frees the link's buffers, runs MCUboot, and keeps the device
  silent for the boot time (plus the swap time for each swap).
"""

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NamedTuple

from simulator.device.codec import Header
from simulator.device.codes import Group
from simulator.device.enum_group import ServedGroup, handle_enumeration
from simulator.device.faults import FaultPlan, FaultState, UploadFault
from simulator.device.firmware import DeviceIdentity, FirmwareOptions
from simulator.device.img_group import ImageGroup, SlotState
from simulator.device.link import Link, LinkProfile
from simulator.device.mcuboot import BootOutcome, FlashSlot, Mcuboot, SwapType
from simulator.device.memfault_group import MemfaultDeviceInfo, MemfaultMode, handle_memfault
from simulator.device.os_group import OsParameters, handle_os
from simulator.device.replies import Effect, FlashErased, Reply, ResetRequested, UploadStarted
from simulator.device.smp_server import SmpOptions, process_datagram
from simulator.device.upload import ImageUploader, UploadSession, upload_offset
from simulator.image import ImageInfo

_SWAPS = {
    BootOutcome.NORMAL: 0,
    BootOutcome.SECONDARY_INVALID: 0,
    BootOutcome.SWAPPED: 1,
    BootOutcome.REVERTED: 1,
    BootOutcome.BAD_BUILD_REVERTED: 2,
    BootOutcome.BRICKED: 1,
}


class Outgoing(NamedTuple):
    """A reply frame and when it reaches the client."""

    send_at_s: float
    frame: bytes


class DevicePhase(StrEnum):
    """What the device is doing."""

    RUNNING = "running"
    BOOTING = "booting"
    SILENT = "silent"
    BRICKED = "bricked"


@dataclass(frozen=True, slots=True)
class BootRecord:
    """One reboot: when, what MCUboot did, and the version that came up (None if nothing did)."""

    at_s: float
    outcome: BootOutcome
    running_version: str | None


@dataclass(slots=True)
class DeviceCounters:
    """Traffic counters of one device."""

    datagrams_received: int = 0
    datagrams_dropped: int = 0
    """Every datagram the device never handled: lost on the way, too big, or no free buffer."""
    no_buffer_drops: int = 0
    """Of those, the ones read while the pool was empty ("Failed to allocate mcumgr buffer")."""
    replies_produced: int = 0
    replies_dropped: int = 0


@dataclass(slots=True)
class _Timers:
    reboot_at_s: float | None = None
    up_at_s: float | None = None
    silent_until_s: float | None = None
    busy_until_s: float = 0.0
    boots: list[BootRecord] = field(default_factory=list)


class SimDevice:
    """A simulated SMP device: OS, image and Memfault groups over MCUboot, behind a modelled link."""

    def __init__(
        self,
        identity: DeviceIdentity,
        primary_image: bytes,
        *,
        secondary_image: bytes = b"",
        link: LinkProfile | None = None,
        faults: FaultPlan | None = None,
        options: FirmwareOptions | None = None,
        memfault_mode: MemfaultMode = MemfaultMode.NORMAL,
        seed: int = 0,
    ) -> None:
        """A running device: `primary_image` confirmed in slot 0, `secondary_image` (if any) in slot 1."""
        self.identity = identity
        self.options = options or FirmwareOptions()
        self.memfault_mode = memfault_mode
        self.counters = DeviceCounters()
        self.phase = DevicePhase.RUNNING
        size = self.options.slot_size_bytes
        self.mcuboot = Mcuboot(FlashSlot(size, primary_image), FlashSlot(size, secondary_image))
        self._uploader = ImageUploader(
            self.mcuboot,
            image_check=self.options.image_check,
            compare_build_number=self.options.compare_build_number,
        )
        self._images = ImageGroup(self.mcuboot, self._uploader, frugal_list=self.options.frugal_list)
        self._link = Link(link or LinkProfile(), seed)
        self._faults = FaultState(faults or FaultPlan())
        self._timers = _Timers()
        self._smp_options = self._build_smp_options()

    @property
    def faults(self) -> FaultPlan:
        """The fault plan; assigning one restarts its one-shot faults and reply numbering."""
        return self._faults.plan

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self._faults = FaultState(plan)
        self._smp_options = self._build_smp_options()

    @property
    def link_profile(self) -> LinkProfile:
        """The link's profile; assigning one keeps the link's random state."""
        return self._link.profile

    @link_profile.setter
    def link_profile(self, profile: LinkProfile) -> None:
        self._link.profile = profile
        self._smp_options = self._build_smp_options()

    @property
    def running_image(self) -> ImageInfo | None:
        """The image in slot 0."""
        return self.mcuboot.primary.image()

    @property
    def running_version(self) -> str | None:
        """The version of the image in slot 0 (what `current_version` reports)."""
        image = self.running_image
        return image.version if image else None

    @property
    def swap_type(self) -> SwapType:
        """What MCUboot will do at the next boot."""
        return self.mcuboot.swap_type

    @property
    def upload_session(self) -> UploadSession | None:
        """A snapshot of the upload in progress, if any."""
        session = self._uploader.session
        return None if session is None else replace(session)

    @property
    def boots(self) -> list[BootRecord]:
        """Every reboot so far, oldest first."""
        return list(self._timers.boots)

    def image_states(self) -> list[SlotState]:
        """What an image state read would report now."""
        return self._images.slot_states()

    def slot_image(self, slot: int) -> ImageInfo | None:
        """The image in `slot` (0 or 1) as img_mgmt reads it."""
        return self.mcuboot.slots[slot].image()

    def handle(self, frame: bytes, now_s: float) -> list[Outgoing]:
        """Receive one datagram at `now_s`; return the replies and when they reach the client."""
        self.poll(now_s)
        self.counters.datagrams_received += 1
        accepted = self._accept(frame, now_s)
        if accepted is None:
            self.counters.datagrams_dropped += 1
            return []
        frame, read_s = accepted
        if self._upload_fault_fires(frame, now_s):
            return []
        answers = process_datagram(frame, self._dispatch, self._smp_options)
        effects = [effect for answer in answers for effect in answer.effects]
        start_s = max(read_s, self._timers.busy_until_s)
        # Only a request that reaches a handler costs processing time; one smp.c rejects on its
        # header (a datagram cut at the MTU: rc 9) is answered before the next read. Measured on
        # native_sim_udp: a burst of three oversized datagrams gets three rc 9 replies, no drops.
        handling_s = self.options.processing_s if any(answer.handled for answer in answers) else 0.0
        ready_s = start_s + handling_s + sum(self._effect_delay_s(effect) for effect in effects)
        self._timers.busy_until_s = ready_s
        self._link.hold_buffers(start_s, ready_s)
        if any(isinstance(effect, ResetRequested) for effect in effects):
            reboot_at_s = ready_s + self.options.reset_delay_s
            pending = self._timers.reboot_at_s
            self._timers.reboot_at_s = reboot_at_s if pending is None else min(pending, reboot_at_s)
        outgoing = []
        for answer in answers:
            self.counters.replies_produced += 1
            extra_s = self._faults.next_reply_delay_s()
            delivered_s = None
            if extra_s is not None:
                delivered_s = self._link.deliver_reply(len(answer.frame), ready_s + extra_s)
            if delivered_s is None:
                self.counters.replies_dropped += 1
            else:
                outgoing.append(Outgoing(delivered_s, answer.frame))
        return outgoing

    def poll(self, now_s: float) -> None:
        """Run every timer due at `now_s`: reboots, boots completing, silences ending."""
        timers = self._timers
        if timers.reboot_at_s is not None and now_s >= timers.reboot_at_s:
            at_s, timers.reboot_at_s = timers.reboot_at_s, None
            self._reboot(at_s)
        if timers.up_at_s is not None and now_s >= timers.up_at_s:
            timers.up_at_s = None
            self.phase = DevicePhase.RUNNING
        if timers.silent_until_s is not None and now_s >= timers.silent_until_s:
            timers.silent_until_s = None
            if self.phase is DevicePhase.SILENT:
                self.phase = DevicePhase.RUNNING

    def next_timer_s(self) -> float | None:
        """When `poll` next has something to do, or None."""
        pending = [self._timers.reboot_at_s, self._timers.up_at_s, self._timers.silent_until_s]
        due = [at_s for at_s in pending if at_s is not None]
        return min(due) if due else None

    def power_cycle(self, now_s: float) -> None:
        """Reboot at once, as if power were removed and restored (nothing is answered first)."""
        self._timers.reboot_at_s = None
        self._reboot(now_s)

    def _accept(self, frame: bytes, now_s: float) -> tuple[bytes, float] | None:
        """The datagram as the device reads it and when, or None if it never gets a buffer."""
        if self.phase is not DevicePhase.RUNNING:
            return None
        arrival_s = self._link.deliver_request(len(frame), now_s)
        if arrival_s is None:
            return None
        frame, read_s = self._link.read(frame, arrival_s)
        if not self._link.admit(len(frame), read_s):
            if len(frame) <= self._link.profile.buf_size_bytes:
                self.counters.no_buffer_drops += 1
            return None
        return frame, read_s

    def _dispatch(self, header: Header, payload: bytes) -> Reply | None:
        groups = self.options
        match header.group:
            case Group.OS:
                profile = self._link.profile
                parameters = OsParameters(
                    profile.buf_size_bytes,
                    profile.buf_count if profile.reported_buf_count is None else profile.reported_buf_count,
                    self.options.bootloader_mode,
                    bootloader_info=self.options.bootloader_info,
                    os_info=self.options.os_info,
                )
                return handle_os(header.command_id, header.op, payload, parameters)
            case Group.IMAGE if groups.image_group:
                return self._images.handle(header.command_id, header.op, payload)
            case Group.ENUMERATION if groups.enumeration_group:
                return handle_enumeration(header.command_id, header.op, payload, self._served_groups())
            case Group.MEMFAULT if groups.memfault_group:
                info = MemfaultDeviceInfo(
                    self.identity.serial,
                    self.identity.hardware_version,
                    self.identity.software_type,
                    self.running_version or "",
                )
                return handle_memfault(
                    header.command_id,
                    header.op,
                    info=info,
                    project_key=self.identity.project_key,
                    mode=self.memfault_mode,
                )
        return None

    def _served_groups(self) -> tuple[ServedGroup, ...]:
        # Registration order and handler-table sizes as the Zephyr 4.4.0 build reports them (enum
        # first with 4, os with 8 up to OS info, 9 with bootloader info); img's table reaches
        # erase (5); the Memfault group's name is our guess (the SDK's is not measured here).
        options = self.options
        served = []
        if options.enumeration_group:
            served.append(ServedGroup(Group.ENUMERATION, "enum mgmt", 4))
        served.append(ServedGroup(Group.OS, "os mgmt", 9 if options.bootloader_info else 8))
        if options.image_group:
            served.append(ServedGroup(Group.IMAGE, "img mgmt", 6))
        if options.memfault_group:
            served.append(ServedGroup(Group.MEMFAULT, "memfault mgmt", 2))
        return tuple(served)

    def _upload_fault_fires(self, frame: bytes, now_s: float) -> bool:
        if not self._faults.watches_uploads:
            return False
        offset = upload_offset(frame)
        fault = None if offset is None else self._faults.on_upload_chunk(offset)
        match fault:
            case None:
                return False
            case UploadFault.GO_SILENT:
                self._timers.silent_until_s = now_s + self._faults.plan.silent_duration_s
                self.phase = DevicePhase.SILENT
            case UploadFault.REBOOT:
                self.power_cycle(now_s)
        return True

    def _effect_delay_s(self, effect: Effect) -> float:
        erase_rate = self.options.erase_bytes_per_s
        match effect:
            case UploadStarted(size_bytes=size):
                return self._faults.plan.first_chunk_erase_delay_s + (
                    size / erase_rate if erase_rate else 0.0
                )
            case FlashErased(size_bytes=size):
                return size / erase_rate if erase_rate else 0.0
            case ResetRequested():
                return 0.0

    def _reboot(self, at_s: float) -> None:
        self._uploader.reset()
        self._link.clear_buffers()
        self._timers.silent_until_s = None
        bad_builds = self._faults.plan.bad_build_versions
        outcome = self.mcuboot.boot(lambda image: image.version in bad_builds)
        running = self.running_image
        if outcome is BootOutcome.NORMAL and running is not None and running.version in bad_builds:
            outcome = BootOutcome.BRICKED
        attempts = 2 if outcome is BootOutcome.BAD_BUILD_REVERTED else 1
        boot_s = attempts * self.options.boot_time_s + _SWAPS[outcome] * self.options.swap_time_s
        self._timers.busy_until_s = at_s + boot_s
        if outcome is BootOutcome.BRICKED:
            self.phase = DevicePhase.BRICKED
            self._timers.up_at_s = None
            self._timers.boots.append(BootRecord(at_s, outcome, None))
            return
        self.phase = DevicePhase.BOOTING
        self._timers.up_at_s = at_s + boot_s
        self._timers.boots.append(BootRecord(at_s, outcome, self.running_version))

    def _build_smp_options(self) -> SmpOptions:
        return SmpOptions(
            buf_size_bytes=self._link.profile.buf_size_bytes,
            original_protocol=self.options.original_protocol,
            legacy_rc=self._faults.plan.legacy_rc,
            extra_fields=self._faults.plan.extra_fields,
        )
