"""`mcufleet agent`: the composition root of the gateway agent (chooses the concrete adapters)."""

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

from agent.errors import AgentError
from agent.factory import build_agent
from agent.settings import AgentSettings
from service_runtime.config import load_config
from service_runtime.errors import ServiceRuntimeError
from service_runtime.logs import configure_logging
from service_runtime.metrics_http import MetricsServer
from service_runtime.systemd import SystemdNotifier

ENV_PREFIX = "MCUFLEET_AGENT"
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h: systemd shows it as a configuration error


def run(argv: Sequence[str]) -> int:
    """Parse arguments, load the config and run the agent until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="mcufleet agent", description="Run the gateway agent.")
    parser.add_argument("--config", type=Path, default=None, help="TOML config (default: environment only)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    args = parser.parse_args(list(argv))
    try:
        settings = load_config(AgentSettings, args.config, env_prefix=ENV_PREFIX, environ=os.environ)
    except ServiceRuntimeError as error:
        sys.stderr.write(f"mcufleet agent: invalid configuration: {error}\n")
        return EXIT_CONFIG
    if args.check_config:
        sys.stdout.write(
            f"configuration OK: gateway {settings.gateway_id}, {len(settings.udp_devices)} UDP devices, "
            f"{len(settings.serial_devices)} serial devices\n"
        )
        return 0
    configure_logging(settings.log.level, json_lines=settings.log.json)
    try:
        asyncio.run(serve(settings))
    except AgentError as error:
        structlog.get_logger("mcufleet.agent").error("agent stopped", error=str(error))
        return EXIT_CONFIG
    return 0


async def serve(settings: AgentSettings) -> None:
    """Build the agent from concrete adapters and run it until a termination signal."""
    registry = CollectorRegistry()
    metrics = MetricsServer(registry, settings.metrics.host, settings.metrics.port)
    service = build_agent(settings, registry=registry, notifier=SystemdNotifier())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(service.stop()))
    if settings.metrics.enabled:
        metrics.start()
    try:
        await service.run()
    finally:
        metrics.stop()
