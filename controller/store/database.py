"""Two thin database adapters (sqlite3, psycopg 3) behind one tiny interface the store uses.

SQL is written once with `?` placeholders; the PostgreSQL adapter rewrites them to `%s`. Driver
errors become `StoreError` here, so nothing above this file knows which driver runs.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from controller.errors import StoreError
from controller.store.schema import Dialect

Row = tuple[Any, ...]


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

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement."""
        try:
            return self._db.execute(sql, tuple(params)).rowcount
        except sqlite3.Error as error:
            raise StoreError(f"SQLite: {error}") from error

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement per row."""
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as error:
            raise StoreError(f"SQLite: {error}") from error

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run a query."""
        try:
            return list(self._db.execute(sql, tuple(params)).fetchall())
        except sqlite3.Error as error:
            raise StoreError(f"SQLite: {error}") from error

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
