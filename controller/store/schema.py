"""The controller's tables, written once for both SQLite and PostgreSQL (types differ by dialect).

Migrations are numbered and applied in order inside a transaction; `schema_version` records the
last one applied, so a controller of a newer version upgrades the database on start.
"""

from __future__ import annotations

import enum
from typing import Final


class Dialect(enum.StrEnum):
    """The SQL dialects the store speaks."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"


_TYPES: Final = {
    Dialect.SQLITE: {
        "BLOB": "BLOB",
        "SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT": "INTEGER",
        "REPORT_ACCEPTS_DELTA": "COALESCE(json_extract(CAST(report AS TEXT), '$.accepts_delta'), 0)",
    },
    Dialect.POSTGRES: {
        "BLOB": "BYTEA",
        "SERIAL": "BIGSERIAL PRIMARY KEY",
        "BIGINT": "BIGINT",
        "REPORT_ACCEPTS_DELTA": "CASE WHEN (convert_from(report, 'UTF8')::jsonb ->> 'accepts_delta')"
        " = 'true' THEN 1 ELSE 0 END",
    },
}

MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE gateway (
        gateway_id TEXT PRIMARY KEY,
        epoch {BIGINT} NOT NULL,
        online BOOLEAN NOT NULL,
        cause TEXT NOT NULL,
        site TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        device_count INTEGER NOT NULL,
        changed_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE device (
        serial TEXT PRIMARY KEY,
        hardware_version TEXT NOT NULL,
        software_type TEXT NOT NULL,
        current_version TEXT NOT NULL,
        memfault TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,
        report {BLOB} NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE device_link (
        serial TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        epoch {BIGINT} NOT NULL,
        seq {BIGINT} NOT NULL,
        rssi_dbm INTEGER,
        reachable BOOLEAN NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (serial, gateway_id)
    );
    CREATE INDEX device_link_gateway ON device_link (gateway_id);
    CREATE TABLE credential (
        serial TEXT PRIMARY KEY,
        project_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL
    );
    CREATE TABLE rollout (
        rollout_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        snapshot {BLOB} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE command_outbox (
        id {SERIAL},
        topic TEXT NOT NULL,
        payload {BLOB} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE audit (
        id {SERIAL},
        at DOUBLE PRECISION NOT NULL,
        event {BLOB} NOT NULL
    );
    CREATE TABLE lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        epoch {BIGINT} NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    INSERT INTO lease (name, holder, epoch, expires_at) VALUES ('scheduler', '', 0, 0);
    """,
    """
    CREATE TABLE inbox (
        id {SERIAL},
        kind TEXT NOT NULL,
        payload {BLOB} NOT NULL,
        reply_topic TEXT NOT NULL,
        correlation {BLOB} NOT NULL,
        received_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE job_command (
        job_id TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        payload {BLOB} NOT NULL
    );
    CREATE TABLE operator_reply (
        request_id TEXT PRIMARY KEY,
        reply {BLOB} NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    """,
    # The gateway whose topic carried a job event (the only id the broker ACL vouches for), and
    # project key changes that wait for an operator.
    """
    ALTER TABLE inbox ADD COLUMN sender TEXT NOT NULL DEFAULT '';
    CREATE TABLE pending_key_change (
        serial TEXT PRIMARY KEY,
        project_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    """,
    # Persistence that follows change: a rollout row keeps a small header and (once) its plan, and
    # each device's record is its own row, written only when that device changed. `job_command`
    # fed a takeover re-send that was never wired: the outbox already re-sends what the broker did
    # not acknowledge, and the agent's journal answers a repeated job id.
    """
    ALTER TABLE rollout ADD COLUMN plan {BLOB};
    CREATE TABLE rollout_device (
        rollout_id TEXT NOT NULL,
        serial TEXT NOT NULL,
        record {BLOB} NOT NULL,
        PRIMARY KEY (rollout_id, serial)
    );
    DROP TABLE job_command;
    """,
    # No query reads links by gateway (routing and the registry scan the whole table), and the index
    # cost a b-tree insert per new link: about a tenth of a report's store time in a rebirth burst.
    """
    DROP INDEX IF EXISTS device_link_gateway;
    """,
    # Whether a device applies deltas, beside its report: planning reads the correlation facts of
    # the whole fleet, and reading each report's blob to find this flag was 60 % of that read.
    """
    ALTER TABLE device ADD COLUMN accepts_delta INTEGER NOT NULL DEFAULT 0;
    UPDATE device SET accepts_delta = {REPORT_ACCEPTS_DELTA};
    """,
)


def migration_statements(index: int, dialect: Dialect) -> list[str]:
    """The statements of migration `index` for `dialect`."""
    text = MIGRATIONS[index].format(**_TYPES[dialect])
    return [statement.strip() for statement in text.split(";") if statement.strip()]
