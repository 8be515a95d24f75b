"""`mcufleet contract export|check`: writes the AsyncAPI document and JSON Schemas of the contract.

The files under deploy/contract/ are generated from schemas/ and checked in, so a contract change
shows up in review as a diff; `check` fails when they drifted from the code.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from mcufleet.generated_files import GeneratedFiles
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


CONTRACT = GeneratedFiles(
    name="contract",
    source="schemas/",
    default_directory=DEFAULT_DIRECTORY,
    render=render,
    json_directory=lambda directory: directory / "schemas",
    fix="`make contract` (mcufleet contract export)",
)
export = CONTRACT.export
drift = CONTRACT.drift


def run(argv: Sequence[str]) -> int:
    """Entry point of `mcufleet contract`."""
    return CONTRACT.run(argv, __doc__)
