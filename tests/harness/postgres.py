"""A throwaway PostgreSQL database per test run, on the server named by MCUFLEET_TEST_POSTGRES_DSN."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import psycopg
from psycopg import conninfo, sql

DSN_VARIABLE: Final = "MCUFLEET_TEST_POSTGRES_DSN"
DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"


class DatabaseUnavailable(RuntimeError):
    """The PostgreSQL server cannot be reached; the message says which DSN was tried."""


def server_dsn() -> str:
    """The DSN of the server the tests may create databases on."""
    return os.environ.get(DSN_VARIABLE, DEFAULT_DSN)


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create a uniquely named database, yield its DSN, and drop it afterwards."""
    admin_dsn = server_dsn()
    name = f"mcufleet_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {admin_dsn} ({error}); set {DSN_VARIABLE} to a server where the "
            "tests may create databases"
        ) from error
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield conninfo.make_conninfo(admin_dsn, dbname=name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
