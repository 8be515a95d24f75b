"""The `mcufleet` console script: parses the subcommand and hands over to that process's entry point.

Each subcommand's package is imported only when it runs, so a gateway that installed only the
agent extra can still run `mcufleet agent` without the controller's dependencies.
"""

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

EXIT_USAGE = 2
OWN_PACKAGES = frozenset({"mcufleet", "schemas", "service_runtime", "agent", "controller", "simulator"})


@dataclass(frozen=True)
class Subcommand:
    """A subcommand and the module function (`run(argv) -> int`) that implements it."""

    name: str
    summary: str
    entry: str
    """`module:function`, or "" while the subcommand is not built yet."""
    extra: str = ""
    """The pip extra its third-party dependencies come with, named when one is missing."""


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("agent", "run the gateway agent", "agent.cli:run"),
    Subcommand("controller", "run the central controller", "controller.cli:run"),
    Subcommand("sim", "run a simulated fleet of SMP devices", "simulator.cli:run"),
    Subcommand("demo", "run the whole system locally on embedded defaults", "mcufleet.demo:run"),
    Subcommand(
        "rollout",
        "create, preview, start, pause, resume, abort, watch rollouts",
        "controller.operator_cli:run",
    ),
    Subcommand("devices", "print the devices the controller knows", "controller.fleet_cli:devices"),
    Subcommand("gateways", "print the gateways the controller knows", "controller.fleet_cli:gateways"),
    Subcommand(
        "contract", "export or check the MQTT contract (AsyncAPI, JSON Schema)", "mcufleet.contract:run"
    ),
    Subcommand(
        "dashboards",
        "export or check the Grafana dashboards (built from Python)",
        "mcufleet.dashboards:run",
        extra="dashboards",
    ),
)


def _resolve(entry: str) -> Callable[[Sequence[str]], int]:
    module_name, _, function_name = entry.partition(":")
    function: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), function_name)
    return function


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; each subcommand parses its own arguments."""
    parser = argparse.ArgumentParser(
        prog="mcufleet",
        description="Keep fleets of BLE microcontrollers up to date through site gateways.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS:
        commands.add_parser(command.name, help=command.summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mcufleet` with `argv` (default: the process arguments) and return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    namespace, rest = parser.parse_known_args(args[:1])
    command = next(c for c in SUBCOMMANDS if c.name == namespace.command)
    if not command.entry:
        sys.stderr.write(f"mcufleet {command.name}: not built yet in this version (see docs/status.md)\n")
        return EXIT_USAGE
    try:
        entry = _resolve(command.entry)
    except ModuleNotFoundError as error:
        if not command.extra or (error.name or "").partition(".")[0] in OWN_PACKAGES:
            raise
        sys.stderr.write(
            f"mcufleet {command.name}: {error.name} is not installed:"
            f" pip install 'mcufleet[{command.extra}]'\n"
        )
        return EXIT_USAGE
    return entry([*rest, *args[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
