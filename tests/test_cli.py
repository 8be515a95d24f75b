"""The `mcufleet` console script."""

import subprocess
import sys
from pathlib import Path

import pytest

from mcufleet.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand() -> None:
    """`mcufleet --help` names every subcommand, run as users run it."""
    script = Path(sys.executable).with_name("mcufleet")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True, timeout=60)
    for name in ("agent", "controller", "sim", "demo", "rollout", "devices", "gateways", "contract"):
        assert name in result.stdout
    assert {c.name for c in SUBCOMMANDS} >= {"agent", "controller", "sim", "demo", "contract"}


def test_unknown_subcommand_is_a_usage_error() -> None:
    """An unknown subcommand exits with argparse's usage status."""
    with pytest.raises(SystemExit) as caught:
        main(["teleport"])
    assert caught.value.code == 2
