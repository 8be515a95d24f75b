"""Two thin database adapters (sqlite3, psycopg 3) behind one tiny interface the store uses.

SQL is written once with `?` placeholders; the PostgreSQL adapter rewrites them to `%s`. Driver
errors become `StoreError` here, so nothing above this file knows which driver runs.

Why the SQLite adapter rewrites statements: Python's sqlite3 releases the GIL around every
`sqlite3_step`, that is once per row read or written. The controller's store thread shares the GIL
with the scheduler's loop, the correlation view's loop and two paho threads; each time it releases
the GIL, a busy thread takes it and the store thread waits up to the switch interval (5 ms) to get
it back. Measured (`tests/controller/test_database.py` keeps the shapes): 500 rows read while two
threads spin took 5.6 s instead of 3 ms, and in the 10k system benchmark the store thread spent
its whole time in such waits, which capped job results near 200/s. So a store call here steps a
bounded number of times, whatever its row count:

- `executemany` of an `INSERT ... VALUES (?, ...)` (upserts included) runs as multi-row VALUES
  statements, and of a `DELETE ... WHERE key = ?` as `WHERE key IN (...)`, in chunks;
- `fetchall` of a query (`SELECT`/`WITH`) aggregates every row into one JSON text inside SQLite
  (`json_group_array`) and decodes it here: blobs exactly (hex), reals in 17 digits (exact for
  what the store holds);
- `insert_returning_ids` inserts many rows in one statement and derives their consecutive ids.

No library does this: apsw and sqlite3 both release the GIL per step, which is right for one
thread and wrong for this process. PostgreSQL needs none of it: psycopg reads a whole result in one
network round trip and pipelines `executemany`.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from controller.errors import StoreError
from controller.store.schema import Dialect

Row = tuple[Any, ...]

SQLITE_MAX_VARIABLES: Final = 32_000
"""Below SQLite's bound on parameters in one statement (32,766 since 3.32)."""
SQLITE_MAX_ROWS_PER_STATEMENT: Final = 1_000
"""Rows per multi-row statement: large enough that stepping is rare, small enough to parse fast."""
_VALUES_STATEMENT: Final = re.compile(
    r"^(?P<head>\s*INSERT\s.+?\sVALUES\s*)(?P<group>\(\s*\?(?:\s*,\s*\?)*\s*\))(?P<tail>.*)$",
    re.DOTALL | re.IGNORECASE,
)
_DELETE_BY_KEY: Final = re.compile(
    r"^(?P<head>\s*DELETE\s+FROM\s+\w+\s+WHERE\s+\w+)\s*=\s*\?\s*$", re.IGNORECASE
)
_QUERY: Final = re.compile(r"^\s*(SELECT|WITH)\s", re.IGNORECASE)


