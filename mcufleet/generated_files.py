"""Files generated from code and checked in (the contract, the dashboards): export, drift, the CLI.

Each generated set lives in one directory; its `*.json` files there that the code no longer makes
are stale. `check` fails on any file missing, different or stale, so a change to the code that
makes them shows up in review as a diff of the files.
"""

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class GeneratedFiles:
    """One set of generated files: how to render them and where stale ones would be."""

    name: str
    """The CLI subcommand (`mcufleet <name> export|check`)."""
    source: str
    """Where they are generated from, for the `check` message."""
    default_directory: Path
    render: Callable[[Path], dict[Path, str]]
    """Every file under the directory with its text."""
    json_directory: Callable[[Path], Path]
    """The folder whose `*.json` files all come from `render`."""
    fix: str
    """What to run when they drifted."""

    def export(self, directory: Path) -> list[Path]:
        """Write the files and remove stale ones; return the paths written."""
        files = self.render(directory)
        json_dir = self.json_directory(directory)
        json_dir.mkdir(parents=True, exist_ok=True)
        for stale in set(json_dir.glob("*.json")) - set(files):
            stale.unlink()
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return sorted(files)

    def drift(self, directory: Path) -> list[str]:
        """Return a line per file that is missing, different or stale."""
        files = self.render(directory)
        problems = []
        for path, text in sorted(files.items()):
            if not path.exists():
                problems.append(f"missing: {path}")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(f"differs: {path}")
        json_dir = self.json_directory(directory)
        if json_dir.exists():
            problems.extend(f"stale: {path}" for path in sorted(set(json_dir.glob("*.json")) - set(files)))
        return problems

    def run(self, argv: Sequence[str], description: str | None) -> int:
        """Entry point of `mcufleet <name> export|check`."""
        parser = argparse.ArgumentParser(prog=f"mcufleet {self.name}", description=description)
        parser.add_argument("action", choices=["export", "check"])
        parser.add_argument("--dir", type=Path, default=self.default_directory, help="output directory")
        args = parser.parse_args(argv)
        if args.action == "export":
            for path in self.export(args.dir):
                sys.stdout.write(f"wrote {path}\n")
            return 0
        problems = self.drift(args.dir)
        for line in problems:
            sys.stderr.write(f"{self.name} drift: {line}\n")
        if problems:
            sys.stderr.write(f"run {self.fix} and commit the result\n")
            return 1
        sys.stdout.write(f"{self.name} files match {self.source}\n")
        return 0
