"""`mcufleet controller`: the composition root of the controller (chooses the concrete adapters)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from controller.errors import ControllerError
from controller.factory import build_controller
from controller.settings import ControllerSettings
from service_runtime.process import ProcessSpec, run_process, serve_until_signalled
from service_runtime.systemd import SystemdNotifier

ENV_PREFIX = "MCUFLEET_CONTROLLER"


def run(argv: Sequence[str]) -> int:
    """Parse arguments, load the config and run the controller until SIGINT or SIGTERM."""
    return run_process(CONTROLLER_PROCESS, argv, os.environ)


async def serve(settings: ControllerSettings) -> None:
    """Build the controller from its settings and run it until a termination signal."""
    registry = CollectorRegistry()
    async with build_controller(settings, registry=registry, notifier=SystemdNotifier()) as service:
        await serve_until_signalled(service, settings.metrics, registry)


def _summary(settings: ControllerSettings) -> str:
    return f"controller {settings.controller_id}, store {settings.store.url}"


CONTROLLER_PROCESS = ProcessSpec(
    name="controller",
    description="Run the controller.",
    settings_type=ControllerSettings,
    env_prefix=ENV_PREFIX,
    summary=_summary,
    serve=serve,
    error_root=ControllerError,
)
