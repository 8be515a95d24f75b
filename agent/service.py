"""The agent service: joins the MQTT session, the inventory and the job runner of one gateway.

Inbound commands are decoded by the session (bad ones are counted and dropped there) and routed
here; reports, credentials, progress and results go out through the session's outbox. Results
travel through the journal's durable outbox first, so a crash between finishing a job and the
broker's acknowledgement re-sends the result at the next start instead of losing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner
from prometheus_client import CollectorRegistry

from agent.artifacts import ArtifactCache, ArtifactFetcher, DownloadPolicy
from agent.ble_discovery import BleDiscovery
from agent.device_link import DeviceLink
from agent.discovery import Inventory
from agent.errors import ConfigError
from agent.inventory import KnownDevice, ReportSequencer
from agent.jobs import JobRunner, RunnerSettings
from agent.journal import Journal
from agent.metrics import AgentCollector, AgentReadings
from agent.ota import JobSettings
from agent.session import SessionCounters
from agent.settings import AgentSettings, UdpDevice
from schemas import (
    CancelJob,
    GatewayId,
    GatewayPresence,
    JobProgress,
    JobResult,
    OfflineCause,
    OtaCommand,
    RebirthRequest,
    TopicKind,
    TopicTree,
    Transport,
    channels,
    is_valid_id,
)
from service_runtime.epoch import EpochCounter, FenceEpoch
from service_runtime.errors import MqttError
from service_runtime.mqtt import Inbound, MqttSession, MqttSettings, Outbound, Subscription, TlsSettings
from service_runtime.mqtt_metrics import MqttMetrics
from service_runtime.systemd import SystemdNotifier

log = structlog.get_logger("mcufleet.agent")

AGENT_VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class BleBackends:
    """bleak backends to use instead of the platform's (None: BlueZ on Linux)."""

    scanner: type[BaseBleakScanner] | None = None
    client: type[BaseBleakClient] | None = None


class GatewayPresencePayloads:
    """Birth, will and goodbye of this gateway."""

    def __init__(self, tree: TopicTree, gateway_id: GatewayId, site: str, count: Callable[[], int]) -> None:
        self.topic = tree.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=gateway_id)
        self._gateway_id = gateway_id
        self._site = site
        self._count = count
        self._started_at = datetime.now(UTC)

    def _presence(self, epoch: int, online: bool, cause: OfflineCause) -> bytes:
        return channels.encode(
            GatewayPresence(
                gateway_id=self._gateway_id,
                epoch=epoch,
                online=online,
                cause=cause,
                agent_version=AGENT_VERSION,
                site=self._site,
                started_at=self._started_at,
                device_count=self._count() if online else 0,
            )
        )

    def birth(self, epoch: int) -> bytes:
        """Online, with the inventory size."""
        return self._presence(epoch, True, OfflineCause.NONE)

    def will(self, epoch: int) -> bytes:
        """Offline because the connection died."""
        return self._presence(epoch, False, OfflineCause.WILL)

    def goodbye(self, epoch: int) -> bytes:
        """Offline because the agent stopped."""
        return self._presence(epoch, False, OfflineCause.SHUTDOWN)


