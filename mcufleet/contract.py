"""`mcufleet contract export|check`: writes the AsyncAPI document and JSON Schemas of the contract.

The files under deploy/contract/ are generated from schemas/ and checked in, so a contract change
shows up in review as a diff; `check` fails when they drifted from the code.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from schemas.asyncapi import build_asyncapi, build_json_schemas

DEFAULT_DIRECTORY = Path("deploy/contract")


def render(directory: Path) -> dict[Path, str]:
    """Return every generated file under `directory` with its text."""
    files = {
        directory / "asyncapi.yaml": yaml.safe_dump(build_asyncapi(), sort_keys=False, allow_unicode=True),
    }
    for kind, schema in build_json_schemas().items():
        files[directory / "schemas" / f"{kind}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def export(directory: Path) -> list[Path]:
    """Write the generated files and remove stale schema files; return the paths written."""
    files = render(directory)
    schema_dir = directory / "schemas"
    schema_dir.mkdir(parents=True, exist_ok=True)
    for stale in set(schema_dir.glob("*.json")) - set(files):
        stale.unlink()
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return sorted(files)


def drift(directory: Path) -> list[str]:
    """Return a line per generated file that is missing, different or stale."""
    problems = []
    files = render(directory)
    for path, text in sorted(files.items()):
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"differs: {path}")
    schema_dir = directory / "schemas"
    if schema_dir.exists():
        problems.extend(f"stale: {p}" for p in sorted(set(schema_dir.glob("*.json")) - set(files)))
    return problems


def run(argv: Sequence[str]) -> int:
    """Entry point of `mcufleet contract`."""
    parser = argparse.ArgumentParser(prog="mcufleet contract", description=__doc__)
    parser.add_argument("action", choices=["export", "check"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIRECTORY, help="output directory")
    args = parser.parse_args(argv)
    if args.action == "export":
        for path in export(args.dir):
            sys.stdout.write(f"wrote {path}\n")
        return 0
    problems = drift(args.dir)
    for line in problems:
        sys.stderr.write(f"contract drift: {line}\n")
    if problems:
        sys.stderr.write("run `make contract` (mcufleet contract export) and commit the result\n")
        return 1
    sys.stdout.write("contract files match schemas/\n")
    return 0
