"""The link between a client and one simulated device: latency, bandwidth, loss and buffers.

Rules of this file:
- Time is an argument; the link only computes when things happen.
- Each direction is a pipe of `bandwidth_bytes_per_s` (None: unlimited): a frame starts when the
  previous one in that direction has finished, takes `size / bandwidth` and then `latency_s`.
- Each frame is lost with probability `loss_rate`, each direction independently, from a seeded
  random generator, so a run is repeatable.
- A request larger than `buf_size_bytes` is dropped, as is one that finds `buf_count` requests
  already waiting to be processed (Zephyr cannot allocate a net_buf for it).
"""

import random
from collections import deque
from dataclasses import dataclass


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
    """CONFIG_MCUMGR_TRANSPORT_NETBUF_COUNT: requests that can wait for processing."""


class Link:
    """The state of one device's link: when each pipe is free, what waits to be processed."""

    def __init__(self, profile: LinkProfile, seed: int = 0) -> None:
        self.profile = profile
        self._random = random.Random(seed)
        self._uplink_free_s = 0.0
        self._downlink_free_s = 0.0
        self._processing_done_s: deque[float] = deque()

    def deliver_request(self, size_bytes: int, now_s: float) -> float | None:
        """When a request sent at `now_s` reaches the device, or None if it is lost or too big."""
        if size_bytes > self.profile.buf_size_bytes or self._lost():
            return None
        if not self.profile.bandwidth_bytes_per_s:
            return now_s + self.profile.latency_s
        start_s = max(now_s, self._uplink_free_s)
        self._uplink_free_s = start_s + size_bytes / self.profile.bandwidth_bytes_per_s
        return self._uplink_free_s + self.profile.latency_s

    def admit(self, arrival_s: float) -> bool:
        """Whether a request arriving at `arrival_s` gets a buffer."""
        while self._processing_done_s and self._processing_done_s[0] <= arrival_s:
            self._processing_done_s.popleft()
        return len(self._processing_done_s) < self.profile.buf_count

    def hold_buffer_until(self, done_s: float) -> None:
        """Record that an admitted request holds its buffer until `done_s`."""
        self._processing_done_s.append(done_s)

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
        self._processing_done_s.clear()

    def _lost(self) -> bool:
        return self.profile.loss_rate > 0 and self._random.random() < self.profile.loss_rate