class AgentService:
    """One gateway agent. `run()` until `stop()`."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        registry: CollectorRegistry,
        make_udp_link: Callable[[UdpDevice, SessionCounters], DeviceLink],
        notifier: SystemdNotifier | None = None,
        ble_backends: BleBackends | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not is_valid_id(settings.gateway_id):
            raise ConfigError(
                f"gateway_id {settings.gateway_id!r} is not a valid id (letters, digits, ._:@-)"
            )
        self.settings = settings
        self.gateway_id = GatewayId(settings.gateway_id)
        self.tree = TopicTree(settings.mqtt.topic_prefix)
        self._now = now
        self._notifier = notifier or SystemdNotifier({})
        state = settings.state_path
        state.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(state / "journal.sqlite3")
        self.fence = FenceEpoch(state / "controller_epoch")
        """The highest controller epoch obeyed: commands from a fenced (older) leader are ignored."""
        self.fenced_commands = 0
        self.sequencer = ReportSequencer(self.gateway_id)
        self.inventory = Inventory(
            settings.discovery, on_change=self._publish_device, now=now, monotonic=monotonic
        )
        self.smp_counters = SessionCounters()
        """Totals over every SMP session of this agent (requests, timeouts, malformed replies)."""
        for device in settings.udp_devices:
            self.inventory.add_endpoint(make_udp_link(device, self.smp_counters), Transport.UDP)
        self.ble: BleDiscovery | None = None
        if settings.ble.enabled:
            backends = ble_backends or BleBackends()
            self.ble = BleDiscovery(
                settings.ble,
                self.inventory,
                smp_timeout_s=settings.discovery.smp_timeout_s,
                smp_counters=self.smp_counters,
                scanner_backend=backends.scanner,
                client_backend=backends.client,
            )
        downloads = settings.downloads
        self.fetcher = ArtifactFetcher(
            ArtifactCache(state / "artifacts", downloads.cache_max_bytes),
            DownloadPolicy(
                allowed_hosts=downloads.allowed_hosts,
                allow_http=downloads.allow_http,
                allow_private_addresses=downloads.allow_private_addresses,
                allowed_private_networks=downloads.allowed_private_networks,
                max_artifact_bytes=downloads.max_artifact_bytes,
                connect_timeout_s=downloads.connect_timeout_s,
                read_timeout_s=downloads.read_timeout_s,
                proxy_url=downloads.proxy_url,
            ),
        )
        jobs = settings.jobs
        self.runner = JobRunner(
            self.gateway_id,
            settings=RunnerSettings(
                concurrency=jobs.concurrency,
                upload_slots=jobs.upload_slots or jobs.concurrency,
                queue_size=jobs.queue_size,
                job=JobSettings(
                    first_chunk_timeout_s=jobs.first_chunk_timeout_s,
                    chunk_timeout_s=jobs.chunk_timeout_s,
                    reboot_timeout_s=jobs.reboot_timeout_s,
                ),
            ),
            journal=self.journal,
            fetcher=self.fetcher,
            publisher=self,
            find_link=self.inventory.link_for,
            await_link=self.inventory.wait_for_link,
            inventory_warm=lambda: self.inventory.warm,
            device_lock=self.inventory.device_lock,
            now=now,
            monotonic=monotonic,
        )
        self.mqtt_metrics = MqttMetrics(registry)
        registry.register(AgentCollector(self.metrics_readings))
        mqtt = settings.mqtt
        tls = TlsSettings(mqtt.ca_file, mqtt.cert_file, mqtt.key_file) if mqtt.ca_file else None
        self.session = MqttSession(
            MqttSettings(
                mqtt.host,
                mqtt.port,
                client_id=settings.gateway_id,
                username=mqtt.username or settings.gateway_id,
                password=mqtt.password,
                tls=tls,
                keepalive_s=mqtt.keepalive_s,
                session_expiry_s=mqtt.session_expiry_s,
                outbox_limit=mqtt.outbox_limit,
            ),
            tree=self.tree,
            subscriptions=[
                Subscription(self.tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id=self.gateway_id))
            ],
            handler=self._on_message,
            metrics=self.mqtt_metrics,
            presence=GatewayPresencePayloads(
                self.tree, self.gateway_id, settings.site, lambda: len(self.inventory.devices)
            ),
            epochs=EpochCounter(state / "epoch"),
            on_connected=self._on_connected,
        )
        self._in_flight_rows: set[int] = set()
        self._stop = asyncio.Event()
        self.results_published = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the session, the inventory and the jobs until `stop()`."""
        self._resend_journaled_results()
        session_task = asyncio.create_task(self.session.run(), name="mqtt-session")
        await self.runner.start()
        tasks = [
            asyncio.create_task(self.inventory.run(), name="inventory"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        if self.ble is not None:
            tasks.append(asyncio.create_task(self.ble.run(), name="ble-discovery"))
        try:
            await self._stop.wait()
        finally:
            self._notifier.stopping()
            await self.runner.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.session.stop()
            await session_task
            self.journal.close()

    async def stop(self) -> None:
        """Stop gracefully: jobs are interrupted (and resume at the next start), goodbye is sent."""
        self._stop.set()

    async def _housekeeping(self) -> None:
        """Ping the systemd watchdog and prune old finished jobs from the journal."""
        await self.session.connected.wait()
        self._notifier.ready(f"gateway {self.gateway_id} connected")
        interval_s = self._notifier.watchdog_interval_s or 30.0
        while True:
            self._notifier.watchdog()
            keep = timedelta(days=self.settings.jobs.keep_finished_days).total_seconds()
            self.journal.prune(self._now().timestamp() - keep)
            await asyncio.sleep(interval_s)

    # --- inbound ----------------------------------------------------------------------------

    async def _on_message(self, message: Inbound) -> None:
        command = message.message
        if isinstance(command, OtaCommand | CancelJob) and not self.fence.admit(command.controller_epoch):
            self.fenced_commands += 1
            log.warning(
                "command from a fenced controller",
                epoch=command.controller_epoch,
                highest=self.fence.highest,
                job=command.job_id,
            )
            return
        match command:
            case OtaCommand():
                log.info("command received", job=command.job_id, device=command.device_serial)
                await self.runner.submit(command)
            case CancelJob():
                self.runner.cancel(command)
            case RebirthRequest():
                self._republish_inventory()
            case _:
                log.warning("unexpected message", topic=message.topic, type=type(command).__name__)

    def _on_connected(self, epoch: int) -> None:
        """A new session: reports restart their sequence under the new epoch and are all sent again."""
        self.sequencer.start_session(epoch)
        self._republish_inventory()
        self._resend_journaled_results()

    # --- outbound ---------------------------------------------------------------------------

    def _republish_inventory(self) -> None:
        for device in list(self.inventory.devices.values()):
            self._publish_device(device)

    def _publish_device(self, device: KnownDevice) -> None:
        report = device.report(self.sequencer, self.settings.delta_capable_hardware)
        topic = self.tree.topic(
            TopicKind.DEVICE_REPORT, gateway_id=self.gateway_id, device_serial=report.device_serial
        )
        self._publish(Outbound(topic, channels.encode(report), qos=1, retain=True))
        self.inventory.stats.reports += 1
        credential = device.credential(self.gateway_id)
        if credential is not None:
            # Controller-only topic, never retained: the project key is a credential.
            topic = self.tree.topic(
                TopicKind.DEVICE_CREDENTIAL, gateway_id=self.gateway_id, device_serial=report.device_serial
            )
            self._publish(Outbound(topic, channels.encode(credential), qos=1))

    async def deliver_result(self, result: JobResult, *, finish_job: bool) -> None:
        """Send a result; a finishing job's result goes through the journal's durable outbox."""
        topic = self.tree.topic(TopicKind.JOB_RESULT, gateway_id=self.gateway_id, job_id=result.job_id)
        payload = channels.encode(result)
        if finish_job:
            self.journal.finish(
                result.job_id, result.outcome, self._now().timestamp(), (topic, payload, 1, False)
            )
            self._resend_journaled_results()
            self.inventory.refresh(result.device_serial)
        else:
            self._publish(Outbound(topic, payload, qos=1))

    def publish_progress(self, progress: JobProgress) -> None:
        """Progress is QoS 0 and droppable."""
        topic = self.tree.topic(TopicKind.JOB_PROGRESS, gateway_id=self.gateway_id, job_id=progress.job_id)
        self._publish(Outbound(topic, channels.encode(progress), qos=0))

    def _resend_journaled_results(self) -> None:
        for pending in self.journal.pending_messages():
            if pending.row_id in self._in_flight_rows:
                continue
            self._in_flight_rows.add(pending.row_id)
            self._publish(
                Outbound(
                    pending.topic,
                    pending.payload,
                    qos=pending.qos,
                    retain=pending.retain,
                    on_acknowledged=self._acknowledger(pending.row_id),
                )
            )

    def _acknowledger(self, row_id: int) -> Callable[[], None]:
        def acknowledge() -> None:
            self.journal.acknowledge(row_id)
            self._in_flight_rows.discard(row_id)
            self.results_published += 1

        return acknowledge

    def _publish(self, message: Outbound) -> None:
        with contextlib.suppress(MqttError):
            # A full outbox drops this message (counted by the session); reports are re-sent on the
            # next refresh and results stay in the journal, so nothing durable is lost.
            self.session.publish(message)

    # --- metrics ----------------------------------------------------------------------------

    def metrics_readings(self) -> AgentReadings:
        """A snapshot of the counts `/metrics` exposes (read on the scrape thread: copies only)."""
        inventory, smp, cache = self.inventory.stats, self.smp_counters, self.fetcher.cache
        return AgentReadings(
            devices_by_transport=dict(inventory.by_transport),
            probes=inventory.probes,
            probe_failures=inventory.probe_failures,
            reports_published=inventory.reports,
            smp_requests=smp.requests,
            smp_timeouts=smp.timeouts,
            smp_malformed_replies=smp.malformed_replies,
            smp_stray_replies=smp.stray_replies,
            jobs_by_outcome=dict(self.runner.outcomes),
            job_queue_depth=self.runner.queue_depth,
            uploaded_bytes=self.runner.uploaded_bytes,
            results_published=self.results_published,
            artifact_cache_bytes=cache.used_bytes(),
            artifact_cache_max_bytes=cache.max_bytes,
            artifact_cache_hits=cache.stats.hits,
            artifact_cache_misses=cache.stats.misses,
            artifact_downloaded_bytes=cache.stats.downloaded_bytes,
            commands_fenced=self.fenced_commands,
        )
