"""Many fake gateways in one process, speaking the agent's MQTT contract with paho (bench_system's fleet).

`python -m bench.fake_gateways --port P --first 0 --count 100 --devices-per-gateway 100 --stats F`
plays gateways `gw-<first>` .. `gw-<first+count-1>`, each one paho client (MQTT 5, persistent
session, its will the offline presence) hearing its own devices `S<gateway>-<index>`. As an agent
does, on every connection a gateway publishes its retained birth, then a retained report and a
credential for each of its devices; it answers a rebirth request by publishing them all again, and
every OTA command with the agent's progress phases (QoS 0) and a succeeded result (QoS 1), then
the device's new report (its running version is the target). A command repeated for a job already
answered gets the same result again, as the agent answers from its journal.

Counts (commands, distinct device/target pairs, results, rebirths, publishes refused) are written
as JSON to the stats file every half second and on SIGTERM, for the benchmark to read.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.device_probe import fingerprint
from schemas import (
    DeviceCredential,
    DeviceReport,
    DeviceSerial,
    GatewayId,
    GatewayPresence,
    JobOutcome,
    JobPhase,
    JobProgress,
    JobResult,
    OfflineCause,
    OtaCommand,
    RebirthRequest,
    TopicKind,
    TopicTree,
    Transport,
    channels,
)
from schemas import ReasonCode as JobReason

PROJECT_KEY: Final = "project-key-1"
HARDWARE: Final = "nrf52840dk"
SOFTWARE_TYPE: Final = "app"
RUNNING_VERSION: Final = "1.0.0"
PHASES: Final = (
    JobPhase.DOWNLOADING,
    JobPhase.UPLOADING,
    JobPhase.TESTING,
    JobPhase.REBOOTING,
    JobPhase.VERIFYING,
    JobPhase.CONFIRMING,
)
SESSION_EXPIRY_S: Final = 7 * 24 * 3600
"""The agent's default: the broker keeps a gateway's commands while it is away."""
STATS_INTERVAL_S: Final = 0.5


def serial_of(gateway: int, index: int) -> str:
    """The serial of a gateway's `index`th device."""
    return f"S{gateway:04d}-{index:03d}"


