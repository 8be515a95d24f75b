"""The agent's durable journal: accepted jobs and an outbox of results not yet acknowledged.

SQLite in the agent's state directory. A job id is accepted once and only once, so a duplicate
command can never run twice, even across restarts. A job's result and its outbox row are written in
one transaction, and the row is deleted only after the broker acknowledged the publish, so a result
is never lost. The upload counter is committed before the first byte goes to the device, so a crash
can never hide a flash.
"""

import enum
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from schemas import JobPhase, OtaCommand

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS job (
    job_id      TEXT PRIMARY KEY,
    device      TEXT NOT NULL,
    command     BLOB NOT NULL,
    state       TEXT NOT NULL,
    phase       TEXT NOT NULL,
    uploads     INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT,
    accepted_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL
);
"""


class JobState(enum.StrEnum):
    """Where a journaled job stands."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One accepted job as the journal knows it."""

    command: OtaCommand
    state: JobState
    phase: JobPhase
    uploads: int
    outcome: str | None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message that must reach the broker (deleted once acknowledged)."""

    row_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Journal:
    """The SQLite journal of one agent."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the journal at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a result acknowledged to nobody yet must survive a power cut of the gateway.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(OtaCommand)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def accept(self, command: OtaCommand, now_s: float) -> bool:
        """Record a new job; False when this job id was seen before (never run it twice)."""
        try:
            self._db.execute(
                "INSERT INTO job (job_id, device, command, state, phase, accepted_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    command.job_id,
                    command.device_serial,
                    self._encoder.encode(command),
                    JobState.QUEUED,
                    JobPhase.QUEUED,
                    now_s,
                ),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def get(self, job_id: str) -> JournalEntry | None:
        """The job with this id, if it was ever accepted."""
        row = self._db.execute(
            "SELECT command, state, phase, uploads, outcome FROM job WHERE job_id = ?", (job_id,)
        ).fetchone()
        return None if row is None else self._entry(row)

    def _entry(self, row: tuple[bytes, str, str, int, str | None]) -> JournalEntry:
        return JournalEntry(self._decoder.decode(row[0]), JobState(row[1]), JobPhase(row[2]), row[3], row[4])

    def set_phase(self, job_id: str, phase: JobPhase) -> None:
        """Record the phase a running job reached."""
        self._db.execute(
            "UPDATE job SET state = ?, phase = ? WHERE job_id = ? AND state != ?",
            (JobState.RUNNING, phase, job_id, JobState.FINISHED),
        )

    def count_upload(self, job_id: str) -> int:
        """Record that an image write to the device starts now; return the job's total."""
        self._db.execute("UPDATE job SET uploads = uploads + 1 WHERE job_id = ?", (job_id,))
        row = self._db.execute("SELECT uploads FROM job WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0]) if row else 0

    def finish(self, job_id: str, outcome: str, now_s: float, message: tuple[str, bytes, int, bool]) -> None:
        """Mark the job finished and queue its result for publishing, atomically."""
        topic, payload, qos, retain = message
        with self._transaction():
            self._db.execute(
                "UPDATE job SET state = ?, outcome = ?, finished_at = ? WHERE job_id = ?",
                (JobState.FINISHED, outcome, now_s, job_id),
            )
            self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                (topic, payload, qos, int(retain)),
            )

    def unfinished(self) -> list[JournalEntry]:
        """Jobs accepted but not finished (to resume after a restart), oldest first."""
        rows = self._db.execute(
            "SELECT command, state, phase, uploads, outcome FROM job WHERE state != ? ORDER BY accepted_at",
            (JobState.FINISHED,),
        ).fetchall()
        return [self._entry(row) for row in rows]

    def pending_messages(self) -> list[OutboxMessage]:
        """Results not yet acknowledged by the broker, in order."""
        rows = self._db.execute("SELECT id, topic, payload, qos, retain FROM outbox ORDER BY id").fetchall()
        return [OutboxMessage(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def acknowledge(self, row_id: int) -> None:
        """Forget an outbox message the broker acknowledged."""
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def prune(self, finished_before_s: float) -> int:
        """Drop finished jobs older than the given time (their ids may then be reused)."""
        cursor = self._db.execute(
            "DELETE FROM job WHERE state = ? AND finished_at < ?", (JobState.FINISHED, finished_before_s)
        )
        return cursor.rowcount

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
