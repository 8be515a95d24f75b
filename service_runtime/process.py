"""The process bootstrap both services share: arguments, config, logging, signals and `/metrics`.

`mcufleet agent` and `mcufleet controller` differ only in their settings type, environment prefix,
the line `--check-config` prints, and how they build and serve their service; a `ProcessSpec` says
those and `run_process` does the rest:

- `--config FILE` (TOML; without it the environment alone) and `MCUFLEET_<SERVICE>__...` overrides;
- an invalid configuration is one line on stderr and exit 78 (EX_CONFIG from sysexits.h: systemd
  shows it as a configuration error and does not restart into the same mistake);
- `--check-config` validates, prints the spec's summary and exits 0;
- the service's own error root, if it escapes, is logged and also exits 78 (a setting that only the
  running service can judge, such as an unreachable store URL);
- SIGINT and SIGTERM ask the service to stop gracefully (`serve_until_signalled`);
- a background task of the service that fails stops the service (`until_stopped`) and exits 70
  (EX_SOFTWARE), so systemd restarts it: a controller whose report writer had died went on
  answering its watchdog while it stored nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import structlog
from prometheus_client import CollectorRegistry

from service_runtime.config import load_config
from service_runtime.errors import BackgroundTaskFailed, ServiceRuntimeError
from service_runtime.logs import configure_logging
from service_runtime.metrics_http import MetricsServer
from service_runtime.settings import LogConfig, MetricsConfig

EXIT_CONFIG = 78
"""EX_CONFIG from sysexits.h: a configuration error."""
EXIT_SOFTWARE = 70
"""EX_SOFTWARE from sysexits.h: the service failed inside (a background task raised); restart it."""


class ProcessSettings(Protocol):
    """What the bootstrap reads from a service's settings."""

    @property
    def log(self) -> LogConfig:
        """The `[log]` table."""


class Service(Protocol):
    """A long-running service: `run` until `stop` is called."""

    async def run(self) -> None:
        """Run until `stop()`."""

    async def stop(self) -> None:
        """Ask `run` to end gracefully."""


S = TypeVar("S", bound=ProcessSettings)


@dataclass(frozen=True, slots=True)
class ProcessSpec(Generic[S]):
    """What differs between the services' processes."""

    name: str
    """The subcommand (`agent`): the program is `mcufleet <name>`."""
    description: str
    settings_type: type[S]
    env_prefix: str
    """Environment overrides are `<env_prefix>__<table>__<key>`."""
    summary: Callable[[S], str]
    """The line `--check-config` prints for valid settings."""
    serve: Callable[[S], Coroutine[object, object, None]]
    """Build the service from the settings and run it (through `serve_until_signalled`)."""
    error_root: type[Exception]
    """The service's exception root: escaping `serve`, it is logged and exits `EXIT_CONFIG`."""


def run_process(spec: ProcessSpec[S], argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Parse arguments, load the config and serve until SIGINT or SIGTERM; the exit status."""
    program = f"mcufleet {spec.name}"
    parser = argparse.ArgumentParser(prog=program, description=spec.description)
    parser.add_argument("--config", type=Path, default=None, help="TOML config (default: environment only)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    args = parser.parse_args(list(argv))
    try:
        settings = load_config(spec.settings_type, args.config, env_prefix=spec.env_prefix, environ=environ)
    except ServiceRuntimeError as error:
        sys.stderr.write(f"{program}: invalid configuration: {error}\n")
        return EXIT_CONFIG
    if args.check_config:
        sys.stdout.write(f"configuration OK: {spec.summary(settings)}\n")
        return 0
    configure_logging(settings.log.level, json_lines=settings.log.json)
    try:
        asyncio.run(spec.serve(settings))
    except BackgroundTaskFailed as error:
        structlog.get_logger(f"mcufleet.{spec.name}").error(f"{spec.name} failed", error=str(error))
        return EXIT_SOFTWARE
    except spec.error_root as error:
        structlog.get_logger(f"mcufleet.{spec.name}").error(f"{spec.name} stopped", error=str(error))
        return EXIT_CONFIG
    return 0


async def serve_until_signalled(
    service: Service, metrics: MetricsConfig, registry: CollectorRegistry
) -> None:
    """Serve `/metrics` (when enabled) and run `service` until SIGINT or SIGTERM stops it."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(service.stop()))
    server = MetricsServer(registry, metrics.host, metrics.port)
    if metrics.enabled:
        server.start()
    try:
        await service.run()
    finally:
        server.stop()


async def until_stopped(stop: asyncio.Event, tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Wait until `stop` is set, unless a task of `tasks` fails first.

    A task that returns is simply done (a BLE scan with no adapter has nothing to do).

    Raises:
        BackgroundTaskFailed: a task raised (its exception is the cause). The caller's cleanup runs
            as for a stop; `run_process` then exits `EXIT_SOFTWARE`.
    """
    stopping = asyncio.create_task(stop.wait())
    waiting: set[asyncio.Task[Any]] = {stopping, *tasks}
    try:
        while not stopping.done():
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise BackgroundTaskFailed(f"{task.get_name()} failed: {error!r}") from error
    finally:
        stopping.cancel()
