"""`mcufleet devices` and `mcufleet gateways`: tables of what the controller's store knows."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from controller.errors import ControllerError
from controller.settings import ControllerSettings
from controller.store.opening import open_store
from service_runtime.config import load_config
from service_runtime.errors import ServiceRuntimeError

ENV_PREFIX = "MCUFLEET_CONTROLLER"


def _store_url(argv: Sequence[str], prog: str) -> str:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", type=Path, default=None, help="the controller's TOML config")
    parser.add_argument("--store", default="", help="store URL (overrides the config)")
    args = parser.parse_args(list(argv))
    if args.store:
        return str(args.store)
    settings = load_config(ControllerSettings, args.config, env_prefix=ENV_PREFIX, environ=os.environ)
    return settings.store.url


def devices(argv: Sequence[str]) -> int:
    """Print every device with its version, gateways and reachability."""
    try:
        store = open_store(_store_url(argv, "mcufleet devices"))
        records = store.devices()
    except (ControllerError, ServiceRuntimeError) as error:
        sys.stderr.write(f"mcufleet devices: {error}\n")
        return 1
    table = Table("serial", "hardware", "software", "version", "memfault", "gateways (rssi)")
    for record in records:
        links = ", ".join(
            f"{link.gateway_id} ({link.rssi_dbm})" + ("" if link.reachable else " lost")
            for link in record.links
        )
        table.add_row(
            record.serial,
            record.hardware_version,
            record.software_type,
            record.current_version,
            record.memfault,
            links,
        )
    Console().print(table)
    return 0


def gateways(argv: Sequence[str]) -> int:
    """Print every gateway with its session epoch and state."""
    try:
        store = open_store(_store_url(argv, "mcufleet gateways"))
        records = store.gateways()
    except (ControllerError, ServiceRuntimeError) as error:
        sys.stderr.write(f"mcufleet gateways: {error}\n")
        return 1
    table = Table("gateway", "online", "site", "devices", "epoch", "agent", "cause")
    for record in records:
        table.add_row(
            record.gateway_id,
            "yes" if record.online else "no",
            record.site,
            str(record.device_count),
            str(record.epoch),
            record.agent_version,
            record.cause,
        )
    Console().print(table)
    return 0