@dataclass
class FleetCounts:
    """What the gateways of this process saw and sent (guarded by `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    connected: int = 0
    births: int = 0
    reports: int = 0
    credentials: int = 0
    commands: int = 0
    commanded: set[tuple[str, str]] = field(default_factory=set)
    """(device serial, target version) pairs commanded: the first command of each is not a duplicate."""
    jobs: set[str] = field(default_factory=set)
    results: int = 0
    rebirths: int = 0
    refused_publishes: int = 0

    def document(self) -> dict[str, int]:
        """The counts as JSON-ready numbers."""
        with self.lock:
            return {
                "connected": self.connected,
                "births": self.births,
                "reports": self.reports,
                "credentials": self.credentials,
                "commands": self.commands,
                "commanded": len(self.commanded),
                "jobs": len(self.jobs),
                "results": self.results,
                "rebirths": self.rebirths,
                "refused_publishes": self.refused_publishes,
            }


class FakeGateway:
    """One gateway: a paho client and the devices it hears."""

    def __init__(
        self, tree: TopicTree, index: int, devices: int, *, broker: tuple[str, int], counts: FleetCounts
    ) -> None:
        self.gateway_id = GatewayId(f"gw-{index:04d}")
        self.tree = tree
        self.counts = counts
        self.versions = {serial_of(index, i): RUNNING_VERSION for i in range(devices)}
        self.answered: dict[str, bytes] = {}
        self.epoch = int(time.time())
        self.seq = 0
        self.started_at = datetime.now(UTC)
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.gateway_id,
            protocol=mqtt.MQTTv5,
        )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        presence = self.tree.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=self.gateway_id)
        self.client.will_set(presence, self._presence(online=False), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._host, self._port = broker

    def start(self) -> None:
        """Connect in the background (paho's own thread; it reconnects by itself)."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            self._host, self._port, keepalive=30, clean_start=False, properties=properties
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Say goodbye (retained offline presence) and disconnect."""
        presence = self.tree.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=self.gateway_id)
        goodbye = self._presence(online=False, cause=OfflineCause.SHUTDOWN)
        info = self.client.publish(presence, goodbye, qos=1, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            info.wait_for_publish(2.0)
        self.client.disconnect()
        self.client.loop_stop()

    # --- what an agent publishes ----------------------------------------------------------------

    def _presence(self, *, online: bool, cause: OfflineCause = OfflineCause.WILL) -> bytes:
        return channels.encode(
            GatewayPresence(
                gateway_id=self.gateway_id,
                epoch=self.epoch,
                online=online,
                cause=OfflineCause.NONE if online else cause,
                agent_version="fake",
                site="bench",
                started_at=self.started_at,
                device_count=len(self.versions) if online else 0,
            )
        )

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            with self.counts.lock:
                self.counts.refused_publishes += 1

    def _publish_device(self, serial: str) -> None:
        with self._lock:
            self.seq += 1
            seq, version = self.seq, self.versions[serial]
        report = DeviceReport(
            gateway_id=self.gateway_id,
            epoch=self.epoch,
            seq=seq,
            device_serial=DeviceSerial(serial),
            hardware_version=HARDWARE,
            software_type=SOFTWARE_TYPE,
            current_version=version,
            project_key_fingerprint=fingerprint(PROJECT_KEY),
            transport=Transport.BLE,
            address=f"AA:{serial}",
            rssi_dbm=-60,
            seen_at=datetime.now(UTC),
        )
        ids = {"gateway_id": self.gateway_id, "device_serial": serial}
        self._publish(self.tree.topic(TopicKind.DEVICE_REPORT, **ids), channels.encode(report), 1, True)
        credential = DeviceCredential(
            gateway_id=self.gateway_id,
            device_serial=DeviceSerial(serial),
            project_key=PROJECT_KEY,
            fingerprint=fingerprint(PROJECT_KEY),
        )
        self._publish(self.tree.topic(TopicKind.DEVICE_CREDENTIAL, **ids), channels.encode(credential), 1)
        with self.counts.lock:
            self.counts.reports += 1
            self.counts.credentials += 1

    def _rebirth(self) -> None:
        for serial in list(self.versions):
            self._publish_device(serial)

    # --- paho callbacks (paho's thread) ---------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            return
        self.epoch += 1
        with self._lock:
            self.seq = 0
        client.subscribe(self.tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id=self.gateway_id), qos=1)
        presence = self.tree.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=self.gateway_id)
        self._publish(presence, self._presence(online=True), 1, True)
        with self.counts.lock:
            self.counts.connected += 1
            self.counts.births += 1
        self._rebirth()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            command = channels.decode(TopicKind.GATEWAY_COMMAND, bytes(message.payload), message.topic)
        except Exception:  # noqa: BLE001 (a fake gateway ignores what it cannot read, as the agent does)
            return
        if isinstance(command, RebirthRequest):
            with self.counts.lock:
                self.counts.rebirths += 1
            self._rebirth()
        elif isinstance(command, OtaCommand):
            self._answer(command)

    def _answer(self, command: OtaCommand) -> None:
        serial = str(command.device_serial)
        with self.counts.lock:
            self.counts.commands += 1
            self.counts.commanded.add((serial, command.target_version))
            self.counts.jobs.add(command.job_id)
        ids = {"gateway_id": self.gateway_id, "job_id": command.job_id}
        result_topic = self.tree.topic(TopicKind.JOB_RESULT, **ids)
        repeated = self.answered.get(command.job_id)
        if repeated is not None:
            self._publish(result_topic, repeated, 1)
            return
        if serial not in self.versions:
            return
        progress_topic = self.tree.topic(TopicKind.JOB_PROGRESS, **ids)
        size = command.artifact.size_bytes
        for seq, phase in enumerate(PHASES):
            progress = JobProgress(
                gateway_id=self.gateway_id,
                job_id=command.job_id,
                device_serial=command.device_serial,
                phase=phase,
                bytes_done=size if phase is not JobPhase.DOWNLOADING else 0,
                bytes_total=size,
                seq=seq,
                at=datetime.now(UTC),
            )
            self._publish(progress_topic, channels.encode(progress), 0)
        result = channels.encode(
            JobResult(
                gateway_id=self.gateway_id,
                job_id=command.job_id,
                device_serial=command.device_serial,
                attempt=command.attempt,
                outcome=JobOutcome.SUCCEEDED,
                reason=JobReason.OK,
                retryable=False,
                running_version=command.target_version,
                uploads=1,
                finished_at=datetime.now(UTC),
            )
        )
        self.answered[command.job_id] = result
        self._publish(result_topic, result, 1)
        with self.counts.lock:
            self.counts.results += 1
        with self._lock:
            self.versions[serial] = command.target_version
        self._publish_device(serial)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateways until SIGTERM, writing the counts to the stats file."""
    parser = argparse.ArgumentParser(prog="python -m bench.fake_gateways")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first", type=int, required=True, help="index of the first gateway")
    parser.add_argument("--count", type=int, required=True, help="gateways in this process")
    parser.add_argument("--devices-per-gateway", type=int, required=True)
    parser.add_argument("--stats", type=Path, required=True, help="where the counts are written (JSON)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    counts = FleetCounts()
    tree = TopicTree()
    gateways = [
        FakeGateway(tree, index, args.devices_per_gateway, broker=(args.host, args.port), counts=counts)
        for index in range(args.first, args.first + args.count)
    ]
    for gateway in gateways:
        gateway.start()

    def write() -> None:
        temporary = args.stats.with_suffix(".tmp")
        temporary.write_text(json.dumps(counts.document()))
        temporary.replace(args.stats)

    while not stop.wait(STATS_INTERVAL_S):
        write()
    for gateway in gateways:
        gateway.stop()
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
