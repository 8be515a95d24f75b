"""Simulated Zephyr SMP devices: the pure core (no sockets, no clock) behind the UDP fleet server."""

from simulator.device.device import BootRecord, DeviceCounters, DevicePhase, Outgoing, SimDevice
from simulator.device.faults import FaultPlan
from simulator.device.firmware import DeviceIdentity, FirmwareOptions
from simulator.device.img_group import SlotState
from simulator.device.link import LinkProfile
from simulator.device.mcuboot import BootOutcome, SwapType
from simulator.device.memfault_group import MemfaultMode
from simulator.device.os_group import BootloaderMode
from simulator.device.upload import UploadSession

__all__ = [
    "BootOutcome",
    "BootRecord",
    "BootloaderMode",
    "DeviceCounters",
    "DeviceIdentity",
    "DevicePhase",
    "FaultPlan",
    "FirmwareOptions",
    "LinkProfile",
    "MemfaultMode",
    "Outgoing",
    "SimDevice",
    "SlotState",
    "SwapType",
    "UploadSession",
]
