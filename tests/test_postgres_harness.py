"""The tests' own PostgreSQL: private, loopback only, unprivileged, removed when stopped."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.harness.postgres import DSN_VARIABLE, UNPRIVILEGED_USER, PostgresServer, throwaway_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A server of the harness's own, apart from the session's."""
    instance = PostgresServer()
    instance.start()
    yield instance
    instance.stop()


def setting(dsn: str, name: str) -> str:
    """One server setting, as the server reports it."""
    with psycopg.connect(dsn) as connection:
        row = connection.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def test_the_server_listens_on_loopback_only_with_its_socket_in_its_own_directory(
    server: PostgresServer,
) -> None:
    """Loopback, its own free port, its socket and data in its temporary directory, fsync off."""
    assert setting(server.dsn, "listen_addresses") == "127.0.0.1"
    assert int(setting(server.dsn, "port")) == server.port
    assert Path(setting(server.dsn, "unix_socket_directories")) == server.workdir
    assert Path(setting(server.dsn, "data_directory")) == server.data_dir
    assert setting(server.dsn, "fsync") == "off"


def test_under_root_the_cluster_belongs_to_an_unprivileged_account(server: PostgresServer) -> None:
    """Under root (which initdb refuses) the data directory belongs to `nobody`, else to the caller."""
    expected = pwd.getpwnam(UNPRIVILEGED_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
    assert server.data_dir.stat().st_uid == expected


def test_an_external_server_is_used_when_the_variable_names_one(
    server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With MCUFLEET_TEST_POSTGRES_DSN set, throwaway databases are created on that server."""
    monkeypatch.setenv(DSN_VARIABLE, server.dsn)
    with throwaway_database() as dsn:
        assert int(conninfo.conninfo_to_dict(dsn)["port"] or 0) == server.port
        assert setting(dsn, "data_directory") == str(server.data_dir)


def test_stopping_removes_the_server_and_its_directory() -> None:
    """After stop nothing listens on the port and the temporary directory is gone."""
    instance = PostgresServer()
    instance.start()
    instance.stop()
    assert not instance.workdir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(instance.dsn, connect_timeout=2).close()
