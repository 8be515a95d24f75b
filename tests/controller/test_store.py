"""The fleet store, run on SQLite and on a real PostgreSQL: registry rules, outbox, audit, lease fencing."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import pytest
from psycopg import conninfo

from controller.correlation_view import read_facts
from controller.errors import StaleLease, StoreError
from controller.store.database import PostgresDatabase, SqliteDatabase
from controller.store.fleet_store import CredentialOffer, FleetStore, PendingKeyChange, RolloutRecord
from controller.store.schema import MIGRATIONS
from schemas import (
    DeviceReport,
    DeviceSerial,
    GatewayId,
    GatewayPresence,
    OfflineCause,
    Reachability,
    Transport,
)

AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetStore]:
    """A migrated store on each backend (a private PostgreSQL schema per test)."""
    if request.param == "sqlite":
        instance = FleetStore(SqliteDatabase(tmp_path / "controller.sqlite3"))
        instance.migrate()
        yield instance
        instance.db.close()
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    instance = FleetStore(PostgresDatabase(conninfo.make_conninfo(dsn, options=f"-c search_path={schema}")))
    instance.migrate()
    yield instance
    instance.db.close()
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def report(
    gateway: str, serial: str, *, epoch: int = 1, seq: int = 1, version: str = "1.0.0", rssi: int = -60
) -> DeviceReport:
    return DeviceReport(
        gateway_id=GatewayId(gateway),
        epoch=epoch,
        seq=seq,
        device_serial=DeviceSerial(serial),
        hardware_version="nrf52840dk",
        software_type="app",
        current_version=version,
        transport=Transport.UDP,
        address="127.0.0.2:1337",
        rssi_dbm=rssi,
        seen_at=AT.replace(second=seq % 60),
    )


def test_migrate_twice_is_harmless(store: FleetStore) -> None:
    """Migrations are recorded and not applied again."""
    store.migrate()
    assert store.counts() == (0, 0)


def test_the_delta_flag_column_is_filled_from_stored_reports_on_upgrade(store: FleetStore) -> None:
    """A database from before `accepts_delta` had a column: the flag is read out of each report."""
    capable = msgspec.structs.replace(report("gw-1", "CAPABLE"), accepts_delta=True)
    store.apply_reports([capable, report("gw-1", "PLAIN")])
    # Back to the previous schema version, the flag lost: the last migration runs again.
    store.db.execute("UPDATE device SET accepts_delta = 0")
    store.db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) - 1,))
    store.db.execute("ALTER TABLE device DROP COLUMN accepts_delta")
    store.migrate()
    facts = {fact.serial: fact.accepts_delta for fact in read_facts(store)}
    assert facts == {"CAPABLE": True, "PLAIN": False}


def test_reports_are_applied_and_links_kept_per_gateway(store: FleetStore) -> None:
    """Two gateways hearing one device give one device with two links."""
    assert store.apply_reports([report("gw-1", "S1", rssi=-50), report("gw-2", "S1", rssi=-70)]) == 2
    (device,) = store.devices()
    assert device.serial == "S1" and device.current_version == "1.0.0"
    assert sorted((link.gateway_id, link.rssi_dbm) for link in device.links) == [("gw-1", -50), ("gw-2", -70)]


def test_stale_reports_never_overwrite_newer_ones(store: FleetStore) -> None:
    """An older epoch, or an older sequence within an epoch, is ignored."""
    store.apply_reports([report("gw-1", "S1", epoch=2, seq=5, rssi=-40)])
    store.apply_reports([report("gw-1", "S1", epoch=1, seq=9, rssi=-90)])
    store.apply_reports([report("gw-1", "S1", epoch=2, seq=4, rssi=-91)])
    (device,) = store.devices()
    assert device.links[0].rssi_dbm == -40
    store.apply_reports([report("gw-1", "S1", epoch=3, seq=1, rssi=-55)])
    assert store.devices()[0].links[0].rssi_dbm == -55


@pytest.mark.integration
def test_replicas_writing_overlapping_batches_in_opposite_orders_do_not_deadlock(postgres_dsn: str) -> None:
    """Two replicas' batches that share rows, in opposite orders, both commit on PostgreSQL.

    A restarted replica receives every retained report beside its peer's live share, so their
    batches overlap. A third connection holds the middle row until both writers wait: written in
    the order received, each then holds rows the other wants next and PostgreSQL aborts one.
    """
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    dsn = conninfo.make_conninfo(postgres_dsn, options=f"-c search_path={schema}")
    replicas = [FleetStore(PostgresDatabase(dsn)), FleetStore(PostgresDatabase(dsn))]
    replicas[0].migrate()
    serials = [f"S{index:02d}" for index in range(10)]
    replicas[0].apply_reports([report("gw-1", serial, seq=1) for serial in serials])
    errors: list[BaseException] = []

    def write(store: FleetStore, batch: list[DeviceReport]) -> None:
        try:
            store.apply_reports(batch)
        except StoreError as error:
            errors.append(error)

    try:
        with psycopg.connect(dsn) as gate:
            gate.execute("SELECT 1 FROM device_link WHERE serial = 'S05' FOR UPDATE")
            writers = [
                threading.Thread(
                    target=write, args=(replicas[0], [report("gw-1", s, seq=2) for s in serials])
                ),
                threading.Thread(
                    target=write, args=(replicas[1], [report("gw-1", s, seq=3) for s in reversed(serials)])
                ),
            ]
            for writer in writers:
                writer.start()
            with psycopg.connect(postgres_dsn, autocommit=True) as watch:
                deadline_s = time.monotonic() + 30
                while (
                    _backends_waiting_for_a_lock(watch, dsn) < len(writers) and time.monotonic() < deadline_s
                ):
                    time.sleep(0.01)
                assert _backends_waiting_for_a_lock(watch, dsn) == len(writers), "the writers never met"
            gate.rollback()
        for writer in writers:
            writer.join(30)
        assert errors == []
        assert {int(row[0]) for row in replicas[0].db.fetchall("SELECT seq FROM device_link")} == {3}
    finally:
        for replica in replicas:
            replica.db.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _backends_waiting_for_a_lock(watch: psycopg.Connection[tuple[object, ...]], dsn: str) -> int:
    database = conninfo.conninfo_to_dict(dsn).get("dbname")
    row = watch.execute(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
        (database,),
    ).fetchone()
    count = row[0] if row else 0
    assert isinstance(count, int)
    return count


def test_lost_reports_mark_the_link_unreachable(store: FleetStore) -> None:
    """A lost report keeps the device but marks that gateway's link unreachable."""
    store.apply_reports([report("gw-1", "S1", seq=1)])
    lost = report("gw-1", "S1", seq=2)
    store.apply_reports(
        [
            DeviceReport(
                **{**{f: getattr(lost, f) for f in lost.__struct_fields__}, "reachability": Reachability.LOST}
            )
        ]
    )
    (device,) = store.devices()
    assert device.links[0].reachable is False


