"""Garbage SMP replies to the agent: typed failures, counted, and the agent keeps working.

A UDP proxy sits between the agent and a simulated device. While it corrupts, every reply to an
image upload is replaced by a hypothesis-drawn mutation of the real reply (random bytes, cut
frames, wrong lengths, wrong sequence numbers, flipped CBOR, well-formed maps of the wrong shape).
The job must end with a failed result that carries a reason, never flash the device, and never
take the agent down; with the proxy clean again, the next command updates the device.
The session layer is also driven directly: every garbage reply is a typed agent error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from agent.errors import AgentError
from agent.link.device_link import udp_link
from agent.smp import commands
from schemas import JobOutcome
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome
from tests.fuzz.payloads import JSON_VALUES, drawn
from tests.harness.broker import MosquittoBroker
from tests.harness.udp_proxy import SmpUdpProxy, is_image_upload, serve
from tests.integration.world import (
    agent_settings,
    controller_probe,
    ota_command,
    publish_release,
    running_agent,
    simulated_devices,
)

pytestmark = pytest.mark.integration
Mutation = Callable[[bytes], bytes]


def _set_length(frame: bytes, length: int) -> bytes:
    return frame[:2] + struct.pack(">H", length & 0xFFFF) + frame[4:]


def _set_sequence(frame: bytes, sequence: int) -> bytes:
    return frame[:6] + bytes([sequence & 0xFF]) + frame[7:]


def _flip(frame: bytes, position: int) -> bytes:
    data = bytearray(frame)
    data[position % len(data)] ^= 0xFF
    return bytes(data)


def _body(frame: bytes, body: object) -> bytes:
    encoded = cbor2.dumps(body)
    return _set_length(frame[:8] + encoded, len(encoded))


MUTATIONS: st.SearchStrategy[Mutation] = st.one_of(
    st.binary(max_size=64).map(lambda garbage: lambda frame: garbage),
    st.integers(0, 12).map(lambda cut: lambda frame: frame[:cut]),
    st.integers(0, 0xFFFF).map(lambda length: lambda frame: _set_length(frame, length)),
    st.integers(1, 255).map(lambda shift: lambda frame: _set_sequence(frame, frame[6] + shift)),
    st.integers(8, 64).map(lambda position: lambda frame: _flip(frame, position)),
    JSON_VALUES.map(lambda body: lambda frame: _body(frame, body)),
    st.sampled_from([{"rc": "x"}, {"off": -1}, {"off": "a"}, {"err": 5}, {"err": {"group": "x"}}, []]).map(
        lambda body: lambda frame: _body(frame, body)
    ),
)


def drawn_mutations(count: int) -> list[Mutation]:
    """`count` mutations, drawn once by hypothesis."""
    return drawn(MUTATIONS, count)


class CorruptingProxy(SmpUdpProxy):
    """Forwards datagrams to `device`; while `corrupting`, upload replies get the next mutation."""

    def __init__(self, device: tuple[str, int], mutations: list[Mutation]) -> None:
        super().__init__(device)
        self.mutations = mutations
        self.corrupting = False
        self.corrupted = 0

    def to_agent(self, frame: bytes) -> bytes | None:
        if self.corrupting and is_image_upload(frame):
            frame = self.mutations[self.corrupted % len(self.mutations)](frame)
            self.corrupted += 1
        return frame


async def test_garbage_upload_replies_fail_the_job_cleanly(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Corrupted replies: a failed result with a reason, no flash; clean again: the update succeeds."""
    async with (
        CloudEmulator() as cloud,
        simulated_devices(["D1"]) as devices,
        controller_probe(broker) as probe,
    ):
        release = publish_release(cloud, "1.1.0", payload_size_bytes=40_000)
        proxy = CorruptingProxy(devices.endpoints["D1"], drawn_mutations(200))
        transport, (_, port) = await serve(proxy)
        try:
            settings_ = agent_settings("gw-1", broker, tmp_path / "agent", [("127.0.0.1", port)])
            registry = CollectorRegistry()
            async with running_agent(settings_, registry=registry):
                await probe.wait_for(lambda: "D1" in probe.reports)
                proxy.corrupting = True
                probe.send("gw-1", ota_command("job-garbage", "D1", release))
                await probe.wait_for(lambda: "job-garbage" in probe.results, timeout_s=90)
                failed = probe.results["job-garbage"]
                assert failed.outcome is JobOutcome.FAILED and failed.retryable and failed.reason, failed
                assert proxy.corrupted > 0
                assert not [b for b in devices.device("D1").boots if b.outcome is BootOutcome.SWAPPED]
                dropped = registry.get_sample_value(
                    "mcufleet_agent_smp_replies_dropped_total", {"reason": "malformed"}
                )
                timeouts = registry.get_sample_value("mcufleet_agent_smp_timeouts_total")
                assert (dropped or 0) + (timeouts or 0) > 0  # every bad reply is counted as one or the other
                assert dropped, "malformed replies are counted in the agent's metrics"

                proxy.corrupting = False
                probe.send("gw-1", ota_command("job-clean", "D1", release))
                await probe.wait_for(lambda: "job-clean" in probe.results, timeout_s=90)
                assert probe.results["job-clean"].outcome is JobOutcome.SUCCEEDED
        finally:
            transport.close()
    assert devices.device("D1").running_version == "1.1.0"


async def test_every_garbage_reply_is_a_typed_agent_error() -> None:
    """Straight at the session: each mutated reply to a state read is an AgentError, nothing else."""
    async with simulated_devices(["D1"]) as devices:
        mutations = drawn_mutations(150)
        proxy = CorruptingProxy(devices.endpoints["D1"], [])
        transport, (_, port) = await serve(proxy)
        link = udp_link("127.0.0.1", port, timeout_s=0.2, handshake_timeout_s=1.0)
        session = await link.connect()
        errors: dict[str, int] = {}
        try:
            for mutation in mutations:
                proxy.mutations, proxy.corrupting = [mutation], True
                try:
                    reply = await session.request(
                        lambda seq: commands.encode_upload(seq, 0, b"\0" * 16, None), timeout_s=0.2
                    )
                    commands.parse_upload_ack(reply.raise_for_error())
                except AgentError as error:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            proxy.corrupting = False
            # The session still works after all of it.
            states = commands.parse_state(
                (await session.request(commands.encode_state_read)).raise_for_error()
            )
            assert states
        finally:
            await session.close()
            transport.close()
    assert session.counters.malformed_replies > 0
    assert len(errors) >= 2, errors
