"""The registry's ingest path: device reports and presence from every gateway, batched into the store.

Device reports wait in their source's queue (the firehose: raw messages queued by its network
thread). When the queue stops being empty the source calls `wake`; the writer lets a burst gather
for `linger_s`, then drains it on the store thread a batch at a time: decode, sequence check and one
transaction per batch, so the event loop never touches a report. Gaps in a gateway session's report
sequence (a burst the broker dropped past its queue limit) are healed by asking that gateway for a
rebirth, at most once per `rebirth_interval_s` per gateway.

Credentials (project keys) pass the rules of `gateway_trust`: only projects on the allow-list,
and no silent change of key for a known device. A refused credential is counted by reason and
audited in the store (a key change once per new key, other refusals once per device and reason
while this process runs: gateways republish credentials with every rebirth).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

import structlog

from controller.gateway_trust import RefusalReason, RefusedKind, credential_refusal, key_fingerprint
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import CredentialOffer, FleetStore
from schemas import AuditEvent, DeviceCredential, DeviceReport, GatewayPresence, channels

log = structlog.get_logger("mcufleet.controller.ingest")

AUDITED_REFUSALS_KEPT: Final = 100_000
"""Refusals remembered as already audited before the memory is cleared (audited again after)."""


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
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    """Refused gateway messages by (kind, reason), see `gateway_trust.REFUSAL_LABELS`."""


class ReportSource(Protocol):
    """Where device reports wait until the writer drains them."""

    def drain_reports(self, limit: int) -> list[tuple[DeviceReport, bool]]:
        """Up to `limit` queued (report, retained) pairs, oldest first; bad ones already dropped."""
        ...

    @property
    def queued(self) -> int:
        """Messages still waiting (including ones `drain_reports` will drop)."""
        ...


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
        allowed_project_keys: Collection[str] = (),
    ) -> None:
        """Write into `store`; `allowed_project_keys` empty accepts any project (warned at start)."""
        self._store = store
        self._executor = executor
        self._request_rebirth = request_rebirth
        self._monotonic = monotonic
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._rebirth_interval_s = rebirth_interval_s
        self._source: ReportSource | None = None
        # Sequence and rebirth state is touched by the store thread (reports) and the loop
        # (presence): one lock guards it.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._last_rebirth: dict[str, float] = {}
        self._reborn: set[str] = set()
        self._keys_known: set[str] | None = None
        """Serials whose project key the store holds (None until loaded)."""
        self._allowed_keys = frozenset(allowed_project_keys)
        self._audited: set[tuple[str, str, str]] = set()
        self.stats = IngestStats()
        self.on_presence: list[Callable[[GatewayPresence], None]] = []
        """Listeners told about every accepted presence change (the scheduler reroutes on deaths)."""

    def attach(self, source: ReportSource, loop: asyncio.AbstractEventLoop) -> None:
        """Read reports from `source`; `loop` runs the writer. Call before the source starts."""
        self._source = source
        self._loop = loop

    def wake(self) -> None:
        """The source's queue stopped being empty (any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ready.set)

    # --- the writer --------------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches forever."""
        if not self._allowed_keys:
            log.warning(
                "no project key allow-list configured: credentials for any Memfault project are accepted",
                setting="memfault.allowed_project_keys",
            )
        self._keys_known = set(await self._executor.call(self._store.project_keys))
        self._ready.set()  # reports may have queued before the writer started
        while True:
            await self._ready.wait()
            self._ready.clear()
            # Let a burst gather: one transaction per few thousand reports, not per report.
            await asyncio.sleep(self._linger_s)
            await self.flush()

    async def flush(self) -> None:
        """Write every queued report to the store now (also on shutdown, after `run` was cancelled)."""
        while self._source is not None and self._source.queued:
            await self._executor.call(self._apply_batch, self._source)

    def _apply_batch(self, source: ReportSource) -> None:
        """On the store thread: drain one batch, check it and write it in one transaction."""
        drained = source.drain_reports(self._max_batch)
        with self._lock:
            for report, retained in drained:
                if not retained:
                    self._check_sequence(report)
                if (
                    report.project_key_fingerprint
                    and self._keys_known is not None
                    and report.device_serial not in self._keys_known
                ):
                    # Credentials are never retained: one sent while no controller listened is asked again.
                    self._rebirth(report.gateway_id, f"no project key for {report.device_serial}")
        batch = [report for report, _ in drained]
        applied = self._store.apply_reports(batch)
        self.stats.reports_received += len(batch)
        self.stats.batches += 1
        self.stats.reports_applied += applied
        self.stats.last_batch_size = len(batch)

    # --- sequence gaps and rebirths (callers hold the lock) -------------------------------------

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

    # --- presence and credentials (on the loop) -------------------------------------------------

    def request_rebirth_once(self, gateway_id: str) -> None:
        """Ask a gateway for a rebirth unless this process already did (retained presence on start)."""
        with self._lock:
            if gateway_id not in self._reborn:
                self._reborn.add(gateway_id)
                self._rebirth(gateway_id, "controller started")

    async def add_presence(self, presence: GatewayPresence, now_s: float) -> None:
        """Apply a presence message (epoch rule in the store) and tell listeners of changes."""
        changed = await self._executor.call(self._store.apply_presence, presence, now_s)
        if not changed:
            return
        self.stats.presence_changes += 1
        with self._lock:
            # Sequences of older sessions can be forgotten once a newer session is born.
            sequence = self.stats.sequence
            for key in [k for k in sequence if k[0] == presence.gateway_id and k[1] < presence.epoch]:
                del sequence[key]
        for listener in self.on_presence:
            listener(presence)

    async def add_credential(self, credential: DeviceCredential, sender: str, now_s: float) -> None:
        """Remember a project key that passes the trust rules (only its fingerprint ever leaves).

        `sender` is the gateway whose topic carried the credential; `now_s` dates an audit line.
        """
        saved = await self._executor.call(self._offer_credential, credential, sender, now_s)
        if saved and self._keys_known is not None:
            self._keys_known.add(credential.device_serial)

    def _offer_credential(self, credential: DeviceCredential, sender: str, now_s: float) -> bool:
        """On the store thread: save, park or refuse a credential. Returns whether it was saved."""
        serial = credential.device_serial
        known = self._store.project_key(serial)
        refusal = credential_refusal(
            sender=sender,
            claimed=credential.gateway_id,
            project_key=credential.project_key,
            fingerprint=credential.fingerprint,
            known_key=known,
            allowed_keys=self._allowed_keys,
        )
        if refusal is None or refusal is RefusalReason.PROJECT_KEY_CHANGED:
            offer = self._store.offer_credential(
                serial, credential.project_key, credential.fingerprint, sender, now_s
            )
            if offer is CredentialOffer.SAVED:
                return True
            refusal = RefusalReason.PROJECT_KEY_CHANGED
            audit = offer is CredentialOffer.PENDING
        else:
            audit = self._first_refusal(sender, serial, refusal)
        key = (RefusedKind.DEVICE_CREDENTIAL.value, refusal.value)
        with self._lock:
            self.stats.refused[key] = self.stats.refused.get(key, 0) + 1
        known_fingerprint = key_fingerprint(known) if known is not None else "none"
        log.warning(
            "credential refused",
            gateway=sender,
            device=serial,
            reason=refusal.value,
            fingerprint=credential.fingerprint,
            known=known_fingerprint,
        )
        if audit:
            detail = (
                f"device {serial} presents project key {credential.fingerprint} (known: {known_fingerprint})"
            )
            if refusal is RefusalReason.PROJECT_KEY_CHANGED:
                detail += "; pending until an operator sends accept_key_change with this fingerprint"
            event = AuditEvent(
                at=datetime.fromtimestamp(now_s, UTC),
                actor=f"gateway:{sender}"[:256],
                action=f"refused:{RefusedKind.DEVICE_CREDENTIAL.value}:{refusal.value}",
                detail=detail[:256],
            )
            self._store.append_audit([channels.encode(event)], now_s)
        return False

    def _first_refusal(self, sender: str, serial: str, reason: RefusalReason) -> bool:
        """Whether this (gateway, device, reason) refusal is new to this process (then it is audited)."""
        with self._lock:
            marker = (sender, serial, reason.value)
            if marker in self._audited:
                return False
            if len(self._audited) >= AUDITED_REFUSALS_KEPT:
                self._audited.clear()
            self._audited.add(marker)
            return True