def test_presence_follows_the_epoch_rule(store: FleetStore) -> None:
    """A newer birth wins; an older will is ignored; a will of the current epoch ends it."""

    def presence(epoch: int, online: bool) -> GatewayPresence:
        cause = OfflineCause.NONE if online else OfflineCause.WILL
        return GatewayPresence(gateway_id=GatewayId("gw-1"), epoch=epoch, online=online, cause=cause)

    assert store.apply_presence(presence(2, True), 1.0)
    assert not store.apply_presence(presence(1, False), 2.0)
    assert store.gateways()[0].online
    assert store.apply_presence(presence(2, False), 3.0)
    assert not store.gateways()[0].online


def test_transition_outbox_and_audit_are_saved_together(store: FleetStore) -> None:
    """A snapshot, its commands and audit lines land atomically; acknowledged commands go away."""
    epoch = store.acquire_lease("ctl-a", now_s=0.0, ttl_s=10.0)
    assert epoch is not None
    pending = store.save_transition(
        lease_epoch=epoch,
        rollouts=[RolloutRecord("r1", "running", b"snap")],
        commands=[("t/1", b"c1"), ("t/2", b"c2")],
        audit=[b'{"a":1}'],
        now_s=1.0,
    )
    assert [p.topic for p in store.pending_commands()] == ["t/1", "t/2"]
    store.acknowledge_command(pending[0].row_id)
    assert [p.payload for p in store.pending_commands()] == [b"c2"]
    assert store.load_rollouts() == [RolloutRecord("r1", "running", b"snap")]
    assert store.audit_events() == [b'{"a":1}']


