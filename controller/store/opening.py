"""Open the store a URL names: `sqlite:///path/to/file`, or PostgreSQL as a URL or `dbname=...` DSN."""

from __future__ import annotations

from pathlib import Path

from controller.errors import ConfigError
from controller.store.database import PostgresDatabase, SqliteDatabase
from controller.store.fleet_store import FleetStore


def open_store(url: str) -> FleetStore:
    """Connect, migrate and return the store at `url`.

    Raises:
        ConfigError: the URL has an unknown scheme.
        StoreError: the database cannot be opened or migrated.
    """
    if url.startswith("sqlite:///"):
        store = FleetStore(SqliteDatabase(Path(url.removeprefix("sqlite://"))))
    elif url == "sqlite://:memory:":
        store = FleetStore(SqliteDatabase(":memory:"))
    elif url.startswith(("postgresql://", "postgres://")) or "dbname=" in url:
        store = FleetStore(PostgresDatabase(url))
    else:
        raise ConfigError(f"store url {url!r}: expected sqlite:///path or postgresql://...")
    store.migrate()
    return store
