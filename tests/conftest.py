"""Fixtures shared by every test: real mosquitto, a throwaway PostgreSQL database, free ports."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.harness.broker import MosquittoBroker
from tests.harness.postgres import stop_private_server, throwaway_database


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the session's own PostgreSQL (if a test started it), whether the tests passed or not."""
    stop_private_server()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    """Remember each phase's report on the item so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{call.when}", report)
    return report


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A real mosquitto on a free port; its log is attached to the report when the test fails."""
    instance = MosquittoBroker(tmp_path / "broker")
    instance.start()
    yield instance
    instance.crash()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        request.node.add_report_section("teardown", "mosquitto log", instance.log())


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of a database created for this test run and dropped after it."""
    with throwaway_database() as dsn:
        yield dsn
