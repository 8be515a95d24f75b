"""The link between a client and one simulated device: latency, bandwidth, loss and buffers.

Rules of this file:
- Time is an argument; the link only computes when things happen.
- Each direction is a pipe of `bandwidth_bytes_per_s` (None: unlimited): a frame starts when the
  previous one in that direction has finished, takes `size / bandwidth` and then `latency_s`.
- Each frame is lost with probability `loss_rate`, each direction independently, from a seeded
  random generator, so a run is repeatable.
- A device built with SMP over UDP reads at most `datagram_limit_bytes` of a datagram
  (zephyrproject-rtos/zephyr:subsys/mgmt/mcumgr/transport/src/smp_udp.c receives into
  `recv_buffer[CONFIG_MCUMGR_TRANSPORT_UDP_MTU]`, 1500 by default): a longer one is cut there, so
  its header runs past the end and smp.c answers rc 9 ECORRUPT. Measured on the Zephyr 4.4.0
  native_sim_udp build: 1500 bytes are answered, 1501 get `{"rc": 9}`. A device modelled as a BLE
  or serial one (whose transport reassembles whole frames and which the simulator merely serves
  over UDP, e.g. through simulator/gatt_bridge.py) has no such limit: None. A request that still
  exceeds `buf_size_bytes` is dropped.
- The device reads its socket one datagram at a time, at least `read_interval_s` apart, and each
  read allocates a net_buf from ONE pool of `buf_count` that serves requests and replies alike
  (Kconfig MCUMGR_TRANSPORT_NETBUF_COUNT: "used for both requests and responses"). A request
  holds its buffer from its read until it is answered; the request being processed also holds
  its reply's buffer. A read that finds no free buffer drops the datagram (smp_udp.c logs
  "Failed to allocate mcumgr buffer"). With `buf_count` 2, a request being processed therefore
  takes the whole pool: the real UDP build keeps one request in flight and drops the next.
"""

import random
from collections import deque
from dataclasses import dataclass
from typing import Final

UDP_MTU_BYTES: Final = 1500
"""CONFIG_MCUMGR_TRANSPORT_UDP_MTU's default: the size of smp_udp.c's receive buffer."""


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """How one device's link and SMP transport behave."""

    name: str = "loopback"
    latency_s: float = 0.0
    """One-way latency."""
    bandwidth_bytes_per_s: float | None = None
    """Each way; None means unlimited."""
    loss_rate: float = 0.0
    """Probability that a frame is lost, each direction independently."""
    buf_size_bytes: int = 2048
    """CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE: the largest frame either way."""
    buf_count: int = 4
    """CONFIG_MCUMGR_TRANSPORT_NETBUF_COUNT: net_bufs shared by requests and their replies."""
    reported_buf_count: int | None = None
    """What MCUmgr parameters report as `buf_count`, when it overstates the pool (None: the truth);
    for instance a pool that another transport or the reply path also draws from."""
    datagram_limit_bytes: int | None = None
    """CONFIG_MCUMGR_TRANSPORT_UDP_MTU of a UDP build (`UDP_MTU_BYTES`): bytes of a datagram the
    device reads; None reads whole frames (BLE and serial builds)."""
    read_interval_s: float = 0.0
    """The shortest time between two reads of the device's socket (datagrams that arrive together
    are read one after another, this far apart)."""


@dataclass(slots=True)
class _Held:
    processing_s: float
    """When its processing starts and it takes its reply's buffer as well."""
    answered_s: float
    """When its reply has been sent and both buffers are free again."""


class Link:
    """The state of one device's link: when each pipe is free, which buffers are held."""

    def __init__(self, profile: LinkProfile, seed: int = 0) -> None:
        self.profile = profile
        self._random = random.Random(seed)
        self._uplink_free_s = 0.0
        self._downlink_free_s = 0.0
        self._last_read_s: float | None = None
        self._held: deque[_Held] = deque()

    def deliver_request(self, size_bytes: int, now_s: float) -> float | None:
        """When a request sent at `now_s` reaches the device, or None if it is lost."""
        if self._lost():
            return None
        if not self.profile.bandwidth_bytes_per_s:
            return now_s + self.profile.latency_s
        start_s = max(now_s, self._uplink_free_s)
        self._uplink_free_s = start_s + size_bytes / self.profile.bandwidth_bytes_per_s
        return self._uplink_free_s + self.profile.latency_s

    def read(self, datagram: bytes, arrival_s: float) -> tuple[bytes, float]:
        """What the device reads of a datagram arriving at `arrival_s`, and when it reads it."""
        read_s = arrival_s
        if self._last_read_s is not None:
            read_s = max(read_s, self._last_read_s + self.profile.read_interval_s)
        self._last_read_s = read_s
        limit = self.profile.datagram_limit_bytes
        return (datagram if limit is None else datagram[:limit]), read_s

    def admit(self, size_bytes: int, read_s: float) -> bool:
        """Whether a request of `size_bytes` read at `read_s` gets a buffer."""
        if size_bytes > self.profile.buf_size_bytes:
            return False
        while self._held and self._held[0].answered_s <= read_s:
            self._held.popleft()
        in_use = sum(1 + (held.processing_s <= read_s) for held in self._held)
        return in_use < self.profile.buf_count

    def hold_buffers(self, processing_s: float, answered_s: float) -> None:
        """Record that an admitted request is processed from `processing_s` and answered at `answered_s`."""
        self._held.append(_Held(processing_s, answered_s))

    def deliver_reply(self, size_bytes: int, ready_s: float) -> float | None:
        """When a reply ready at `ready_s` reaches the client, or None if it is lost."""
        if self._lost():
            return None
        if not self.profile.bandwidth_bytes_per_s:
            return ready_s + self.profile.latency_s
        start_s = max(ready_s, self._downlink_free_s)
        self._downlink_free_s = start_s + size_bytes / self.profile.bandwidth_bytes_per_s
        return self._downlink_free_s + self.profile.latency_s

    def clear_buffers(self) -> None:
        """A reboot frees every buffer."""
        self._held.clear()

    def _lost(self) -> bool:
        return self.profile.loss_rate > 0 and self._random.random() < self.profile.loss_rate