def test_a_fenced_leader_cannot_write(store: FleetStore) -> None:
    """Once another controller takes the expired lease, the former leader's writes are refused."""
    old = store.acquire_lease("ctl-a", now_s=0.0, ttl_s=5.0)
    assert store.acquire_lease("ctl-b", now_s=1.0, ttl_s=5.0) is None
    new = store.acquire_lease("ctl-b", now_s=6.0, ttl_s=5.0)
    assert old is not None and new is not None and new > old
    with pytest.raises(StaleLease):
        store.save_transition(
            lease_epoch=old, rollouts=[RolloutRecord("r", "running", b"x")], commands=[], audit=[], now_s=7.0
        )
    assert store.load_rollouts() == []
    store.release_lease("ctl-b")
    assert (after := store.acquire_lease("ctl-a", now_s=7.0, ttl_s=5.0)) is not None and after > new


def test_lease_epochs_stay_above_the_clock_after_a_database_is_replaced(tmp_path: Path) -> None:
    """A fresh database still hands out epochs above any an agent obeyed (the wall-clock floor)."""
    first = FleetStore(SqliteDatabase(tmp_path / "old.sqlite3"))
    first.migrate()
    old = first.acquire_lease("ctl-a", now_s=1_000.0, ttl_s=5.0)
    first.db.close()
    replaced = FleetStore(SqliteDatabase(tmp_path / "new.sqlite3"))
    replaced.migrate()
    new = replaced.acquire_lease("ctl-a", now_s=1_010.0, ttl_s=5.0)
    replaced.db.close()
    assert old is not None and new is not None and new > old


def test_credentials_are_stored_for_memfault_queries(store: FleetStore) -> None:
    """Project keys are kept by serial and updated in place."""
    store.save_credential("S1", "key-1", "fp1")
    store.save_credential("S1", "key-2", "fp2")
    assert store.project_keys() == {"S1": "key-2"}


def test_inbox_items_leave_with_the_transition_that_handled_them(store: FleetStore) -> None:
    """Events wait in the inbox until a saved transition names them; replies are kept by request id."""
    store.add_to_inbox("job_result", b"r1", "", b"", 1.0)
    store.add_to_inbox("operator_request", b"q1", "reply/topic", b"corr", 2.0)
    items = store.inbox()
    assert [(i.kind, i.payload, i.reply_topic, i.correlation) for i in items] == [
        ("job_result", b"r1", "", b""),
        ("operator_request", b"q1", "reply/topic", b"corr"),
    ]
    epoch = store.acquire_lease("ctl-a", now_s=0.0, ttl_s=10.0)
    assert epoch is not None
    store.save_transition(
        lease_epoch=epoch,
        rollouts=[],
        commands=[],
        audit=[],
        now_s=3.0,
        handled_inbox=[items[0].row_id],
        replies=[("req-1", b"accepted")],
    )
    assert [i.payload for i in store.inbox()] == [b"q1"]
    assert store.reply_for("req-1") == b"accepted" and store.reply_for("req-2") is None


def test_a_first_project_key_is_saved_and_a_different_one_waits(store: FleetStore) -> None:
    """The first key (and the same key again) is saved; another key is parked until accepted."""
    assert store.offer_credential("K1", "key-a", "fa", "gw-1", 1.0) is CredentialOffer.SAVED
    assert store.offer_credential("K1", "key-a", "fa", "gw-2", 2.0) is CredentialOffer.SAVED
    assert store.offer_credential("K1", "key-b", "fb", "gw-2", 3.0) is CredentialOffer.PENDING
    assert store.offer_credential("K1", "key-b", "fb", "gw-2", 4.0) is CredentialOffer.PENDING_AGAIN
    assert store.offer_credential("K1", "key-c", "fc", "gw-3", 5.0) is CredentialOffer.PENDING
    assert store.project_key("K1") == "key-a"
    assert store.pending_key_change("K1") == PendingKeyChange("K1", "fc", "gw-3", 5.0)


