"""`mcufleet sim`: serve a simulated fleet over UDP until SIGINT or SIGTERM."""

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from simulator.errors import SimulatorError
from simulator.fleet import BUILTIN_PROFILES, Fleet, generate_fleet, load_fleet
from simulator.server import DEFAULT_BASE_HOST, SMP_UDP_PORT, FleetServer

EXIT_USAGE = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    """The `mcufleet sim` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mcufleet sim", description="Serve simulated Zephyr/MCUboot/Memfault SMP devices over UDP."
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--fleet", type=Path, help="a fleet TOML file")
    source.add_argument("--devices", type=int, default=10, help="generate this many devices (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated fleet (default 0)")
    parser.add_argument(
        "--link",
        choices=sorted(BUILTIN_PROFILES),
        default="loopback",
        help="link profile of generated devices",
    )
    parser.add_argument(
        "--base-address",
        default=DEFAULT_BASE_HOST,
        help=f"first device's address (default {DEFAULT_BASE_HOST})",
    )
    parser.add_argument("--port", type=int, default=SMP_UDP_PORT, help=f"UDP port (default {SMP_UDP_PORT})")
    parser.add_argument(
        "--port-per-device",
        action="store_true",
        help="all devices on --base-address, each on a port the kernel picks",
    )
    return parser


def run(argv: Sequence[str], *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run `mcufleet sim` with `argv` (without the program name); return the exit status."""
    args = build_parser().parse_args(list(argv))
    try:
        fleet = (
            load_fleet(args.fleet) if args.fleet else generate_fleet(args.devices, args.seed, link=args.link)
        )
        server = FleetServer(
            fleet, base_host=args.base_address, port=args.port, port_per_device=args.port_per_device
        )
    except (SimulatorError, ValueError) as error:
        err.write(f"mcufleet sim: {error}\n")
        return EXIT_USAGE
    try:
        asyncio.run(_serve(server, fleet, out))
    except SimulatorError as error:
        err.write(f"mcufleet sim: {error}\n")
        return EXIT_FAILURE
    return 0


async def _serve(server: FleetServer, fleet: Fleet, out: TextIO) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        out.write(endpoint_table(server, fleet))
        out.flush()
        await stop.wait()


def endpoint_table(server: FleetServer, fleet: Fleet) -> str:
    """One line per device: serial, hardware, running version, link profile and `host:port`."""
    rows = [("serial", "hardware", "version", "link", "endpoint")]
    for spec in fleet.devices:
        host, port = server.endpoints[spec.serial]
        rows.append(
            (spec.serial, spec.hardware_version, spec.image_version, spec.link.name, f"{host}:{port}")
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"
