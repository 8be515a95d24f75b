"""The controller's durable state: registry, rollouts, command outbox, audit log and scheduler lease.

The store is the truth, not the broker: device reports are applied idempotently (an older gateway
epoch, or an older sequence within one epoch, never overwrites a newer one), a rollout's snapshot
and the commands it dispatched are saved in one transaction, and every write by the scheduler is
fenced by the lease epoch, so a paused former leader that wakes up cannot write over its successor.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import msgspec

from controller.errors import StaleLease
from controller.store.database import Database
from controller.store.schema import MIGRATIONS, Dialect, migration_statements
from schemas import DeviceReport, GatewayPresence, Reachability, supersedes

_REPORT_ENCODER = msgspec.json.Encoder()
_REPORT_DECODER = msgspec.json.Decoder(DeviceReport)
_MIGRATION_LOCK = 0x6D6366_6C656574
"""The PostgreSQL advisory lock key migrations hold ("mcfleet")."""
_IN_CHUNK = 500
"""Serials per `IN (...)` list (SQLite allows 32,766 parameters; PostgreSQL 65,535)."""


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    """A gateway as the registry knows it."""

    gateway_id: str
    epoch: int
    online: bool
    cause: str
    site: str
    agent_version: str
    device_count: int
    changed_at_s: float


@dataclass(frozen=True, slots=True)
class LinkRecord:
    """One gateway hearing one device."""

    gateway_id: str
    rssi_dbm: int | None
    reachable: bool
    seen_at_s: float


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device, its latest report and every gateway that hears it."""

    serial: str
    hardware_version: str
    software_type: str
    current_version: str
    memfault: str
    key_fingerprint: str
    report: DeviceReport
    links: tuple[LinkRecord, ...]


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A rollout as saved: its header snapshot, its plan (when it changed) and changed device rows."""

    rollout_id: str
    status: str
    snapshot: bytes
    plan: bytes | None = None
    """Saved only when a new plan was adopted (None keeps the stored one)."""
    devices: Sequence[tuple[str, bytes]] = ()
    """(serial, record) of devices whose record changed; on load, every device of the rollout."""
    replace_devices: bool = False
    """Delete the rollout's stored device rows first (a new plan replaces the device set)."""


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A job event or operator request received by any replica, waiting for the leader."""

    row_id: int
    kind: str
    payload: bytes
    reply_topic: str
    correlation: bytes
    sender: str = ""
    """The gateway whose topic carried a job event ("" for operator requests)."""


class CredentialOffer(enum.StrEnum):
    """What `offer_credential` did with a project key."""

    SAVED = "saved"
    """The device's first key (or the same key again)."""
    PENDING = "pending"
    """A different key for a known device: parked until an operator accepts it (new or changed)."""
    PENDING_AGAIN = "pending_again"
    """The same different key again: it was already waiting."""


