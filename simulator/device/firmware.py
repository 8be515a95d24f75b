"""What is flashed into a simulated device: its identity and the firmware's build options and timings."""

from dataclasses import dataclass, field

from simulator.device.os_group import BootloaderMode, OsInfo


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What the Memfault group reports about a device, besides its running version."""

    serial: str
    hardware_version: str = "nrf54l15dk"
    software_type: str = "app"
    project_key: str = "sim-project-key"
    """The compiled-in Memfault project key; empty means none (group error 2)."""


@dataclass(frozen=True, slots=True)
class FirmwareOptions:
    """Build options (Kconfig) and timings of the simulated firmware."""

    slot_size_bytes: int = 0x68000
    original_protocol: bool = True
    """CONFIG_MCUMGR_SMP_SUPPORT_ORIGINAL_PROTOCOL: answer SMP v1 requests."""
    image_check: bool = True
    """CONFIG_IMG_ENABLE_IMAGE_CHECK: `match` in the last upload reply."""
    frugal_list: bool = False
    """CONFIG_MCUMGR_GRP_IMG_FRUGAL_LIST: only true flags, no `splitStatus`."""
    compare_build_number: bool = False
    """CONFIG_MCUMGR_GRP_IMG_VERSION_CMP_USE_BUILD_NUMBER for `upgrade` uploads."""
    reset_delay_s: float = 0.25
    """CONFIG_MCUMGR_GRP_OS_RESET_MS: from the reset reply to the reboot."""
    boot_time_s: float = 0.2
    """From reboot to answering again, without a swap."""
    swap_time_s: float = 0.3
    """Added to a boot for each slot swap MCUboot performs."""
    processing_s: float = 0.0
    """Time to handle any request that reaches a handler; it holds its buffers meanwhile."""
    erase_bytes_per_s: float | None = None
    """Flash erase speed; None erases instantly."""
    bootloader_mode: BootloaderMode = BootloaderMode.SWAP_WITHOUT_SCRATCH
    bootloader_info: bool = True
    """CONFIG_MCUMGR_GRP_OS_BOOTLOADER_INFO: OS command 8 has a handler."""
    image_group: bool = True
    """CONFIG_MCUMGR_GRP_IMG: group 1 is served (off: rc 8, as on the native_sim_udp builds)."""
    memfault_group: bool = True
    """CONFIG_MEMFAULT_MCUMGR_GRP: group 128 is served (off: rc 8, as on smpclient's fixtures)."""
    enumeration_group: bool = True
    """CONFIG_MCUMGR_GRP_ENUM: group 10 lists the groups served."""
    os_info: OsInfo = field(default_factory=OsInfo)
    """What OS info (group 0 command 7) reports."""
