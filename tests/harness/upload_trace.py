"""Which image offsets each simulated device was sent, so a resume test can tell resuming from restarting.

A resumed upload (by sha, Zephyr's `img_mgmt` rule) sends one offset-0 request that the device
answers with its offset, then streams from there; a restarted one streams from offset 0 again. The
trace wraps `SimDevice.handle` (the endpoint calls it per datagram) and records every upload
request's `off`, in arrival order, after an optional mark.
"""

from __future__ import annotations

from collections.abc import Callable

from simulator.device import Outgoing, SimDevice
from simulator.device.upload import upload_offset
from simulator.server import FleetServer


class UploadTrace:
    """Records the `off` of every image upload request the given devices receive."""

    def __init__(self, devices: FleetServer, serials: list[str]) -> None:
        self.offsets: dict[str, list[int]] = {serial: [] for serial in serials}
        self._marks: dict[str, int] = dict.fromkeys(serials, 0)
        for serial in serials:
            device = devices.device(serial)
            # Instrumentation: the endpoint calls `device.handle`, so an instance attribute shadows it.
            device.handle = self._recording(device, self.offsets[serial])  # type: ignore[method-assign,assignment]

    @staticmethod
    def _recording(device: SimDevice, log: list[int]) -> Callable[[bytes, float], list[Outgoing]]:
        handle = device.handle

        def recording(frame: bytes, now_s: float) -> list[Outgoing]:
            offset = upload_offset(frame)
            if offset is not None:
                log.append(offset)
            return handle(frame, now_s)

        return recording

    def mark(self, serial: str) -> None:
        """From now on `since_mark(serial)` reports only later requests."""
        self._marks[serial] = len(self.offsets[serial])

    def since_mark(self, serial: str) -> list[int]:
        """Offsets of the upload requests `serial` received after its mark."""
        return self.offsets[serial][self._marks[serial] :]


def assert_resumed(offsets: list[int], cut_at_bytes: int, slack_bytes: int) -> None:
    """The upload after a cut at `cut_at_bytes` resumed there: one offset-0 question, no re-streaming.

    `slack_bytes` covers requests already in flight when the link was cut. Fails when nothing was
    sent after the cut, or when any request between 0 and the cut (less the slack) was sent again,
    which is what an upload restarted from zero looks like.
    """
    assert offsets, "nothing was uploaded after the cut"
    restreamed = [offset for offset in offsets if 0 < offset < cut_at_bytes - slack_bytes]
    assert not restreamed, f"upload restarted below the cut at {cut_at_bytes}: {restreamed[:8]}"
    assert offsets.count(0) <= 1, f"{offsets.count(0)} requests at offset 0 after the cut"
    assert max(offsets) >= cut_at_bytes, f"never streamed past the cut at {cut_at_bytes}"
