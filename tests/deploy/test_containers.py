"""The container material agrees with the rest of deploy/ and with the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from controller.settings import ControllerSettings
from service_runtime.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy/compose"
SITE_PROVIDED = {"./certs", "./postgres_password"}


def test_compose_mounts_only_files_that_exist() -> None:
    """Every relative bind mount names a file in the repository (or a site secret documented as such)."""
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(".") or source in SITE_PROVIDED:
                continue
            assert (COMPOSE / source).exists(), f"{name} mounts missing {source}"


def test_compose_controller_config_is_valid() -> None:
    """The controller config the compose file mounts decodes strictly, with the environment overrides."""
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    environment = compose["services"]["controller"]["environment"]
    settings = load_config(
        ControllerSettings, COMPOSE / "controller.toml", env_prefix="MCUFLEET_CONTROLLER", environ=environment
    )
    assert settings.mqtt.host == "mosquitto" and settings.store.url.startswith("postgresql://")


def test_image_is_multi_stage_and_unprivileged() -> None:
    """Build tools stay in the build stage; the final stage runs as a non-root user."""
    dockerfile = (ROOT / "deploy/container/Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    assert len(stages) == 2 and "build-essential" in stages[0] and "build-essential" not in stages[1]
    assert "\nUSER mcufleet" in stages[1]
    for package in ("mcufleet", "schemas", "service_runtime", "agent", "controller", "simulator"):
        assert f"COPY {package} {package}" in stages[0]
