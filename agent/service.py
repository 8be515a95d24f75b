"""The agent service: joins the MQTT session, the inventory and the job runner of one gateway.

It constructs no adapter: `agent.factory.build_agent` chooses them and hands them over as
`AgentParts`. Inbound commands are decoded by the session (bad ones are counted and dropped there)
and routed here; reports, credentials, progress and results go out through the session's outbox.
Results travel through the journal's durable outbox first, so a crash between finishing a job and
the broker's acknowledgement re-sends the result at the next start instead of losing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry

from agent.artifacts import ArtifactFetcher
from agent.device_probe import KnownDevice, ReportSequencer
from agent.errors import ConfigError
from agent.inventory import Inventory
from agent.jobs import JobRunner, RunnerSettings
from agent.journal import Journal
from agent.link.device_link import DeviceLink
from agent.link.session import SessionCounters
from agent.metrics import AgentCollector, AgentReadings
from agent.ota import JobSettings
from agent.settings import AgentSettings
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
from service_runtime.epoch import FenceEpoch
from service_runtime.errors import MqttError
from service_runtime.mqtt import Inbound, Outbound, Subscription
from service_runtime.mqtt_metrics import MqttMetrics
from service_runtime.outbox import OutboxPump
from service_runtime.process import until_stopped
from service_runtime.systemd import SystemdNotifier

log = structlog.get_logger("mcufleet.agent")

AGENT_VERSION = "0.1.0"


class GatewayPresencePayloads:
    """Birth, will and goodbye of this gateway."""

    def __init__(
        self,
        tree: TopicTree,
        gateway_id: GatewayId,
        site: str,
        count: Callable[[], int],
        *,
        started_at: datetime,
    ) -> None:
        self.topic = tree.topic(TopicKind.GATEWAY_PRESENCE, gateway_id=gateway_id)
        self._gateway_id = gateway_id
        self._site = site
        self._count = count
        self._started_at = started_at

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


@dataclass(frozen=True, slots=True)
class Clock:
    """Wall-clock time (timestamps in messages) and monotonic time (intervals), injectable."""

    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    monotonic: Callable[[], float] = time.monotonic


class AgentMqtt(Protocol):
    """What the service needs of its MQTT session (`MqttSession`, or an in-memory fake in tests)."""

    connected: asyncio.Event
    """Set while connected, subscribed and born."""

    def publish(self, message: Outbound) -> None:
        """Queue a message for the broker.

        Raises:
            MqttError: the outbox is full.
        """
        ...

    async def run(self) -> None:
        """Keep the session up until `stop()`."""
        ...

    async def stop(self) -> None:
        """Say goodbye and end `run()`."""
        ...


@dataclass(frozen=True, slots=True)
class MqttHooks:
    """What the service hands its MQTT session: what to subscribe, whom to call, what to announce."""

    tree: TopicTree
    subscriptions: tuple[Subscription, ...]
    handler: Callable[[Inbound], Awaitable[None]]
    presence: GatewayPresencePayloads
    on_connected: Callable[[int], None]


class DeviceFinder(Protocol):
    """A discovery source that runs beside the inventory and adds endpoints to it (BLE scanning)."""

    async def run(self) -> None:
        """Discover until canceled."""
        ...


@dataclass(frozen=True, slots=True)
class AgentParts:
    """The adapters an AgentService is assembled from; `agent.factory.build_agent` chooses them."""

    journal: Journal
    fence: FenceEpoch
    """The highest controller epoch obeyed, kept across restarts."""
    fetcher: ArtifactFetcher
    endpoints: tuple[tuple[DeviceLink, Transport], ...]
    """The configured devices' links, with their transport kind."""
    smp_counters: SessionCounters
    """Shared by every link's sessions (a process's SMP totals)."""
    make_mqtt: Callable[[MqttHooks], AgentMqtt]
    registry: CollectorRegistry
    mqtt_metrics: MqttMetrics
    make_finder: Callable[[Inventory], DeviceFinder] | None = None
    notifier: SystemdNotifier = field(default_factory=lambda: SystemdNotifier({}))
    clock: Clock = field(default_factory=Clock)


def gateway_id_of(settings: AgentSettings) -> GatewayId:
    """The configured gateway id, checked.

    Raises:
        ConfigError: the id is not a valid contract id.
    """
    if not is_valid_id(settings.gateway_id):
        raise ConfigError(f"gateway_id {settings.gateway_id!r} is not a valid id (letters, digits, ._:@-)")
    return GatewayId(settings.gateway_id)


class AgentService:
    """One gateway agent. `run()` until `stop()`; built by `agent.factory.build_agent`."""

    def __init__(self, settings: AgentSettings, parts: AgentParts) -> None:
        """Join the parts to the agent's cores (inventory, job runner); constructs no adapter."""
        self.settings = settings
        self.gateway_id = gateway_id_of(settings)
        self.tree = TopicTree(settings.mqtt.topic_prefix)
        now, monotonic = parts.clock.now, parts.clock.monotonic
        self._now = now
        self._notifier = parts.notifier
        self.journal = parts.journal
        self.fence = parts.fence
        """The highest controller epoch obeyed: commands from a fenced (older) leader are ignored."""
        self.fenced_commands = 0
        self.sequencer = ReportSequencer(self.gateway_id)
        self.inventory = Inventory(
            settings.discovery, on_change=self._publish_device, now=now, monotonic=monotonic
        )
        self.smp_counters = parts.smp_counters
        """Totals over every SMP session of this agent (requests, timeouts, malformed replies)."""
        for link, transport in parts.endpoints:
            self.inventory.add_endpoint(link, transport)
        self.ble = None if parts.make_finder is None else parts.make_finder(self.inventory)
        self.fetcher = parts.fetcher
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
                    window=jobs.window.limits(),
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
        self.mqtt_metrics = parts.mqtt_metrics
        parts.registry.register(AgentCollector(self.metrics_readings))
        self.session = parts.make_mqtt(
            MqttHooks(
                tree=self.tree,
                subscriptions=(
                    Subscription(self.tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id=self.gateway_id)),
                ),
                handler=self._on_message,
                presence=GatewayPresencePayloads(
                    self.tree,
                    self.gateway_id,
                    settings.site,
                    lambda: len(self.inventory.devices),
                    started_at=now(),
                ),
                on_connected=self._on_connected,
            )
        )
        self.outbox = OutboxPump(self.session.publish, self._acknowledged)
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
            await until_stopped(self._stop, tasks)
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
        self.outbox.swept()
        self.outbox.send(self.journal.pending_messages())

    def _acknowledged(self, row_id: int) -> None:
        self.journal.acknowledge(row_id)
        self.outbox.settle((row_id,))
        self.results_published += 1

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