@dataclass(frozen=True, slots=True)
class PendingKeyChange:
    """A project key change waiting for an operator."""

    serial: str
    fingerprint: str
    gateway_id: str
    at_s: float


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A command saved with its rollout transition and not yet acknowledged by the broker."""

    row_id: int
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class FleetStore:
    """All controller state, on one database connection."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # PostgreSQL runs transactions concurrently: lock the lease row so two controllers cannot both
        # take it, and a successor waits for a fenced write in progress. SQLite's BEGIN IMMEDIATE
        # already serialises writers.
        self._lock_row = " FOR UPDATE" if db.dialect is Dialect.POSTGRES else ""

    def migrate(self) -> None:
        """Apply every migration the database has not seen."""
        with self.db.transaction():
            if self.db.dialect is Dialect.POSTGRES:
                # Replicas starting together on a fresh database would race to create the tables.
                self.db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = self.db.fetchall("SELECT version FROM schema_version")
            current = int(rows[0][0]) if rows else 0
            for index in range(current, len(MIGRATIONS)):
                for statement in migration_statements(index, self.db.dialect):
                    self.db.execute(statement)
            if not rows:
                self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
            else:
                self.db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    # --- registry ----------------------------------------------------------------------------

    def apply_presence(self, presence: GatewayPresence, now_s: float) -> bool:
        """Record a gateway birth or death unless an equal or newer session is known (epoch rule)."""
        with self.db.transaction():
            rows = self.db.fetchall(
                "SELECT epoch, online FROM gateway WHERE gateway_id = ?", (presence.gateway_id,)
            )
            epoch, online = (int(rows[0][0]), bool(rows[0][1])) if rows else (None, None)
            if not supersedes(epoch, online, presence):
                return False
            self.db.execute(
                "INSERT INTO gateway (gateway_id, epoch, online, cause, site, agent_version, device_count,"
                " changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET"
                " epoch = excluded.epoch,"
                " online = excluded.online, cause = excluded.cause, site = excluded.site,"
                " agent_version = excluded.agent_version, device_count = excluded.device_count,"
                " changed_at = excluded.changed_at",
                (
                    presence.gateway_id,
                    presence.epoch,
                    presence.online,
                    presence.cause.value,
                    presence.site,
                    presence.agent_version,
                    presence.device_count,
                    now_s,
                ),
            )
        return True

    def apply_reports(self, reports: Sequence[DeviceReport]) -> int:
        """Apply a batch of device reports; stale ones are skipped. Returns how many were applied."""
        if not reports:
            return 0
        # Within a batch, keep only the newest report per (gateway, device).
        newest: dict[tuple[str, str], DeviceReport] = {}
        for report in reports:
            key = (report.gateway_id, report.device_serial)
            known = newest.get(key)
            if known is None or (report.epoch, report.seq) > (known.epoch, known.seq):
                newest[key] = report
        # One pass builds both tables' rows (this runs for every report of a fleet's rebirth burst).
        links: list[tuple[object, ...]] = []
        devices: list[tuple[object, ...]] = []
        present_state, encode = Reachability.PRESENT, _REPORT_ENCODER.encode
        # Rows in key order: replicas writing overlapping batches at once (a restarted replica gets
        # every retained report beside its peer's share) then lock rows in one order and cannot
        # deadlock; PostgreSQL aborted one of two such transactions when each held a row the other
        # wanted next.
        for r in sorted(newest.values(), key=_link_key):
            seen_at_s = r.seen_at.timestamp()
            present = r.reachability is present_state
            links.append((r.device_serial, r.gateway_id, r.epoch, r.seq, r.rssi_dbm, present, seen_at_s))
            if present and r.current_version:
                devices.append(
                    (
                        r.device_serial,
                        r.hardware_version,
                        r.software_type,
                        r.current_version,
                        r.memfault.value,
                        r.project_key_fingerprint,
                        encode(r),
                        seen_at_s,
                        int(r.accepts_delta),
                    )
                )
        with self.db.transaction():
            # The WHERE on the update makes an old (epoch, seq) a no-op: stale input is ignored.
            self.db.executemany(
                "INSERT INTO device_link (serial, gateway_id, epoch, seq, rssi_dbm, reachable, seen_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial, gateway_id) DO UPDATE SET"
                " epoch = excluded.epoch, seq = excluded.seq, rssi_dbm = excluded.rssi_dbm,"
                " reachable = excluded.reachable, seen_at = excluded.seen_at"
                " WHERE excluded.epoch > device_link.epoch OR"
                " (excluded.epoch = device_link.epoch AND excluded.seq > device_link.seq)",
                links,
            )
            self.db.executemany(
                "INSERT INTO device (serial, hardware_version, software_type, current_version, memfault,"
                " key_fingerprint, report, updated_at, accepts_delta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (serial) DO UPDATE SET hardware_version = excluded.hardware_version,"
                " software_type = excluded.software_type, current_version = excluded.current_version,"
                " memfault = excluded.memfault, key_fingerprint = excluded.key_fingerprint,"
                " report = excluded.report, updated_at = excluded.updated_at,"
                " accepts_delta = excluded.accepts_delta"
                " WHERE excluded.updated_at >= device.updated_at",
                devices,
            )
        return len(newest)

    def offer_credential(
        self, serial: str, project_key: str, fingerprint: str, gateway_id: str, now_s: float
    ) -> CredentialOffer:
        """Save a device's first project key; park a different key for a known device as pending."""
        with self.db.transaction():
            rows = self.db.fetchall("SELECT project_key FROM credential WHERE serial = ?", (serial,))
            if not rows or str(rows[0][0]) == project_key:
                self.save_credential(serial, project_key, fingerprint)
                return CredentialOffer.SAVED
            waiting = self.db.fetchall(
                "SELECT project_key FROM pending_key_change WHERE serial = ?", (serial,)
            )
            if waiting and str(waiting[0][0]) == project_key:
                return CredentialOffer.PENDING_AGAIN
            self.db.execute(
                "INSERT INTO pending_key_change (serial, project_key, fingerprint, gateway_id, at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial) DO UPDATE SET"
                " project_key = excluded.project_key, fingerprint = excluded.fingerprint,"
                " gateway_id = excluded.gateway_id, at = excluded.at",
                (serial, project_key, fingerprint, gateway_id, now_s),
            )
            return CredentialOffer.PENDING

    def credential_keys(self, serials: Collection[str]) -> tuple[dict[str, str], dict[str, str]]:
        """(saved project keys, keys pending an operator) of these devices, by serial."""
        saved: dict[str, str] = {}
        pending: dict[str, str] = {}
        ordered = sorted(set(serials))
        for start in range(0, len(ordered), _IN_CHUNK):
            chunk = ordered[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            # Only placeholders are formatted in; the serials travel as parameters.
            for serial, key in self.db.fetchall(
                f"SELECT serial, project_key FROM credential WHERE serial IN ({marks})",  # noqa: S608
                chunk,
            ):
                saved[str(serial)] = str(key)
            for serial, key in self.db.fetchall(
                f"SELECT serial, project_key FROM pending_key_change WHERE serial IN ({marks})",  # noqa: S608
                chunk,
            ):
                pending[str(serial)] = str(key)
        return saved, pending

    def apply_ingest(
        self,
        credentials: Sequence[tuple[str, str, str]],
        pending: Sequence[PendingKeyChange],
        pending_keys: Sequence[str],
        reports: Sequence[DeviceReport],
    ) -> int:
        """Save credentials, park key changes and apply reports in one transaction.

        `credentials` are (serial, key, fingerprint); `pending_keys[i]` is the project key of
        `pending[i]`. Returns how many reports were applied.
        """
        with self.db.transaction():
            if credentials:
                credentials = sorted(credentials)  # key order, as in `apply_reports` (no deadlock)
                self.db.executemany(
                    "INSERT INTO credential (serial, project_key, fingerprint) VALUES (?, ?, ?)"
                    " ON CONFLICT (serial) DO UPDATE SET project_key = excluded.project_key,"
                    " fingerprint = excluded.fingerprint",
                    credentials,
                )
            if pending:
                self.db.executemany(
                    "INSERT INTO pending_key_change (serial, project_key, fingerprint, gateway_id, at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial) DO UPDATE SET"
                    " project_key = excluded.project_key, fingerprint = excluded.fingerprint,"
                    " gateway_id = excluded.gateway_id, at = excluded.at",
                    [
                        (change.serial, key, change.fingerprint, change.gateway_id, change.at_s)
                        for change, key in zip(pending, pending_keys, strict=True)
                    ],
                )
            return self.apply_reports(reports)

    def pending_key_change(self, serial: str) -> PendingKeyChange | None:
        """The key change waiting for an operator for this device, if any."""
        rows = self.db.fetchall(
            "SELECT serial, fingerprint, gateway_id, at FROM pending_key_change WHERE serial = ?", (serial,)
        )
        return (
            PendingKeyChange(str(rows[0][0]), str(rows[0][1]), str(rows[0][2]), float(rows[0][3]))
            if rows
            else None
        )

    def append_audit(self, events: Sequence[bytes], now_s: float) -> None:
        """Append audit lines outside a rollout transition (any replica may: the log is append-only)."""
        self.db.executemany(
            "INSERT INTO audit (at, event) VALUES (?, ?)", [(now_s, event) for event in events]
        )

    def save_credential(self, serial: str, project_key: str, fingerprint: str) -> None:
        """Remember a device's Memfault project key (never published anywhere)."""
        self.db.execute(
            "INSERT INTO credential (serial, project_key, fingerprint) VALUES (?, ?, ?)"
            " ON CONFLICT (serial) DO UPDATE SET project_key = excluded.project_key,"
            " fingerprint = excluded.fingerprint",
            (serial, project_key, fingerprint),
        )

    def project_keys(self) -> dict[str, str]:
        """Project keys by device serial."""
        return {str(s): str(k) for s, k in self.db.fetchall("SELECT serial, project_key FROM credential")}

    def project_key(self, serial: str) -> str | None:
        """One device's project key."""
        rows = self.db.fetchall("SELECT project_key FROM credential WHERE serial = ?", (serial,))
        return str(rows[0][0]) if rows else None

    def gateways(self) -> list[GatewayRecord]:
        """Every gateway ever seen."""
        rows = self.db.fetchall(
            "SELECT gateway_id, epoch, online, cause, site, agent_version, device_count, changed_at"
            " FROM gateway ORDER BY gateway_id"
        )
        return [
            GatewayRecord(
                str(r[0]), int(r[1]), bool(r[2]), str(r[3]), str(r[4]), str(r[5]), int(r[6]), float(r[7])
            )
            for r in rows
        ]

    def devices(self) -> list[DeviceRecord]:
        """Every device with a report, with the gateways that hear it."""
        links: dict[str, list[LinkRecord]] = {}
        for serial, gateway_id, rssi, reachable, seen_at in self.db.fetchall(
            "SELECT serial, gateway_id, rssi_dbm, reachable, seen_at FROM device_link"
        ):
            links.setdefault(str(serial), []).append(
                LinkRecord(
                    str(gateway_id), None if rssi is None else int(rssi), bool(reachable), float(seen_at)
                )
            )
        rows = self.db.fetchall(
            "SELECT serial, hardware_version, software_type, current_version, memfault, key_fingerprint,"
            " report FROM device ORDER BY serial"
        )
        return [
            DeviceRecord(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                str(r[5]),
                _REPORT_DECODER.decode(bytes(r[6])),
                tuple(links.get(str(r[0]), ())),
            )
            for r in rows
        ]

    def links(self) -> list[tuple[str, str, int | None, bool]]:
        """(serial, gateway, rssi, reachable) for every link: what routing needs, and nothing more."""
        rows = self.db.fetchall("SELECT serial, gateway_id, rssi_dbm, reachable FROM device_link")
        return [(str(r[0]), str(r[1]), None if r[2] is None else int(r[2]), bool(r[3])) for r in rows]

    def device_facts(self, serial: str) -> tuple[str, str, str] | None:
        """(hardware version, software type, current version) of one device."""
        rows = self.db.fetchall(
            "SELECT hardware_version, software_type, current_version FROM device WHERE serial = ?", (serial,)
        )
        return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    def devices_of_type(self, software_type: str) -> list[tuple[str, str, str]]:
        """(serial, hardware version, current version) of every device of a software type."""
        rows = self.db.fetchall(
            "SELECT serial, hardware_version, current_version FROM device WHERE software_type = ?"
            " ORDER BY serial",
            (software_type,),
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def versions(self) -> dict[tuple[str, str], int]:
        """Devices per (software type, running version)."""
        rows = self.db.fetchall(
            "SELECT software_type, current_version, COUNT(*) FROM device"
            " GROUP BY software_type, current_version"
        )
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    def counts(self) -> tuple[int, int]:
        """(gateways, devices) known."""
        gateways = self.db.fetchall("SELECT COUNT(*) FROM gateway")[0][0]
        devices = self.db.fetchall("SELECT COUNT(*) FROM device")[0][0]
        return int(gateways), int(devices)

    # --- rollouts, outbox, audit (fenced by the lease epoch) -----------------------------------

    def load_rollouts(self) -> list[RolloutRecord]:
        """Every rollout: header, plan and all of its device rows."""
        devices: dict[str, list[tuple[str, bytes]]] = {}
        for rollout_id, serial, record in self.db.fetchall(
            "SELECT rollout_id, serial, record FROM rollout_device ORDER BY rollout_id, serial"
        ):
            devices.setdefault(str(rollout_id), []).append((str(serial), bytes(record)))
        rows = self.db.fetchall("SELECT rollout_id, status, snapshot, plan FROM rollout ORDER BY created_at")
        return [
            RolloutRecord(
                str(r[0]),
                str(r[1]),
                bytes(r[2]),
                None if r[3] is None else bytes(r[3]),
                tuple(devices.get(str(r[0]), ())),
            )
            for r in rows
        ]

    def rollout_exists(self, rollout_id: str) -> bool:
        """Whether a rollout with this id was ever created."""
        return bool(self.db.fetchall("SELECT 1 FROM rollout WHERE rollout_id = ?", (rollout_id,)))

    def add_to_inbox(
        self,
        kind: str,
        payload: bytes,
        reply_topic: str,
        correlation: bytes,
        now_s: float,
        *,
        sender: str = "",
    ) -> None:
        """Queue a job event or operator request for the leader (any replica may receive it).

        `sender` is the gateway whose topic carried a job event.
        """
        self.db.execute(
            "INSERT INTO inbox (kind, payload, reply_topic, correlation, received_at, sender)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (kind, payload, reply_topic, correlation, now_s, sender),
        )

    def add_many_to_inbox(self, items: Sequence[tuple[str, bytes, str, bytes, float, str]]) -> list[int]:
        """Queue many (kind, payload, reply topic, correlation, received at, sender) in one transaction.

        Returns the row ids, in order (the leader keeps the decoded messages under them).
        """
        with self.db.transaction():
            return self.db.insert_returning_ids(
                "INSERT INTO inbox (kind, payload, reply_topic, correlation, received_at, sender)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                items,
            )

    def inbox(self, limit: int = 10_000) -> list[InboxItem]:
        """The oldest inbox items (removed by `save_transition` once handled)."""
        rows = self.db.fetchall(
            "SELECT id, kind, payload, reply_topic, correlation, sender FROM inbox ORDER BY id LIMIT ?",
            (limit,),
        )
        return [InboxItem(int(r[0]), str(r[1]), bytes(r[2]), str(r[3]), bytes(r[4]), str(r[5])) for r in rows]

    def reply_for(self, request_id: str) -> bytes | None:
        """The reply already given to this operator request id (requests act once)."""
        rows = self.db.fetchall("SELECT reply FROM operator_reply WHERE request_id = ?", (request_id,))
        return bytes(rows[0][0]) if rows else None

    def save_transition(
        self,
        *,
        lease_epoch: int,
        rollouts: Sequence[RolloutRecord],
        commands: Sequence[tuple[str, bytes]],
        audit: Sequence[bytes],
        now_s: float,
        handled_inbox: Sequence[int] = (),
        replies: Sequence[tuple[str, bytes]] = (),
        accepted_key_changes: Sequence[tuple[str, str]] = (),
    ) -> list[PendingCommand]:
        """Save rollout changes, commands, audit lines, handled inbox items and replies atomically.

        Each rollout writes its header, its plan only when it changed, and only its changed devices.

        `accepted_key_changes` are (serial, fingerprint) pairs an operator accepted: each pending key
        with that fingerprint becomes the device's key in the same transaction.

        Raises:
            StaleLease: another controller took the lease since `lease_epoch` was granted.
        """
        with self.db.transaction():
            epoch_rows = self.db.fetchall(self._lease_query("epoch"))
            if int(epoch_rows[0][0]) != lease_epoch:
                raise StaleLease(f"lease epoch {lease_epoch} was superseded by {epoch_rows[0][0]}")
            self.db.executemany(
                "INSERT INTO rollout (rollout_id, status, snapshot, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (rollout_id) DO UPDATE SET status = excluded.status,"
                " snapshot = excluded.snapshot, updated_at = excluded.updated_at",
                [(r.rollout_id, r.status, r.snapshot, now_s, now_s) for r in rollouts],
            )
            for record in rollouts:
                if record.plan is not None:
                    self.db.execute(
                        "UPDATE rollout SET plan = ? WHERE rollout_id = ?", (record.plan, record.rollout_id)
                    )
                if record.replace_devices:
                    self.db.execute("DELETE FROM rollout_device WHERE rollout_id = ?", (record.rollout_id,))
            self.db.executemany(
                "INSERT INTO rollout_device (rollout_id, serial, record) VALUES (?, ?, ?)"
                " ON CONFLICT (rollout_id, serial) DO UPDATE SET record = excluded.record",
                [(r.rollout_id, serial, device) for r in rollouts for serial, device in r.devices],
            )
            self.db.executemany(
                "INSERT INTO audit (at, event) VALUES (?, ?)", [(now_s, event) for event in audit]
            )
            self.db.executemany("DELETE FROM inbox WHERE id = ?", [(row_id,) for row_id in handled_inbox])
            self.db.executemany(
                "INSERT INTO operator_reply (request_id, reply, at) VALUES (?, ?, ?)"
                " ON CONFLICT (request_id) DO NOTHING",
                [(request_id, reply, now_s) for request_id, reply in replies],
            )
            for serial, fingerprint in accepted_key_changes:
                self._accept_key_change(serial, fingerprint)
            ids = self.db.insert_returning_ids(
                "INSERT INTO command_outbox (topic, payload, created_at) VALUES (?, ?, ?)",
                [(topic, payload, now_s) for topic, payload in commands],
            )
        return [
            PendingCommand(row_id, topic, payload)
            for row_id, (topic, payload) in zip(ids, commands, strict=True)
        ]

    def _accept_key_change(self, serial: str, fingerprint: str) -> None:
        rows = self.db.fetchall(
            "SELECT project_key FROM pending_key_change WHERE serial = ? AND fingerprint = ?",
            (serial, fingerprint),
        )
        if rows:
            self.save_credential(serial, str(rows[0][0]), fingerprint)
            self.db.execute("DELETE FROM pending_key_change WHERE serial = ?", (serial,))

    def pending_commands(self) -> list[PendingCommand]:
        """Commands saved but not yet acknowledged by the broker, oldest first."""
        rows = self.db.fetchall("SELECT id, topic, payload FROM command_outbox ORDER BY id")
        return [PendingCommand(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def acknowledge_command(self, row_id: int) -> None:
        """The broker acknowledged this command."""
        self.db.execute("DELETE FROM command_outbox WHERE id = ?", (row_id,))

    def acknowledge_commands(self, row_ids: Sequence[int]) -> None:
        """The broker acknowledged these commands (one transaction for a whole window of PUBACKs)."""
        with self.db.transaction():
            self.db.executemany("DELETE FROM command_outbox WHERE id = ?", [(row_id,) for row_id in row_ids])

    def audit_events(self, limit: int = 1000) -> list[bytes]:
        """The newest audit events, oldest first."""
        rows = self.db.fetchall("SELECT event FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [bytes(r[0]) for r in reversed(rows)]

    # --- leadership ---------------------------------------------------------------------------

    def acquire_lease(self, holder: str, now_s: float, ttl_s: float) -> int | None:
        """Take or renew the scheduler lease; returns its epoch, or None while another holds it.

        Taking the lease from another holder (or after it expired) bumps the epoch, which fences
        every write of the previous holder. The new epoch is also at least the wall clock in
        milliseconds: agents remember the highest epoch they obeyed across restarts, so a database
        restored from a backup (or a new one) must still hand out epochs above every earlier one.
        """
        with self.db.transaction():
            rows = self.db.fetchall(self._lease_query("holder, epoch, expires_at"))
            current_holder, epoch, expires_at = str(rows[0][0]), int(rows[0][1]), float(rows[0][2])
            if current_holder == holder and expires_at >= now_s:
                self.db.execute("UPDATE lease SET expires_at = ? WHERE name = 'scheduler'", (now_s + ttl_s,))
                return epoch
            if current_holder and current_holder != holder and expires_at >= now_s:
                return None
            new_epoch = max(epoch + 1, int(now_s * 1000))
            self.db.execute(
                "UPDATE lease SET holder = ?, epoch = ?, expires_at = ? WHERE name = 'scheduler'",
                (holder, new_epoch, now_s + ttl_s),
            )
            return new_epoch

    def _lease_query(self, columns: str) -> str:
        # Both parts are constants of this file; nothing from outside reaches this SQL.
        return f"SELECT {columns} FROM lease WHERE name = 'scheduler'{self._lock_row}"  # noqa: S608

    def release_lease(self, holder: str) -> None:
        """Give the lease up (a clean shutdown lets a standby take over at once)."""
        self.db.execute(
            "UPDATE lease SET holder = '', expires_at = 0 WHERE name = 'scheduler' AND holder = ?", (holder,)
        )


def _link_key(report: DeviceReport) -> tuple[str, str]:
    """The order `apply_reports` writes rows in: the `device_link` key, whose first part is `device`'s."""
    return (report.device_serial, report.gateway_id)
