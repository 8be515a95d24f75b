"""Simulator capacity: 1,000 devices in one process, their memory cost and the request rate they sustain.

Figures:
- `simulator.requests_per_s`: SMP round trips per second (echo and group 128 device-info reads,
  alternating) from a few concurrent raw-UDP clients, each waiting for its reply before the next request.
- `simulator.rss_per_device_kb`: growth of the process's resident memory from before the fleet is
  built to after every device's socket is bound, divided by the number of devices.
"""

import asyncio
import json
import random
import struct
from pathlib import Path
from typing import Any

import cbor2

from simulator.fleet import generate_fleet
from simulator.server import FleetServer

DEVICES = 1000
CLIENTS = 8
DURATION_S = 4.0
REQUEST_TIMEOUT_S = 1.0
_HEADER = struct.Struct("!BBHHBB")


def _frame(group: int, command: int, body: dict[str, Any], *, op: int, sequence: int) -> bytes:
    payload = cbor2.dumps(body, canonical=True)
    return _HEADER.pack((1 << 3) | op, 0, len(payload), group, sequence, command) + payload


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def _client(endpoints: list[tuple[str, int]], seed: int, deadline_s: float) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_OneReply, local_addr=("127.0.0.1", 0))
    rng = random.Random(seed)
    answered = lost = 0
    try:
        sequence = 0
        while loop.time() < deadline_s:
            sequence = (sequence + 1) % 256
            if sequence % 2:
                frame = _frame(0, 0, {"d": "ping"}, op=2, sequence=sequence)
            else:
                frame = _frame(128, 0, {}, op=0, sequence=sequence)
            protocol.waiter = loop.create_future()
            transport.sendto(frame, rng.choice(endpoints))
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    reply = await protocol.waiter
                answered += reply[6] == sequence
            except TimeoutError:
                lost += 1
    finally:
        transport.close()
    return answered, lost


async def _measure() -> dict[str, float]:
    rss_before_kb = _rss_kb()
    server = FleetServer(generate_fleet(DEVICES, seed=1), base_host="127.0.0.1", port_per_device=True)
    async with server:
        rss_after_kb = _rss_kb()
        endpoints = list(server.endpoints.values())
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        results = await asyncio.gather(
            *(_client(endpoints, seed, started_s + DURATION_S) for seed in range(CLIENTS))
        )
        elapsed_s = loop.time() - started_s
    answered = sum(ok for ok, _ in results)
    return {
        "simulator.requests_per_s": answered / elapsed_s,
        "simulator.rss_per_device_kb": (rss_after_kb - rss_before_kb) / DEVICES,
    }


def run() -> dict[str, float]:
    """Start 1,000 simulated devices, drive round trips for a few seconds, report rate and memory."""
    return asyncio.run(_measure())


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
