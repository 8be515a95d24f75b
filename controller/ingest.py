"""The registry's ingest path: device reports and presence from every gateway, batched into the store.

The MQTT handler only appends to an in-memory batch, so the session keeps reading at broker speed;
one task writes batches in a worker thread. Gaps in a gateway session's report sequence (a burst
the broker dropped past its queue limit) are healed by asking that gateway for a rebirth, at most
once per `rebirth_interval_s` per gateway.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore
from schemas import DeviceCredential, DeviceReport, GatewayPresence

log = structlog.get_logger("mcufleet.controller.ingest")


@dataclass
class IngestStats:
    """Ingest activity, read by the metrics collector."""

    reports_received: int = 0
    reports_applied: int = 0
    batches: int = 0
    presence_changes: int = 0
    gaps_detected: int = 0
    rebirths_requested: int = 0
    last_batch_size: int = 0
    sequence: dict[tuple[str, int], int] = field(default_factory=dict)


class Ingest:
    """Feeds reports, presence and credentials into the store."""

    def __init__(
        self,
        store: FleetStore,
        executor: StoreExecutor,
        *,
        request_rebirth: Callable[[str], None],
        monotonic: Callable[[], float],
        max_batch: int = 5000,
        linger_s: float = 0.1,
        rebirth_interval_s: float = 30.0,
    ) -> None:
        self._store = store
        self._executor = executor
        self._request_rebirth = request_rebirth
        self._monotonic = monotonic
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._rebirth_interval_s = rebirth_interval_s
        self._batch: list[DeviceReport] = []
        # Reports may arrive on a network thread (the firehose): the batch and the sequence state are
        # guarded by a lock, and the loop is woken only when a batch starts.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._last_rebirth: dict[str, float] = {}
        self._reborn: set[str] = set()
        self._keys_known: set[str] | None = None
        """Serials whose project key the store holds (None until loaded)."""
        self.stats = IngestStats()
        self.on_presence: list[Callable[[GatewayPresence], None]] = []
        """Listeners told about every accepted presence change (the scheduler reroutes on deaths)."""

    # --- called from the MQTT handler (fast, never blocks) -------------------------------------

    def add_report(self, report: DeviceReport, *, retained: bool) -> None:
        """Queue a report for the next batch and check its gateway's sequence (any thread)."""
        with self._lock:
            self.stats.reports_received += 1
            if not retained:
                self._check_sequence(report)
            if (
                report.project_key_fingerprint
                and self._keys_known is not None
                and report.device_serial not in self._keys_known
            ):
                # Credentials are never retained: one sent while no controller listened is asked again.
                self._rebirth(report.gateway_id, f"no project key for {report.device_serial}")
            starts_batch = not self._batch
            self._batch.append(report)
        if starts_batch and self._loop is not None:
            self._loop.call_soon_threadsafe(self._batch_started)

    def _batch_started(self) -> None:
        self._ready.set()

    def _check_sequence(self, report: DeviceReport) -> None:
        key = (report.gateway_id, report.epoch)
        last = self.stats.sequence.get(key)
        self.stats.sequence[key] = max(last or 0, report.seq)
        if last is not None and report.seq > last + 1:
            self.stats.gaps_detected += 1
            self._rebirth(report.gateway_id, f"reports {last + 1}..{report.seq - 1} missing")

    def _rebirth(self, gateway_id: str, why: str) -> None:
        now_s = self._monotonic()
        if now_s - self._last_rebirth.get(gateway_id, -self._rebirth_interval_s) < self._rebirth_interval_s:
            return
        self._last_rebirth[gateway_id] = now_s
        self.stats.rebirths_requested += 1
        log.info("asking for a rebirth", gateway=gateway_id, why=why)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._request_rebirth, gateway_id)

    def request_rebirth_once(self, gateway_id: str) -> None:
        """Ask a gateway for a rebirth unless this process already did (retained presence on start)."""
        if gateway_id not in self._reborn:
            self._reborn.add(gateway_id)
            self._rebirth(gateway_id, "controller started")

    async def add_presence(self, presence: GatewayPresence, now_s: float) -> None:
        """Apply a presence message (epoch rule in the store) and tell listeners of changes."""
        changed = await self._executor.call(self._store.apply_presence, presence, now_s)
        if not changed:
            return
        self.stats.presence_changes += 1
        # Sequences of older sessions can be forgotten once a newer session is born.
        for key in [k for k in self.stats.sequence if k[0] == presence.gateway_id and k[1] < presence.epoch]:
            del self.stats.sequence[key]
        for listener in self.on_presence:
            listener(presence)

    async def add_credential(self, credential: DeviceCredential) -> None:
        """Remember a project key (only its fingerprint ever leaves the controller)."""
        await self._executor.call(
            self._store.save_credential,
            credential.device_serial,
            credential.project_key,
            credential.fingerprint,
        )

    # --- the writer --------------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Name the loop that writes batches, before any other thread can add a report."""
        self._loop = loop

    async def run(self) -> None:
        """Write batches forever."""
        self._loop = asyncio.get_running_loop()
        self._keys_known = set(await self._executor.call(self._store.project_keys))
        with self._lock:
            if self._batch:
                self._batch_started()
        while True:
            await self._ready.wait()
            self._ready.clear()
            if len(self._batch) < self._max_batch:
                # Let a burst accumulate: one transaction per few thousand reports, not per report,
                # keeps the writer thread from competing with the receiving loop for the GIL.
                await asyncio.sleep(self._linger_s)
            await self.flush()

    async def flush(self) -> None:
        """Write every queued report to the store now (also on shutdown, after `run` was cancelled)."""
        while True:
            with self._lock:
                batch, self._batch = self._batch[: self._max_batch], self._batch[self._max_batch :]
            if not batch:
                break
            applied = await self._executor.call(self._store.apply_reports, batch)
            self.stats.batches += 1
            self.stats.reports_applied += applied
            self.stats.last_batch_size = len(batch)