class Database(Protocol):
    """What the store needs from a connection."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; returns the affected row count."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement for each parameter row."""
        ...

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run a query and return every row."""
        ...

    def insert_returning_ids(self, sql: str, rows: Sequence[Sequence[object]]) -> list[int]:
        """Run an `INSERT ... VALUES (?, ...)` for each row; the new rows' ids, in order."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A transaction: committed on success, rolled back on error."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class SqliteDatabase:
    """sqlite3 in WAL mode with synchronous=FULL: the default, embedded store."""

    dialect = Dialect.SQLITE

    def __init__(self, path: Path | str) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as error:
            raise StoreError(f"cannot open SQLite store {path}: {error}") from error
        self._depth = 0
        self._widths: dict[str, int] = {}

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement."""
        try:
            return self._db.execute(sql, tuple(params)).rowcount
        except sqlite3.Error as error:
            raise StoreError(f"SQLite: {error}") from error

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement per row, as few statements as the shape allows (module docstring)."""
        if not rows:
            return
        try:
            if values := _VALUES_STATEMENT.match(sql):
                self._insert_chunks(values, rows)
            elif (delete := _DELETE_BY_KEY.match(sql)) and all(len(row) == 1 for row in rows):
                for chunk in _chunks(rows):
                    marks = ", ".join("?" * len(chunk))
                    self._db.execute(f"{delete['head']} IN ({marks})", [row[0] for row in chunk])
            else:
                self._db.executemany(sql, rows)
        except sqlite3.Error as error:
            raise StoreError(f"SQLite: {error}") from error

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run a statement and return its rows (a query's rows travel as one JSON text)."""
        try:
            if not _QUERY.match(sql):
                return list(self._db.execute(sql, tuple(params)).fetchall())
            width = self._widths.get(sql)
            if width is None:
                cursor = self._db.execute(f"SELECT * FROM ({sql}) LIMIT 0", tuple(params))  # noqa: S608
                width = self._widths[sql] = len(cursor.description)
            ((text,),) = self._db.execute(_aggregated(sql, width), tuple(params)).fetchall()
        except sqlite3.Error as error:
            raise StoreError(f"SQLite: {error}") from error
        return [tuple(_restored(value) for value in row) for row in msgspec.json.decode(text)]

    def insert_returning_ids(self, sql: str, rows: Sequence[Sequence[object]]) -> list[int]:
        """Insert every row in multi-row statements; ids are consecutive within one statement.

        SQLite gives each new row the largest rowid plus one, and this connection holds the write
        lock for the statement, so a statement's rows get `last - n + 1 .. last`.
        """
        values = _VALUES_STATEMENT.match(sql)
        if values is None:
            raise StoreError(f"no single group of placeholders to repeat in: {sql[:80]}")
        try:
            return self._insert_chunks(values, rows)
        except sqlite3.Error as error:
            raise StoreError(f"SQLite: {error}") from error

    def _insert_chunks(self, values: re.Match[str], rows: Sequence[Sequence[object]]) -> list[int]:
        """`values`' statement over every row, in multi-row chunks; the rows' ids (raises sqlite3.Error)."""
        ids: list[int] = []
        for chunk in _chunks(rows):
            cursor = self._db.execute(_multi_row(values, len(chunk)), [v for row in chunk for v in row])
            last = int(cursor.lastrowid or 0)
            ids.extend(range(last - len(chunk) + 1, last + 1))
        return ids

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (nested calls join the outer transaction)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.execute("ROLLBACK")
            raise
        self._depth = 0
        self.execute("COMMIT")

    def close(self) -> None:
        """Close the file."""
        self._db.close()


class PostgresDatabase:
    """psycopg 3 on one connection (autocommit outside explicit transactions)."""

    dialect = Dialect.POSTGRES

    def __init__(self, dsn: str, idle_in_transaction_timeout_s: float = 10.0) -> None:
        """Connect to `dsn`; a transaction left idle `idle_in_transaction_timeout_s` is ended by the server.

        Every transaction here runs its statements back to back, so only a process that stopped
        inside one (SIGSTOP, a VM paused, a debugger) leaves it idle: the server then ends that
        session, and the rows it locked (the lease row above all) free the standby to take over.
        """
        import psycopg  # noqa: PLC0415 (a gateway-sized install has no psycopg; only this backend needs it)

        self._psycopg = psycopg
        try:
            self._db = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
            timeout_ms = max(1, round(idle_in_transaction_timeout_s * 1000))
            self._db.execute(f"SET idle_in_transaction_session_timeout = {timeout_ms}")
        except psycopg.Error as error:
            raise StoreError(f"cannot connect to PostgreSQL: {error}") from error

    def _sql(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement."""
        try:
            return self._db.execute(self._sql(sql), tuple(params)).rowcount
        except self._psycopg.Error as error:
            raise StoreError(f"PostgreSQL: {error}") from error

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement per row (pipelined by psycopg)."""
        try:
            with self._db.cursor() as cursor:
                cursor.executemany(self._sql(sql), [tuple(row) for row in rows])
        except self._psycopg.Error as error:
            raise StoreError(f"PostgreSQL: {error}") from error

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run a query."""
        try:
            return list(self._db.execute(self._sql(sql), tuple(params)).fetchall())
        except self._psycopg.Error as error:
            raise StoreError(f"PostgreSQL: {error}") from error

    def insert_returning_ids(self, sql: str, rows: Sequence[Sequence[object]]) -> list[int]:
        """Insert each row with `RETURNING id` (psycopg reads each answer in its round trip)."""
        ids: list[int] = []
        for row in rows:
            ids.append(int(self.fetchall(f"{sql} RETURNING id", row)[0][0]))
        return ids

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A psycopg transaction block (nested calls become savepoints)."""
        try:
            with self._db.transaction():
                yield
        except self._psycopg.Error as error:
            raise StoreError(f"PostgreSQL: {error}") from error

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def _chunks(rows: Sequence[Sequence[object]]) -> Iterator[Sequence[Sequence[object]]]:
    if not rows:
        return
    width = max(1, len(rows[0]))
    size = max(1, min(SQLITE_MAX_ROWS_PER_STATEMENT, SQLITE_MAX_VARIABLES // width))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _multi_row(values: re.Match[str], count: int) -> str:
    return f"{values['head']}{', '.join([values['group']] * count)}{values['tail']}"


def _aggregated(sql: str, width: int) -> str:
    """`sql`'s rows as one JSON array of arrays; a blob becomes [hex], a real [text, 0].

    The query stays a subquery with its ORDER BY: SQLite never flattens an ordered subquery into
    an aggregate, so the array keeps the query's order (tested). Reals travel as 17 significant
    digits, exact below 1e15 in magnitude (every timestamp, duration and RSSI the store holds;
    300k random values checked); SQLite 3.40's printf can miss the last digit above that.
    """
    names = [f"c{index}" for index in range(width)]
    cells = ", ".join(
        f"CASE typeof({name}) WHEN 'blob' THEN json_array(hex({name}))"
        f" WHEN 'real' THEN json_array(printf('%!.17g', {name}), 0) ELSE {name} END"
        for name in names
    )
    # Only column names this function made are formatted in; values travel as parameters.
    return f"WITH q({', '.join(names)}) AS ({sql}) SELECT json_group_array(json_array({cells})) FROM q"  # noqa: S608


def _restored(value: object) -> object:
    if type(value) is not list:
        return value
    if len(value) == 1:
        return bytes.fromhex(value[0])
    return float(value[0])
