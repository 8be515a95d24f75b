"""`mcufleet agent`: the composition root of the gateway agent (chooses the concrete adapters)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from agent.errors import AgentError
from agent.factory import build_agent
from agent.settings import AgentSettings
from service_runtime.process import ProcessSpec, run_process, serve_until_signalled
from service_runtime.systemd import SystemdNotifier

ENV_PREFIX = "MCUFLEET_AGENT"


def run(argv: Sequence[str]) -> int:
    """Parse arguments, load the config and run the agent until SIGINT or SIGTERM."""
    return run_process(AGENT_PROCESS, argv, os.environ)


async def serve(settings: AgentSettings) -> None:
    """Build the agent from concrete adapters and run it until a termination signal."""
    registry = CollectorRegistry()
    service = build_agent(settings, registry=registry, notifier=SystemdNotifier())
    await serve_until_signalled(service, settings.metrics, registry)


def _summary(settings: AgentSettings) -> str:
    return (
        f"gateway {settings.gateway_id}, {len(settings.udp_devices)} UDP devices, "
        f"{len(settings.serial_devices)} serial devices"
    )


AGENT_PROCESS = ProcessSpec(
    name="agent",
    description="Run the gateway agent.",
    settings_type=AgentSettings,
    env_prefix=ENV_PREFIX,
    summary=_summary,
    serve=serve,
    error_root=AgentError,
)
