"""`mcufleet <subcommand> ...` run to completion as a user runs it, its output captured as text."""

from __future__ import annotations

import subprocess
import sys

CLI_TIMEOUT_S = 60.0


def mcufleet_command(*args: str) -> list[str]:
    """The argument vector of `mcufleet <args>` under this interpreter."""
    return [sys.executable, "-m", "mcufleet", *args]


def run_mcufleet(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `mcufleet <args>` and return its exit status, stdout and stderr."""
    return subprocess.run(
        mcufleet_command(*args), capture_output=True, text=True, check=False, timeout=CLI_TIMEOUT_S
    )
