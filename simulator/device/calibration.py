"""The simulator set up as the real Zephyr builds it is calibrated against (smpclient 7.3.0's fixtures).

Measured on `zephyr_4.4.0_smp_server_0eae053d_native_sim_udp.exe` (tests/firmware/
test_calibration.py sends the same traffic to it and to this profile and asserts they agree):
- MCUmgr parameters: buf_size 2048, buf_count 2; groups enum, fs, os, settings, shell, stat,
  zbasic (the simulator models os and enum only); no image group, no Memfault group 128, no
  bootloader info (all rc 8). OS info and enumeration answer as os_group.py and enum_group.py say.
- A burst queued whole before the build reads any of it (the test stops the build with SIGSTOP
  while it sends) is read one datagram at a time; while a request is processed it holds both
  buffers, so every second datagram finds the pool empty and is dropped: a burst of n echoes is
  answered at positions 0, 2, 4, ... and n // 2 drops are logged, on every run. Modelled with a
  read every 2 ms and 3 ms of processing: the server feeds a queued burst at one time
  (simulator/server.py), so its reads are 2 ms apart however loaded the machine, and each one
  lands inside the previous accepted request's processing or just after it, as on the real build
  (whose echo round trip is about 9 ms).
- Datagrams of 1500 bytes are answered, 1501 and more get `{"rc": 9}` (cut at the UDP MTU).
"""

from typing import Final

from simulator.device.device import SimDevice
from simulator.device.firmware import DeviceIdentity, FirmwareOptions
from simulator.device.link import UDP_MTU_BYTES, LinkProfile
from simulator.image import build_mcuboot_image

NATIVE_SIM_UDP_LINK: Final = LinkProfile(
    name="native-sim-udp",
    buf_size_bytes=2048,
    buf_count=2,
    datagram_limit_bytes=UDP_MTU_BYTES,
    read_interval_s=0.002,
)
NATIVE_SIM_UDP_FIRMWARE: Final = FirmwareOptions(
    processing_s=0.003, image_group=False, memfault_group=False, bootloader_info=False
)


def native_sim_udp_device(serial: str = "native-sim-udp", *, seed: int = 0) -> SimDevice:
    """A simulated device that answers and drops like the native_sim_udp build."""
    return SimDevice(
        DeviceIdentity(serial, project_key=""),
        build_mcuboot_image("1.0.0", payload_size=1024, seed=seed),
        link=NATIVE_SIM_UDP_LINK,
        options=NATIVE_SIM_UDP_FIRMWARE,
        seed=seed,
    )
