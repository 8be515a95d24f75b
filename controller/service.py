"""The controller service: joins the MQTT session, the ingest path, the store and the rollout scheduler.

Every replica ingests reports and presence from the shared subscription and queues job events and
operator requests in the store's inbox; the one replica holding the scheduler lease drains the
inbox, runs the rollouts and dispatches commands through the store's outbox. Requests get their
reply from the leader, so a request is acted on once whichever replica received it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import msgspec
import structlog
from prometheus_client import CollectorRegistry

from controller.correlation_view import CorrelationSettings
from controller.errors import ControllerError, StaleLease, StoreError
from controller.ingest import Ingest
from controller.memfault import MemfaultClient
from controller.metrics import ControllerCollector, ControllerReadings, RolloutReading
from controller.operator_auth import OperatorKeys
from controller.rollouts import RolloutCoordinator
from controller.settings import ControllerSettings
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore, PendingCommand
from schemas import (
    ControllerPresence,
    GatewayPresence,
    JobProgress,
    JobResult,
    OfflineCause,
    OperatorReply,
    RebirthRequest,
    ReplyStatus,
    TopicError,
    TopicKind,
    TopicTree,
    channels,
    is_valid_id,
)
from service_runtime.errors import MqttError
from service_runtime.mqtt import (
    Inbound,
    MqttSession,
    Outbound,
    Rejected,
    Subscription,
)
from service_runtime.mqtt_firehose import MqttFirehose, discard_session
from service_runtime.mqtt_metrics import MqttMetrics
from service_runtime.outbox import OutboxPump
from service_runtime.process import until_stopped
from service_runtime.settings import mqtt_settings
from service_runtime.systemd import SystemdNotifier

log = structlog.get_logger("mcufleet.controller")

FIREHOSE_WAIT_S = 30.0
STOP_STAGE_S = 8.0
"""How long shutdown waits for one stage (the firehose, the background tasks, the MQTT session):
a part that does not stop in time is logged and left behind, so `run()` always returns and a
SIGTERM never hangs the process (systemd would kill it mid-write otherwise)."""
INBOX_KINDS = {TopicKind.JOB_RESULT, TopicKind.OPERATOR_REQUEST}
"""Kinds queued in the store's inbox (results come from the job-event connection, requests from
the session). Job progress is not: it is QoS 0 liveness (it moves a job's no-progress deadline),
the leader takes it from memory at its next step and a standby drops it; storing six progress
messages per job cost the store more than the results themselves."""
JOB_EVENT_BATCH = 5_000
"""Job events decoded per turn of the event loop."""


class ControllerPresencePayloads:
    """Birth, will and goodbye of this replica (the birth says whether it leads)."""

    def __init__(self, tree: TopicTree, controller_id: str, is_leader: Callable[[], bool]) -> None:
        self.topic = tree.topic(TopicKind.CONTROLLER_PRESENCE, controller_id=controller_id)
        self._controller_id = controller_id
        self._is_leader = is_leader
        self._started_at = datetime.now(UTC)

    def _presence(self, epoch: int, online: bool, cause: OfflineCause) -> bytes:
        return channels.encode(
            ControllerPresence(
                controller_id=self._controller_id,  # type: ignore[arg-type]
                epoch=epoch,
                online=online,
                cause=cause,
                leader=online and self._is_leader(),
                started_at=self._started_at,
            )
        )

    def birth(self, epoch: int) -> bytes:
        """Online."""
        return self._presence(epoch, True, OfflineCause.NONE)

    def will(self, epoch: int) -> bytes:
        """Offline: the connection died."""
        return self._presence(epoch, False, OfflineCause.WILL)

    def goodbye(self, epoch: int) -> bytes:
        """Offline: stopped."""
        return self._presence(epoch, False, OfflineCause.SHUTDOWN)


class ControllerService:
    """One controller replica. `run()` until `stop()`."""

    def __init__(
        self,
        settings: ControllerSettings,
        *,
        store: FleetStore,
        memfault: MemfaultClient,
        registry: CollectorRegistry,
        notifier: SystemdNotifier | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        lease_store: FleetStore | None = None,
    ) -> None:
        """Wire a replica; `lease_store`, a second connection to the same database, holds the lease.

        Without it the lease shares `store`'s connection and thread, where a long store call (a
        fleet-wide read at 100k devices takes seconds) delays its renewals.
        """
        if not is_valid_id(settings.controller_id):
            raise ControllerError(f"controller_id {settings.controller_id!r} is not a valid id")
        self.settings = settings
        self.tree = TopicTree(settings.mqtt.topic_prefix)
        self.store = store
        self.executor = StoreExecutor()
        # The lease on a connection and thread of its own: its renewal never queues behind the
        # ingest's batches, a fleet scan or a step's save.
        self._lease_store = lease_store or store
        self._lease_executor = StoreExecutor() if lease_store is not None else self.executor
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._notifier = notifier or SystemdNotifier({})
        self.lease_epoch: int | None = None
        self.ingest = Ingest(
            store,
            self.executor,
            request_rebirth=self._request_rebirth,
            monotonic=monotonic,
            wall_clock=wall_clock,
            max_batch=settings.ingest.max_batch,
            linger_s=settings.ingest.linger_s,
            key_wait_s=settings.ingest.key_wait_s,
            rebirth_gateway_interval_s=settings.ingest.rebirth_gateway_interval_s,
            rebirth_fleet_per_s=settings.ingest.rebirth_fleet_per_s,
            rebirth_fleet_burst=settings.ingest.rebirth_fleet_burst,
            allowed_project_keys=settings.memfault.allowed_project_keys,
        )
        self.coordinator = RolloutCoordinator(
            store,
            self.executor,
            memfault,
            tree=self.tree,
            settings=settings.scheduler,
            operator_keys=OperatorKeys(settings.operator_auth),
            publish=self._publish,
            correlation=CorrelationSettings(
                refresh_after_s=settings.memfault.refresh_after_s,
                plan_max_age_s=settings.memfault.plan_max_age_s,
                plan_wait_s=settings.memfault.plan_wait_s,
                plan_wait_max_s=settings.memfault.plan_wait_max_s,
                dispatch_max_age_s=settings.memfault.dispatch_max_age_s,
            ),
        )
        # The view learns of changed facts from ingest (once its backlog is written), not by rereading
        # the fleet.
        self.ingest.on_facts.append(self.coordinator.correlation.observe)
        mqtt = settings.mqtt
        share = mqtt.share_group
        self.mqtt_metrics = MqttMetrics(registry)
        registry.register(ControllerCollector(self.metrics_readings))
        registry.register(memfault.latency)
        registry.register(self.coordinator.dispatch_latency)
        self.session = MqttSession(
            # The session expiry is short but not zero: what the broker queued survives a connection
            # drop or a broker restart, while a replica gone for good holds its share of the shared
            # subscriptions only until its session expires (mosquitto keeps assigning it its share).
            mqtt_settings(mqtt, client_id=settings.controller_id),
            tree=self.tree,
            subscriptions=[
                # Presence is not shared: every replica must get the retained presence of every
                # gateway (a shared subscription receives no retained messages, MQTT 5 §4.8.2).
                Subscription(self.tree.filter(TopicKind.GATEWAY_PRESENCE), qos=1),
                # Peers' presence: a replica gone for good still holds its share of the report stream.
                Subscription(self.tree.filter(TopicKind.CONTROLLER_PRESENCE), qos=1),
                *(
                    Subscription(self.tree.filter(kind), qos=1, share_group=share)
                    for kind in (TopicKind.OPERATOR_REQUEST,)
                ),
            ],
            handler=self._on_message,
            on_rejected=self._on_rejected,
            metrics=self.mqtt_metrics,
            presence=ControllerPresencePayloads(
                self.tree, settings.controller_id, lambda: self.lease_epoch is not None
            ),
        )
        # Device reports and credentials are the high-volume inbound stream (a fleet's rebirth after a
        # broker restart): they arrive on their own connection and thread, in each gateway's order.
        self._report_mqtt = mqtt_settings(mqtt, client_id=_report_client_id(settings.controller_id))
        self.firehose = MqttFirehose(
            self._report_mqtt,
            tree=self.tree,
            subscriptions=[
                Subscription(self.tree.filter(kind), qos=1, share_group=share)
                for kind in (TopicKind.DEVICE_CREDENTIAL, TopicKind.DEVICE_REPORT)
            ],
            on_ready=self.ingest.wake,
            metrics=self.mqtt_metrics,
        )
        # Job results and progress, the other stream that grows with the fleet (a result and several
        # progress messages per job), come on a connection and thread of their own too: on the
        # asyncio session their MQTT 5 parsing and per-message loop round trips took half of the
        # event loop at a few hundred results per second.
        self._event_mqtt = dataclasses.replace(
            self._report_mqtt, client_id=_event_client_id(settings.controller_id)
        )
        self.job_events = MqttFirehose(
            self._event_mqtt,
            tree=self.tree,
            subscriptions=[
                Subscription(self.tree.filter(TopicKind.JOB_RESULT), qos=1, share_group=share),
                Subscription(self.tree.filter(TopicKind.JOB_PROGRESS), qos=0, share_group=share),
            ],
            on_ready=self._wake_job_events,
            metrics=self.mqtt_metrics,
        )
        self._job_events_ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._inbox_ready = asyncio.Event()
        self._inbox_queue: list[tuple[tuple[str, bytes, str, bytes, float, str], object]] = []
        self._inbox_queued = asyncio.Event()
        self.outbox = OutboxPump(self.session.publish, self._acknowledged)
        """Commands handed to the session (kept across lease terms: the session still delivers them,
        so sending them again would duplicate the command); a refusal reads the store's outbox again."""
        self._acknowledged_rows: list[int] = []
        self._acks_ready = asyncio.Event()
        self._sweep_outbox = True
        """Read every pending command from the store at the next step (a new term)."""
        self._loaded_epoch: int | None = None
        self._peers_online: dict[str, bool] = {}
        self._peers_sharing: set[str] = set()
        self._peer_watch: dict[str, asyncio.Task[None]] = {}
        self.peer_sessions_discarded = 0
        """Report sessions of departed peers this replica deleted (each followed by rebirths)."""

    @property
    def is_leader(self) -> bool:
        """Whether this replica holds the scheduler lease."""
        return self.lease_epoch is not None

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`."""
        # Objects made during start-up (modules, settings, the store) are frozen out of every later
        # collection, and young collections wait for `gc_gen0_threshold` allocations: see the setting.
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(self.settings.ingest.gc_gen0_threshold, gen1, gen2)
        # Reports first: a rebirth asked for over the session must find the report stream listening.
        self._loop = asyncio.get_running_loop()
        self.ingest.attach(self.firehose, self._loop)
        self.firehose.start()
        self.job_events.start()
        await asyncio.to_thread(self.firehose.subscribed.wait, FIREHOSE_WAIT_S)
        await asyncio.to_thread(self.job_events.subscribed.wait, FIREHOSE_WAIT_S)
        session_task = asyncio.create_task(self.session.run(), name="mqtt-session")
        tasks = [
            asyncio.create_task(self.ingest.run(), name="ingest"),
            asyncio.create_task(self._hold_lease(), name="lease"),
            asyncio.create_task(self._schedule(), name="scheduler"),
            asyncio.create_task(self._take_job_events(), name="job-events"),
            asyncio.create_task(self._write_inbox(), name="inbox-writer"),
            asyncio.create_task(self._write_acknowledgements(), name="outbox-acks"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
        ]
        try:
            await until_stopped(self._stop, tasks)
        finally:
            self._notifier.stopping()
            # Reports and job events stop arriving first, so the last flush below writes everything
            # received.
            await _bounded(
                "firehose",
                asyncio.create_task(asyncio.to_thread(self.firehose.stop)),
                asyncio.create_task(asyncio.to_thread(self.job_events.stop)),
            )
            tasks.extend(self._peer_watch.values())
            for task in tasks:
                task.cancel()
            await _bounded("background tasks", *tasks)
            with contextlib.suppress(StoreError):
                await self.ingest.flush()
                self._queue_job_events()
                await self._flush_inbox()
                await self._flush_acknowledgements()
                await self._lease_executor.call(self._lease_store.release_lease, self.settings.controller_id)
            await self.session.stop()
            if not await _bounded("mqtt session", session_task):
                session_task.cancel()
            # The correlation view scans the store: it stops before the store's thread does.
            await _bounded("correlation view", asyncio.create_task(asyncio.to_thread(self.coordinator.close)))
            self.executor.shutdown()
            if self._lease_executor is not self.executor:
                self._lease_executor.shutdown()

    async def stop(self) -> None:
        """Stop gracefully: the lease is released so a standby takes over at once."""
        self._stop.set()

    async def _watchdog(self) -> None:
        await self.session.connected.wait()
        self._notifier.ready(f"controller {self.settings.controller_id} connected")
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(self._notifier.watchdog_interval_s or 30.0)

    # --- inbound -----------------------------------------------------------------------------

    async def _on_message(self, message: Inbound) -> None:
        payload = message.message
        kind = message.route.kind
        if kind is TopicKind.GATEWAY_PRESENCE and isinstance(payload, GatewayPresence):
            if payload.gateway_id == message.route.gateway_id:
                await self.ingest.add_presence(payload, self._wall_clock())
                if message.retain and payload.online:
                    # Credentials are never retained, and brokers that follow MQTT 5 (4.8.2) send
                    # no retained reports to a shared subscription (mosquitto 2 does, at every
                    # subscribe): a controller that just connected asks each live gateway for both.
                    self.ingest.request_rebirth_once(payload.gateway_id)
        elif kind is TopicKind.CONTROLLER_PRESENCE and isinstance(payload, ControllerPresence):
            if payload.controller_id == message.route.controller_id:
                self._on_peer_presence(payload)
        elif kind in INBOX_KINDS:
            # The bytes as received (already validated by the session's decode): nothing re-encoded.
            raw = message.payload or channels.encode(payload)  # type: ignore[arg-type]
            row = (
                kind.value,
                raw,
                message.response_topic,
                message.correlation_data,
                self._wall_clock(),
                # The topic's gateway is what the broker ACL vouches for, not the payload's id.
                message.route.gateway_id or "",
            )
            self._inbox_queue.append((row, payload))
            self._inbox_queued.set()

    def _wake_job_events(self) -> None:
        """The job-event connection's queue stopped being empty (paho's thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._job_events_ready.set)

    async def _take_job_events(self) -> None:
        """Results into the inbox queue, progress to the leader's memory, a batch per wake-up."""
        while True:
            await self._job_events_ready.wait()
            self._job_events_ready.clear()
            self._queue_job_events()
            # Give the loop back between batches: a burst never starves the scheduler or the session.
            await asyncio.sleep(0)

    def _queue_job_events(self) -> None:
        for route, message, _ in self.job_events.drain(JOB_EVENT_BATCH):
            sender = route.gateway_id or ""
            if isinstance(message, JobProgress):
                # Progress is liveness for the leader only: a standby has nobody to tell.
                if self.is_leader:
                    self.coordinator.note_progress(message, sender)
            elif isinstance(message, JobResult):
                # The topic's gateway is what the broker ACL vouches for, not the payload's id.
                row = (
                    TopicKind.JOB_RESULT.value,
                    channels.encode(message),
                    "",
                    b"",
                    self._wall_clock(),
                    sender,
                )
                self._inbox_queue.append((row, message))
                self._inbox_queued.set()
        if self.job_events.queued:
            self._job_events_ready.set()

    async def _write_inbox(self) -> None:
        """Write queued job events and requests to the store in batches (one transaction each)."""
        while True:
            await self._inbox_queued.wait()
            self._inbox_queued.clear()
            try:
                await self._flush_inbox()
            except StoreError as error:
                log.warning("cannot write the inbox", error=str(error))
                await asyncio.sleep(1.0)
                self._inbox_queued.set()

    async def _flush_inbox(self) -> None:
        batch, self._inbox_queue = self._inbox_queue, []
        if not batch:
            return
        try:
            row_ids = await self.executor.call(self.store.add_many_to_inbox, [row for row, _ in batch])
        except StoreError:
            self._inbox_queue[:0] = batch
            raise
        if self.is_leader:
            # The leader handles what it received itself without decoding the stored bytes again.
            self.coordinator.remember_decoded(zip(row_ids, (message for _, message in batch), strict=True))
        self._inbox_ready.set()

    async def _on_rejected(self, rejected: Rejected) -> None:
        """Answer a malformed operator request on its reply topic (there is nobody else to tell).

        Only a topic in the operator reply subtree gets an answer: the controller never publishes
        where a request says otherwise (it could name a gateway's command topic).
        """
        if rejected.route is None or rejected.route.kind is not TopicKind.OPERATOR_REQUEST:
            return
        if not rejected.response_topic:
            return
        try:
            reply_kind = self.tree.parse(rejected.response_topic).kind
        except TopicError:
            reply_kind = None
        if reply_kind is not TopicKind.OPERATOR_REPLY:
            self.coordinator.stats.reply_topics_refused += 1
            log.warning(
                "malformed operator request with a foreign response topic",
                topic=rejected.response_topic[:200],
            )
            return
        reply = OperatorReply(
            request_id="",
            status=ReplyStatus.REJECTED,
            reason="invalid_payload",
            message=str(rejected.error)[:256],
        )
        self._publish(
            Outbound(
                rejected.response_topic,
                channels.encode(reply),
                qos=1,
                correlation_data=rejected.correlation_data,
            )
        )

    # --- peers' report sessions ----------------------------------------------------------------

    def _on_peer_presence(self, presence: ControllerPresence) -> None:
        """Watch a peer replica: offline past the grace period, its report session is discarded."""
        peer = presence.controller_id
        if peer == self.settings.controller_id:
            return
        self._peers_online[peer] = presence.online
        # Online or not yet discarded, a peer's session takes its share of the report stream.
        self._peers_sharing.add(peer)
        self.ingest.set_shared(True)
        if presence.online or peer in self._peer_watch:
            return
        task = asyncio.get_running_loop().create_task(self._discard_peer_session(peer), name=f"peer-{peer}")
        self._peer_watch[peer] = task
        task.add_done_callback(lambda _: self._peer_watch.pop(peer, None))

    async def _discard_peer_session(self, peer: str) -> None:
        await asyncio.sleep(self.settings.ingest.peer_session_grace_s)
        if self._peers_online.get(peer, False):
            return  # it came back and took its session (and what waited in it) over
        discarded = await asyncio.to_thread(discard_session, self._report_mqtt, _report_client_id(peer))
        if not discarded:
            return
        # Its share of the job events goes too: results queued there would otherwise wait for a
        # peer that is not coming back (their jobs then end by their deadlines, as a lost result does).
        await asyncio.to_thread(discard_session, self._event_mqtt, _event_client_id(peer))
        self.peer_sessions_discarded += 1
        self._peers_sharing.discard(peer)
        self.ingest.set_shared(bool(self._peers_sharing))
        # What waited in the peer's session, or in its memory when it died, is asked for again.
        try:
            gateways = await self.executor.call(self.store.gateways)
        except StoreError as error:
            log.warning("cannot list gateways after a peer's death", peer=peer, error=str(error))
            return
        online = [gateway.gateway_id for gateway in gateways if gateway.online]
        log.info("discarded a departed peer's report session", peer=peer, rebirths=len(online))
        self.ingest.request_rebirths(online, f"controller {peer} departed")

    def _request_rebirth(self, gateway_id: str) -> None:
        topic = self.tree.topic(TopicKind.GATEWAY_COMMAND, gateway_id=gateway_id)
        self._publish(Outbound(topic, channels.encode(RebirthRequest(reason="report sequence gap")), qos=1))

    # --- scheduling (leader only) ------------------------------------------------------------

    async def _schedule(self) -> None:
        interval_s = self.settings.scheduler.tick_interval_s
        while True:
            # Cleared before the step, not after: what arrives during a step wakes the next at once.
            self._inbox_ready.clear()
            epoch = self.lease_epoch
            if epoch is not None:
                try:
                    if epoch != self._loaded_epoch:
                        await self.coordinator.load()
                        self._loaded_epoch = epoch
                        self._sweep_outbox = True
                    commands = await self.coordinator.step(epoch, self._wall_clock())
                    await self._publish_commands(commands)
                except StaleLease as error:
                    log.warning("lost the lease while scheduling", error=str(error))
                    self._lose_lease()
                    self._loaded_epoch = None
                except StoreError as error:
                    log.warning("store failed during a scheduler step", error=str(error))
                    # The step's changes were taken from the machines but not saved: start again from
                    # the store (its inbox items are still there), never from a memory that is ahead.
                    self._loaded_epoch = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbox_ready.wait(), interval_s)

    async def _hold_lease(self) -> None:
        """Take or renew the lease on its own clock: a step of any length never lets it lapse."""
        renew_s = self.settings.scheduler.lease_ttl_s / 3
        while True:
            try:
                await self._lead_or_stand_by()
            except Exception:  # A bug here must not stop renewals for good (the standby would lead).
                log.exception("lease renewal failed")
            await asyncio.sleep(renew_s)

    async def _lead_or_stand_by(self) -> None:
        settings = self.settings.scheduler
        store, holder, clock = self._lease_store, self.settings.controller_id, self._wall_clock

        def take_or_renew() -> int | None:
            # The clock is read on the lease thread, when the renewal runs, not when it was queued.
            return store.acquire_lease(holder, clock(), settings.lease_ttl_s)

        try:
            epoch = await self._lease_executor.call(take_or_renew)
        except StoreError as error:
            log.warning("cannot reach the store for the lease", error=str(error))
            self._lose_lease()
            return
        if epoch is None:
            self._lose_lease()
            return
        if epoch != self.lease_epoch:
            log.info("became the scheduler", epoch=epoch, previous=self.lease_epoch)
            # The scheduler task reloads the rollouts before its next step under this epoch.
            self.lease_epoch = epoch
            self._republish_birth()
            self._inbox_ready.set()

    def _lose_lease(self) -> None:
        if self.lease_epoch is not None:
            log.info("no longer the scheduler", epoch=self.lease_epoch)
            self.lease_epoch = None
            self._republish_birth()

    def _republish_birth(self) -> None:
        try:
            self.session.refresh_birth()
        except MqttError as error:
            log.warning("cannot republish the birth", error=str(error))

    async def _publish_commands(self, saved: list[PendingCommand]) -> None:
        """Hand commands to the session (it keeps many in flight); each row goes once per process."""
        if self._sweep_outbox or self.outbox.refused:
            self._sweep_outbox = False
            self.outbox.swept()
            saved = await self.executor.call(self.store.pending_commands)
        self.outbox.send(saved)

    def _acknowledged(self, row_id: int) -> None:
        self._acknowledged_rows.append(row_id)
        self._acks_ready.set()

    async def _write_acknowledgements(self) -> None:
        """Delete acknowledged outbox rows in batches (one transaction per batch of PUBACKs)."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready.clear()
            try:
                await self._flush_acknowledgements()
            except StoreError as error:
                log.warning("cannot mark commands acknowledged", error=str(error))
                await asyncio.sleep(1.0)
                self._acks_ready.set()

    async def _flush_acknowledgements(self) -> None:
        batch, self._acknowledged_rows = self._acknowledged_rows, []
        if not batch:
            return
        try:
            await self.executor.call(self.store.acknowledge_commands, batch)
        except StoreError:
            self._acknowledged_rows[:0] = batch
            raise
        self.outbox.settle(batch)

    def _publish(self, message: Outbound) -> bool:
        try:
            self.session.publish(message)
        except MqttError as error:
            # Counted by the session; what must arrive is sent again by its owner.
            log.warning("message not queued", topic=message.topic, error=str(error))
            return False
        return True

    # --- metrics -----------------------------------------------------------------------------

    def metrics_readings(self) -> ControllerReadings:
        """A snapshot of the counts `/metrics` exposes (read on the scrape thread: copies only)."""
        coordinator, ingest = self.coordinator, self.ingest.stats
        fleet, memfault, stats = coordinator.fleet_view, coordinator.memfault.stats, coordinator.stats
        return ControllerReadings(
            leader=self.is_leader,
            gateways_online=fleet.gateways_online,
            gateways_offline=fleet.gateways_offline,
            devices=fleet.devices,
            devices_by_version=dict(fleet.devices_by_version),
            reports_received=ingest.reports_received,
            reports_applied=ingest.reports_applied,
            report_gaps=ingest.gaps_detected,
            rebirths_requested=ingest.rebirths_requested,
            ingest_store_errors=ingest.store_errors,
            memfault_requests_by_status=dict(memfault.requests_by_status),
            memfault_cache_hits=memfault.cache_hits,
            memfault_cache_misses=memfault.cache_misses,
            memfault_unanswered_by_reason=dict(memfault.unanswered_by_reason),
            memfault_outage=bool(coordinator.correlation.outage()),
            memfault_answered_fraction=coordinator.correlation.freshness().answered_fraction,
            memfault_oldest_answer_age_s=coordinator.correlation.freshness().oldest_age_s,
            memfault_excluded_at_dispatch=stats.memfault_excluded,
            rollouts_by_status=coordinator.rollouts_by_status(),
            jobs=dict(stats.jobs),
            gate_decisions=dict(stats.gate_decisions),
            operator_requests=dict(stats.operator_requests),
            commands_dispatched=stats.dispatched,
            jobs_in_flight=coordinator.in_flight(),
            rollouts={
                rollout_id: RolloutReading(
                    msgspec.structs.asdict(machine.counts()), machine.state_wave(), machine.held_by_gate
                )
                for rollout_id, machine in list(coordinator.machines.items())
                if machine.plan is not None
            },
            operator_reply_topics_refused=stats.reply_topics_refused,
            job_progress_dropped=stats.progress_dropped,
            unreadable_rollouts=stats.unreadable_rollouts,
            gateway_messages_refused=_summed(self.ingest.stats.refused, coordinator.stats.refused),
        )


async def _bounded(stage: str, *tasks: asyncio.Task[object]) -> bool:
    """Wait up to `STOP_STAGE_S` for `tasks`; False (and a log line naming them) when some did not end."""
    _, pending = await asyncio.wait(tasks, timeout=STOP_STAGE_S)
    for task in tasks:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            log.warning("stopped with an error", stage=stage, task=task.get_name(), error=repr(error))
    if pending:
        log.error("did not stop in time", stage=stage, tasks=sorted(task.get_name() for task in pending))
    return not pending


def _summed(*sources: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Counts by label set, added up over every source."""
    total: dict[tuple[str, str], int] = {}
    for source in sources:
        for key, count in list(source.items()):
            total[key] = total.get(key, 0) + count
    return total


def _report_client_id(controller_id: str) -> str:
    """The client id of a replica's report connection (stable: its session outlives a reconnect)."""
    return f"{controller_id}-reports"


def _event_client_id(controller_id: str) -> str:
    """The client id of a replica's job-event connection (stable, like the report connection's)."""
    return f"{controller_id}-events"
