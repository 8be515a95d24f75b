"""A pytest plugin that points smpclient 7.3.0's own UDP integration tests at one target.

Loaded by tests/firmware/test_calibration_smpclient.py into a pytest run inside a fresh network
namespace, with smpclient's sdist as the working directory (its `tests.integration` package is
then the one on the path, not ours). smpclient's `connected_server` fixture launches each fixture
through `tests.integration.servers.serve` and connects `SMPClient` to 127.0.0.1:1337 (the only port
`SMPClient.connect` can reach), so:
- `MCUFLEET_SMP_TARGET=firmware`: nothing is replaced; smpclient launches the real build itself.
- `MCUFLEET_SMP_TARGET=simulator`: `serve` is replaced by one that serves the calibrated simulated
  device (simulator.device.calibration) on 127.0.0.1:1337 in that namespace.
Only the items parametrized with the `native_sim.udp` fixture are kept (the other fixtures are
serial, QEMU or IPv6 builds, outside this comparison).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import types
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest

from simulator.device import SimDevice
from simulator.device.calibration import NATIVE_SIM_UDP_LINK, native_sim_udp_device
from simulator.server import FleetServer

TARGET_VARIABLE: Final = "MCUFLEET_SMP_TARGET"
SERVED_LOG_VARIABLE: Final = "MCUFLEET_SMP_SERVED_LOG"
"""A file that gets one line per server launched: the target and the datagrams it received, so the
caller can tell which target really answered."""
FIXTURE_ID: Final = "native_sim.udp"
SMP_UDP_PORT: Final = 1337
_SIMULATED: list[SimDevice] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the `native_sim.udp` items; for the simulator target, swap the fixture's launcher."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        fixture = None if callspec is None else callspec.params.get("connected_server")
        (keep if fixture is not None and fixture.id == FIXTURE_ID else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    target = os.environ.get(TARGET_VARIABLE)
    if target not in ("firmware", "simulator"):
        raise pytest.UsageError(f"{TARGET_VARIABLE} must be 'firmware' or 'simulator', not {target!r}")
    # The conftest can be imported twice (by pytest, and by the test modules' own imports of it):
    # swap the launcher in every copy, the fixture's included.
    conftests = [
        module
        for module in [*config.pluginmanager.get_plugins(), *sys.modules.values()]
        if isinstance(module, types.ModuleType)
        and str(getattr(module, "__file__", "")).endswith(os.path.join("integration", "conftest.py"))
    ]
    if not conftests:
        raise pytest.UsageError("smpclient's tests/integration/conftest.py was not loaded")
    for conftest in conftests:
        original: Any = getattr(conftest, "_mcufleet_original_serve", conftest.serve)
        conftest._mcufleet_original_serve = original  # type: ignore[attr-defined]
        launcher = _serve_simulator if target == "simulator" else functools.partial(_serve_firmware, original)
        conftest.serve = launcher  # type: ignore[attr-defined]


def _log_served(line: str) -> None:
    with open(os.environ[SERVED_LOG_VARIABLE], "a") as log:
        log.write(line + "\n")


@contextlib.asynccontextmanager
async def _serve_firmware(serve: Any, fixture: Any) -> AsyncIterator[Any]:
    """Smpclient's own launcher of the real build, noted in the served log."""
    _log_served(f"firmware {fixture.artifact}")
    async with serve(fixture) as endpoint:
        yield endpoint


@contextlib.asynccontextmanager
async def _serve_simulator(fixture: Any) -> AsyncIterator[Any]:
    """What smpclient's `serve` yields for a UDP fixture, served by the calibrated simulator."""
    modelled = (NATIVE_SIM_UDP_LINK.buf_size_bytes, NATIVE_SIM_UDP_LINK.buf_count)
    if (fixture.buf_size, fixture.buf_count) != modelled:
        raise RuntimeError(f"the calibrated device does not model {fixture.id}")
    servers = sys.modules["tests.integration.servers"]
    device = native_sim_udp_device()
    _SIMULATED.append(device)
    async with FleetServer([device], base_host="127.0.0.1", port=SMP_UDP_PORT):
        yield servers.UdpEndpoint("127.0.0.1", SMP_UDP_PORT)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Note what each simulated device received (after every fixture's teardown)."""
    for device in _SIMULATED:
        _log_served(f"simulator {device.counters.datagrams_received}")
