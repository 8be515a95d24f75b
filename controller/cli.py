"""`mcufleet controller`: the composition root of the controller (chooses the concrete adapters)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from controller.errors import ControllerError
from controller.factory import build_controller
from controller.settings import ControllerSettings
from service_runtime.config import load_config
from service_runtime.errors import ServiceRuntimeError
from service_runtime.logs import configure_logging
from service_runtime.metrics_http import MetricsServer
from service_runtime.systemd import SystemdNotifier

ENV_PREFIX = "MCUFLEET_CONTROLLER"
EXIT_CONFIG = 78


def run(argv: Sequence[str]) -> int:
    """Parse arguments, load the config and run the controller until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="mcufleet controller", description="Run the controller.")
    parser.add_argument("--config", type=Path, default=None, help="TOML config (default: environment only)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    args = parser.parse_args(list(argv))
    try:
        settings = load_config(ControllerSettings, args.config, env_prefix=ENV_PREFIX, environ=os.environ)
    except ServiceRuntimeError as error:
        sys.stderr.write(f"mcufleet controller: invalid configuration: {error}\n")
        return EXIT_CONFIG
    if args.check_config:
        sys.stdout.write(
            f"configuration OK: controller {settings.controller_id}, store {settings.store.url}\n"
        )
        return 0
    configure_logging(settings.log.level, json_lines=settings.log.json)
    try:
        asyncio.run(serve(settings))
    except ControllerError as error:
        structlog.get_logger("mcufleet.controller").error("controller stopped", error=str(error))
        return EXIT_CONFIG
    return 0


async def serve(settings: ControllerSettings) -> None:
    """Build the controller from its settings and run it until a termination signal."""
    registry = CollectorRegistry()
    metrics = MetricsServer(registry, settings.metrics.host, settings.metrics.port)
    async with build_controller(settings, registry=registry, notifier=SystemdNotifier()) as service:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(service.stop()))
        if settings.metrics.enabled:
            metrics.start()
        try:
            await service.run()
        finally:
            metrics.stop()