def test_an_accepted_key_change_applies_only_to_the_named_fingerprint(store: FleetStore) -> None:
    """Accepting a fingerprint that is not the pending one changes nothing; the pending one moves."""
    store.offer_credential("K1", "key-a", "fa", "gw-1", 1.0)
    store.offer_credential("K1", "key-b", "fb", "gw-2", 2.0)
    epoch = store.acquire_lease("c1", 10.0, 30.0)
    assert epoch is not None
    store.save_transition(
        lease_epoch=epoch, rollouts=[], commands=[], audit=[], now_s=11.0, accepted_key_changes=[("K1", "fz")]
    )
    assert store.project_key("K1") == "key-a"
    store.save_transition(
        lease_epoch=epoch, rollouts=[], commands=[], audit=[], now_s=12.0, accepted_key_changes=[("K1", "fb")]
    )
    assert store.project_key("K1") == "key-b"
    assert store.pending_key_change("K1") is None


def test_inbox_items_keep_their_sender_and_audit_lines_append(store: FleetStore) -> None:
    """The inbox remembers which gateway's topic carried a job event; audit lines append unfenced."""
    store.add_to_inbox("job_result", b"{}", "", b"", 1.0, sender="gw-7")
    store.add_to_inbox("operator_request", b"{}", "reply/x", b"c", 2.0)
    assert [(item.kind, item.sender) for item in store.inbox()] == [
        ("job_result", "gw-7"),
        ("operator_request", ""),
    ]
    store.append_audit([b'{"a":1}', b'{"a":2}'], 3.0)
    assert store.audit_events()[-2:] == [b'{"a":1}', b'{"a":2}']


def test_inbox_batches_and_acknowledgement_batches_each_take_one_transaction(store: FleetStore) -> None:
    """A batch of inbox rows comes back with its ids in order; a batch of PUBACKs deletes those rows only."""
    row_ids = store.add_many_to_inbox(
        [("job_result", b"r1", "", b"", 1.0, "gw-1"), ("job_progress", b"p1", "", b"", 1.0, "gw-2")]
    )
    assert [(item.row_id, item.payload, item.sender) for item in store.inbox()] == [
        (row_ids[0], b"r1", "gw-1"),
        (row_ids[1], b"p1", "gw-2"),
    ]
    epoch = store.acquire_lease("ctl-a", now_s=0.0, ttl_s=10.0)
    assert epoch is not None
    pending = store.save_transition(
        lease_epoch=epoch, rollouts=[], commands=[(f"t/{i}", b"c") for i in range(5)], audit=[], now_s=1.0
    )
    store.acknowledge_commands([pending[0].row_id, pending[3].row_id])
    assert [p.topic for p in store.pending_commands()] == ["t/1", "t/2", "t/4"]


def test_rollout_device_rows_are_upserted_and_replaced_with_a_new_plan(store: FleetStore) -> None:
    """Changed rows overwrite their own, a new plan replaces them all, an unsent plan is kept."""
    epoch = store.acquire_lease("ctl-a", now_s=0.0, ttl_s=10.0)
    assert epoch is not None

    def save(record: RolloutRecord) -> None:
        store.save_transition(lease_epoch=epoch, rollouts=[record], commands=[], audit=[], now_s=1.0)

    save(RolloutRecord("r1", "planned", b"h1", b"plan1", [("A", b"a1"), ("B", b"b1")], replace_devices=True))
    save(RolloutRecord("r1", "running", b"h2", None, [("B", b"b2")]))
    assert store.load_rollouts() == [
        RolloutRecord("r1", "running", b"h2", b"plan1", (("A", b"a1"), ("B", b"b2")))
    ]
    save(RolloutRecord("r1", "planned", b"h3", b"plan2", [("C", b"c1")], replace_devices=True))
    assert store.load_rollouts() == [RolloutRecord("r1", "planned", b"h3", b"plan2", (("C", b"c1"),))]
