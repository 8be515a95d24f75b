"""The registry's ingest path: device reports, credentials and presence from every gateway, into the store.

Device reports and credentials wait in their source's queue (the firehose: raw messages queued by
its network thread, in the order each gateway sent them). When it stops being empty the writer
lets a burst gather for `linger_s`, then drains it on the store thread a batch at a time: decode,
sequence check, trust rules and one transaction per batch holding the credentials and the reports
together, so the event loop never touches either and a credential costs no commit of its own. A
batch the store refuses (PostgreSQL ended a deadlock, the connection dropped) is kept and written
again first, so the writer never drops what it drained.
Both are fleet-sized streams (a rebirth of 100k devices sends 100k of each): on the asyncio session
the credentials alone kept its event loop busy past the broker's keepalive.

A report naming a project key the store does not hold yet waits `key_wait_s` for its credential
(a gateway sends it beside the report on the same connection, but a backlog may hold it behind,
and with a shared subscription it may reach another replica). Only when the wait ends without a
key, in this replica's memory or in the shared store, is it counted and its gateway asked for a
rebirth, once per device: credentials are never retained,
so one sent while no controller listened comes back only through a rebirth, and storing the device
without ever asking would leave it unplannable. The report itself is stored at once (the key lives
in its own table). Gaps in a gateway session's report sequence are healed the same way. Rebirth
requests pass a token bucket per gateway and one for the fleet (`rebirth_limit`); one that must
wait is kept (one per gateway) and sent when tokens return.

Credentials (project keys) pass the rules of `gateway_trust`: only projects on the allow-list,
and no silent change of key for a known device. A refused credential is counted by reason and
audited in the store (a key change once per new key, other refusals once per device and reason
while this process runs: gateways republish credentials with every rebirth).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

import structlog

from controller.correlation import DeviceFacts
from controller.correlation_view import read_facts
from controller.errors import StoreError
from controller.gateway_trust import RefusalReason, RefusedKind, credential_refusal, key_fingerprint
from controller.rebirth_limit import RebirthLimiter
from controller.store.executor import StoreExecutor
from controller.store.fleet_store import FleetStore, PendingKeyChange
from schemas import AuditEvent, DeviceCredential, DeviceReport, GatewayPresence, channels
from schemas.topics import Route

log = structlog.get_logger("mcufleet.controller.ingest")

AUDITED_REFUSALS_KEPT: Final = 100_000
"""Refusals remembered as already audited before the memory is cleared (audited again after)."""


STORE_RETRY_S: Final = 1.0
"""How long the writer waits before writing a batch again after the store refused it."""
HOUSEKEEPING_S: Final = 0.5
"""How often expired key waits and rebirths held back by the buckets are looked at while idle."""
KEY_WAIT_BACKLOG_GRACE: Final = 3.0
"""How many more `key_wait_s` a key wait lasts while the source still has messages queued."""
MAX_AWAITING_KEYS: Final = 1_000_000
"""Devices waiting for a key at most (memory bound under hostile reports)."""


@dataclass
class IngestStats:
    """Ingest activity, read by the metrics collector."""

    reports_received: int = 0
    reports_applied: int = 0
    batches: int = 0
    presence_changes: int = 0
    gaps_detected: int = 0
    rebirths_requested: int = 0
    rebirths_held: int = 0
    """Rebirth requests the buckets held back (each sent later, once, or merged into another)."""
    credentials_received: int = 0
    credentials_saved: int = 0
    keys_awaited: int = 0
    """Reports whose project key was not known when they arrived (each then waited for it)."""
    keys_missing: int = 0
    """Devices whose key did not arrive within `key_wait_s` (each asked for by one rebirth)."""
    last_batch_size: int = 0
    store_errors: int = 0
    """Batches the store refused (each kept and written again: a deadlock, a lost connection)."""
    sequence: dict[tuple[str, int], int] = field(default_factory=dict)
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    """Refused gateway messages by (kind, reason), see `gateway_trust.REFUSAL_LABELS`."""


class IngestSource(Protocol):
    """Where device reports and credentials wait until the writer drains them (the firehose)."""

    def drain(self, limit: int) -> list[tuple[Route, object, bool]]:
        """Up to `limit` queued (route, decoded message, retained), oldest first; bad ones dropped."""
        ...

    @property
    def queued(self) -> int:
        """Messages still waiting."""
        ...


@dataclass(frozen=True, slots=True)
class _Offered:
    credential: DeviceCredential
    sender: str
    at_s: float


@dataclass(slots=True)
class _Decisions:
    """What one batch does with its credentials, decided inside its transaction."""

    saved: list[tuple[str, str, str]] = field(default_factory=list)
    pending: list[PendingKeyChange] = field(default_factory=list)
    pending_keys: list[str] = field(default_factory=list)
    audit: list[bytes] = field(default_factory=list)
    refused: list[tuple[_Offered, RefusalReason, str]] = field(default_factory=list)
    first_refusals: set[tuple[str, str, str]] = field(default_factory=set)
    """(gateway, device, reason) refusals audited by this batch, remembered once it commits."""


class Ingest:
    """Feeds reports, presence and credentials into the store."""

    def __init__(
        self,
        store: FleetStore,
        executor: StoreExecutor,
        *,
        request_rebirth: Callable[[str], None],
        monotonic: Callable[[], float],
        wall_clock: Callable[[], float],
        max_batch: int = 5000,
        linger_s: float = 0.05,
        key_wait_s: float = 15.0,
        rebirth_gateway_interval_s: float = 30.0,
        rebirth_fleet_per_s: float = 20.0,
        rebirth_fleet_burst: int = 100,
        allowed_project_keys: Collection[str] = (),
    ) -> None:
        """Write into `store`; `allowed_project_keys` empty accepts any project (warned at start)."""
        self._store = store
        self._executor = executor
        self._request_rebirth = request_rebirth
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._key_wait_s = key_wait_s
        self._limiter = RebirthLimiter(
            per_gateway_interval_s=rebirth_gateway_interval_s,
            fleet_per_s=rebirth_fleet_per_s,
            fleet_burst=rebirth_fleet_burst,
        )
        self._source: IngestSource | None = None
        # Sequence, key-wait and rebirth state is touched by the store thread (batches) and the loop
        # (presence): one lock guards it.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._wanted: dict[str, tuple[str, bool]] = {}
        """Gateways owed a rebirth, with why and whether only the fleet bucket applies (insertion
        order is fairness)."""
        self._shared = False
        self._reborn: set[str] = set()
        self._keys_known: set[str] | None = None
        """Serials whose project key the store holds (None until loaded)."""
        self._awaiting: dict[str, tuple[str, float]] = {}
        """Serial -> (gateway, monotonic deadline) of reports waiting for their key, oldest first."""
        self._key_asked: set[str] = set()
        self._held: set[str] = set()
        """Wanted gateways already counted as held back by the buckets."""
        self._allowed_keys = frozenset(allowed_project_keys)
        self._audited: set[tuple[str, str, str]] = set()
        self.stats = IngestStats()
        self.on_presence: list[Callable[[GatewayPresence], None]] = []
        """Listeners told about every accepted presence change (the scheduler reroutes on deaths)."""
        self.on_facts: list[Callable[[Sequence[DeviceFacts]], None]] = []
        """Listeners told, on the store thread, the correlation facts of the devices ingest reported
        or keyed (the correlation view asks Memfault for the changed ones). Told once the backlog is
        written: during a burst (100k devices coming online) the view's Memfault queries compete with
        the writer for the process (the 100k bench's ingest took 142 s with them beside it, 84 s
        without the view told at all)."""
        self._facts_due: set[str] = set()
        self._unwritten: tuple[list[tuple[DeviceReport, bool]], list[_Offered]] | None = None
        """A batch drained but not committed (the store refused it): written before anything new."""

    def attach(self, source: IngestSource, loop: asyncio.AbstractEventLoop) -> None:
        """Read reports and credentials from `source`; `loop` runs the writer. Call before it starts."""
        self._source = source
        self._loop = loop

    def wake(self) -> None:
        """The source's queue stopped being empty (any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ready.set)

    @property
    def awaiting_keys(self) -> int:
        """Devices whose report waits for its project key now."""
        return len(self._awaiting)

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), HOUSEKEEPING_S)
            if self._ready.is_set():
                self._ready.clear()
                # Let a burst gather: one transaction per few thousand messages, not per message.
                await asyncio.sleep(self._linger_s)
                try:
                    await self.flush()
                except StoreError as error:
                    # The writer outlives the store's refusals: when it ended here, every later
                    # report of this replica's share stayed unwritten and nothing said so.
                    self.stats.store_errors += 1
                    log.warning("cannot write reports; the batch is kept and written again", error=str(error))
                    await asyncio.sleep(STORE_RETRY_S)
                    self._ready.set()
            if self._awaiting or self._wanted:
                await self._executor.call(self._housekeep)

    def _has_work(self) -> bool:
        return self._unwritten is not None or (self._source is not None and self._source.queued > 0)

    async def flush(self) -> None:
        """Write every queued report and credential now (also on shutdown, after `run` was cancelled).

        Raises:
            StoreError: the store refused a batch; it is kept and written first by the next call.
        """
        while self._has_work():
            await self._executor.call(self._apply_batch)

    def _apply_batch(self) -> None:
        """On the store thread: drain one batch, check it and write it in one transaction.

        A batch the store refuses is kept as it was sorted (nothing is counted twice) and written
        again first: its transaction rolled back, so writing it again is exact.
        """
        if self._unwritten is not None:
            (drained, offered), self._unwritten = self._unwritten, None
        else:
            drained, offered = self._sort(self._source.drain(self._max_batch) if self._source else [])
        batch = [report for report, _ in drained]
        try:
            with self._store.db.transaction():
                decisions = self._decide(offered)
                applied = self._store.apply_ingest(
                    decisions.saved, decisions.pending, decisions.pending_keys, batch
                )
                if decisions.audit:
                    self._store.append_audit(decisions.audit, self._wall_clock())
        except StoreError:
            self._unwritten = (drained, offered)
            raise
        self._after_commit(decisions)
        if self.on_facts:
            self._facts_due.update(report.device_serial for report in batch)
            self._facts_due.update(serial for serial, _, _ in decisions.saved)
            if self._facts_due and not self._has_work():
                facts = read_facts(self._store, serials=sorted(self._facts_due))
                self._facts_due.clear()
                for listener in self.on_facts:
                    listener(facts)
        now_s = self._monotonic()
        with self._lock:
            known = self._keys_known
            for report, retained in drained:
                if not retained and not self._shared:
                    self._check_sequence(report)
                serial = report.device_serial
                if (
                    report.project_key_fingerprint
                    and known is not None
                    and serial not in known
                    and serial not in self._awaiting
                    and serial not in self._key_asked
                    and len(self._awaiting) < MAX_AWAITING_KEYS
                ):
                    self._awaiting[serial] = (report.gateway_id, now_s + self._key_wait_s)
                    self.stats.keys_awaited += 1
            self.stats.reports_received += len(batch)
            self.stats.credentials_received += len(offered)
            self.stats.batches += 1
            self.stats.reports_applied += applied
            self.stats.last_batch_size = len(batch)
        self._housekeep(now_s)

    def _sort(
        self, messages: list[tuple[Route, object, bool]]
    ) -> tuple[list[tuple[DeviceReport, bool]], list[_Offered]]:
        """Reports (with their retained flag) and credentials, each from the gateway of its topic."""
        reports: list[tuple[DeviceReport, bool]] = []
        offered: list[_Offered] = []
        at_s = self._wall_clock()
        for route, message, retained in messages:
            sender = route.gateway_id or ""
            if isinstance(message, DeviceReport):
                if message.gateway_id == sender:
                    reports.append((message, retained))
                    continue
                # The topic is what the broker's ACL vouches for: a report naming another gateway is
                # not believed (counted; logged once per gateway and device).
                key = (RefusedKind.DEVICE_REPORT.value, RefusalReason.TOPIC_MISMATCH.value)
                with self._lock:
                    self.stats.refused[key] = self.stats.refused.get(key, 0) + 1
                if self._first_refusal(sender, message.device_serial, RefusalReason.TOPIC_MISMATCH):
                    log.warning(
                        "report refused: names another gateway",
                        gateway=sender,
                        claimed=message.gateway_id,
                        device=message.device_serial,
                    )
            elif isinstance(message, DeviceCredential):
                offered.append(_Offered(message, sender, at_s))
        return reports, offered

    def _housekeep(self, now_s: float | None = None) -> None:
        """On the store thread: end expired key waits, then send the rebirths the buckets allow."""
        now_s = self._monotonic() if now_s is None else now_s
        # While messages are still queued the missing credential may be among them (a gateway sends
        # it right after the report, on the same connection): a backlog longer than the wait must
        # not cost a rebirth per device. The grace is bounded, so a flood cannot postpone it forever.
        backlog = self._source is not None and self._source.queued > 0
        grace_s = KEY_WAIT_BACKLOG_GRACE * self._key_wait_s if backlog else 0.0
        with self._lock:
            expired: list[tuple[str, str]] = []
            for serial, (gateway_id, deadline_s) in self._awaiting.items():
                if deadline_s + grace_s > now_s:
                    break  # deadlines grow with insertion order
                expired.append((serial, gateway_id))
            for serial, _ in expired:
                del self._awaiting[serial]
        if expired:
            # Another replica may have received the credential: the shared store has the last word.
            saved, _ = self._store.credential_keys([serial for serial, _ in expired])
            with self._lock:
                for serial, gateway_id in expired:
                    if serial in saved:
                        if self._keys_known is not None:
                            self._keys_known.add(serial)
                        continue
                    if len(self._key_asked) >= MAX_AWAITING_KEYS:
                        self._key_asked.clear()  # memory bound: at worst a device is asked for again
                    self._key_asked.add(serial)
                    self.stats.keys_missing += 1
                    self._want_rebirth(gateway_id, f"no project key for {serial} after {self._key_wait_s} s")
        with self._lock:
            self._pump_rebirths(now_s)

    # --- credentials (decided on the store thread, inside the batch's transaction) -------------

    def _decide(self, offered: list[_Offered]) -> _Decisions:
        decisions = _Decisions()
        if not offered:
            return decisions
        saved, pending = self._store.credential_keys([o.credential.device_serial for o in offered])
        for offer in offered:
            credential, serial = offer.credential, offer.credential.device_serial
            known = saved.get(serial)
            refusal = credential_refusal(
                sender=offer.sender,
                claimed=credential.gateway_id,
                project_key=credential.project_key,
                fingerprint=credential.fingerprint,
                known_key=known,
                allowed_keys=self._allowed_keys,
            )
            if refusal is None:
                saved[serial] = credential.project_key
                decisions.saved.append((serial, credential.project_key, credential.fingerprint))
                continue
            if refusal is RefusalReason.PROJECT_KEY_CHANGED:
                # Parked for an operator; audited once per new key, not on every rebirth.
                audit = pending.get(serial) != credential.project_key
                if audit:
                    pending[serial] = credential.project_key
                    decisions.pending.append(
                        PendingKeyChange(serial, credential.fingerprint, offer.sender, offer.at_s)
                    )
                    decisions.pending_keys.append(credential.project_key)
            else:
                audit = self._first_refusal(offer.sender, serial, refusal, decisions.first_refusals)
            known_fingerprint = key_fingerprint(known) if known is not None else "none"
            decisions.refused.append((offer, refusal, known_fingerprint))
            if audit:
                detail = (
                    f"device {serial} presents project key {credential.fingerprint}"
                    f" (known: {known_fingerprint})"
                )
                if refusal is RefusalReason.PROJECT_KEY_CHANGED:
                    detail += "; pending until an operator sends accept_key_change with this fingerprint"
                event = AuditEvent(
                    at=datetime.fromtimestamp(offer.at_s, UTC),
                    actor=f"gateway:{offer.sender}"[:256],
                    action=f"refused:{RefusedKind.DEVICE_CREDENTIAL.value}:{refusal.value}",
                    detail=detail[:256],
                )
                decisions.audit.append(channels.encode(event))
        return decisions

    def _after_commit(self, decisions: _Decisions) -> None:
        with self._lock:
            for marker in decisions.first_refusals:
                self._remember_refusal(marker)
            for serial, _, _ in decisions.saved:
                if self._keys_known is not None:
                    self._keys_known.add(serial)
                self._awaiting.pop(serial, None)
            self.stats.credentials_saved += len(decisions.saved)
            for _, refusal, _ in decisions.refused:
                key = (RefusedKind.DEVICE_CREDENTIAL.value, refusal.value)
                self.stats.refused[key] = self.stats.refused.get(key, 0) + 1
        for offer, refusal, known_fingerprint in decisions.refused:
            log.warning(
                "credential refused",
                gateway=offer.sender,
                device=offer.credential.device_serial,
                reason=refusal.value,
                fingerprint=offer.credential.fingerprint,
                known=known_fingerprint,
            )

    # --- sequence gaps and rebirths (callers hold the lock) -------------------------------------

    def _check_sequence(self, report: DeviceReport) -> None:
        key = (report.gateway_id, report.epoch)
        last = self.stats.sequence.get(key)
        self.stats.sequence[key] = max(last or 0, report.seq)
        if last is not None and report.seq > last + 1:
            self.stats.gaps_detected += 1
            self._want_rebirth(report.gateway_id, f"reports {last + 1}..{report.seq - 1} missing")

    def _want_rebirth(self, gateway_id: str, why: str, *, fleet_only: bool = False) -> None:
        # One rebirth republishes everything a gateway holds: wants for the same gateway merge.
        known = self._wanted.get(gateway_id)
        if known is None or (fleet_only and not known[1]):
            self._wanted[gateway_id] = (why, fleet_only)

    def _pump_rebirths(self, now_s: float) -> None:
        for gateway_id, (_, fleet_only) in list(self._wanted.items()):
            if not self._limiter.fleet_available(now_s) or not self._limiter.admit(
                gateway_id, now_s, fleet_only=fleet_only
            ):
                if gateway_id not in self._held:
                    self._held.add(gateway_id)
                    self.stats.rebirths_held += 1
                continue
            self._held.discard(gateway_id)
            why, _ = self._wanted.pop(gateway_id)
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
                self._want_rebirth(gateway_id, "controller started")
                self._pump_rebirths(self._monotonic())

    def request_rebirths(self, gateway_ids: Collection[str], why: str) -> None:
        """Ask these gateways for a rebirth through the fleet's bucket only (a departed peer's share).

        A gateway's own recent rebirth went partly to that peer, so its bucket does not apply.
        """
        with self._lock:
            for gateway_id in gateway_ids:
                self._want_rebirth(gateway_id, why, fleet_only=True)
            self._pump_rebirths(self._monotonic())

    def set_shared(self, shared: bool) -> None:
        """Whether peers share the report subscription (set by the service from their presence).

        A shared subscription hands each replica only its share of a gateway's sequence, so gaps
        mean nothing while it is shared: the check runs only while this replica reads alone, and
        starts afresh when it does again.
        """
        with self._lock:
            if self._shared and not shared:
                self.stats.sequence.clear()
            self._shared = shared

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

    def _first_refusal(
        self,
        sender: str,
        serial: str,
        reason: RefusalReason,
        batch: set[tuple[str, str, str]] | None = None,
    ) -> bool:
        """Whether this (gateway, device, reason) refusal is new to this process (then it is audited).

        With `batch` (a transaction's audit lines) the refusal is only collected there: it is
        remembered when that transaction commits, so a batch written again audits it again.
        """
        marker = (sender, serial, reason.value)
        with self._lock:
            if marker in self._audited or (batch is not None and marker in batch):
                return False
            if batch is None:
                self._remember_refusal(marker)
            else:
                batch.add(marker)
            return True

    def _remember_refusal(self, marker: tuple[str, str, str]) -> None:
        # Callers hold the lock.
        if len(self._audited) >= AUDITED_REFUSALS_KEPT:
            self._audited.clear()  # memory bound: at worst a refusal is audited again
        self._audited.add(marker)
