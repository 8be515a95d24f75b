"""The checked-in contract files: generated from schemas/, valid AsyncAPI 3.0, valid JSON Schemas."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import msgspec
import pytest
import yaml

import schemas
from mcufleet.contract import DEFAULT_DIRECTORY, drift, export
from schemas import SPECS, TopicKind, encode
from schemas.asyncapi import build_asyncapi, build_json_schemas
from tests.schemas.examples import example

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = Path(__file__).with_name("validate_asyncapi.mjs")


def _node_modules() -> Path:
    modules = Path(os.environ.get("MCUFLEET_NODE_MODULES", ROOT / ".cache/node/node_modules"))
    if not (modules / "@asyncapi/parser").is_dir():
        pytest.fail(f"@asyncapi/parser not found under {modules}: run `make test` (it installs it with npm)")
    return modules


def _validate(document: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `make test` (it installs nodejs with apt-get)")
    return subprocess.run(
        [node, str(VALIDATOR), str(_node_modules()), str(document)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_checked_in_files_match_the_code() -> None:
    """deploy/contract/ is exactly what `mcufleet contract export` writes today."""
    assert drift(ROOT / DEFAULT_DIRECTORY) == []


def test_drift_is_detected(tmp_path: Path) -> None:
    """A hand edit, a missing file and a stale file are all reported by the check."""
    export(tmp_path)
    (tmp_path / "asyncapi.yaml").write_text("asyncapi: 3.0.0\n", encoding="utf-8")
    (tmp_path / "schemas" / "audit.json").unlink()
    (tmp_path / "schemas" / "retired.json").write_text("{}", encoding="utf-8")
    problems = drift(tmp_path)
    assert any(p.startswith("differs:") and "asyncapi.yaml" in p for p in problems)
    assert any(p.startswith("missing:") and "audit.json" in p for p in problems)
    assert any(p.startswith("stale:") and "retired.json" in p for p in problems)


@pytest.mark.integration
def test_asyncapi_document_passes_the_official_parser() -> None:
    """The AsyncAPI document validates with @asyncapi/parser (the reference implementation)."""
    result = _validate(ROOT / DEFAULT_DIRECTORY / "asyncapi.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_the_parser_really_rejects_broken_documents(tmp_path: Path) -> None:
    """Negative control: a dangling reference and a bad operation action are reported as errors."""
    document = build_asyncapi()
    first = next(iter(document["operations"].values()))
    first["action"] = "publish"
    first["channel"] = {"$ref": "#/channels/nope"}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = _validate(broken)
    assert result.returncode != 0
    assert '"severity":0' in result.stdout


def test_every_topic_has_a_channel_with_its_qos_and_retain() -> None:
    """Each topic is a channel; its publisher's operation carries the topic's MQTT qos and retain."""
    document = build_asyncapi()
    addresses = {channel["address"] for channel in document["channels"].values()}
    for spec in SPECS.values():
        assert f"{schemas.DEFAULT_PREFIX}/{spec.template}" in addresses
    sends = [op for op in document["operations"].values() if op["action"] == "send"]
    assert len(sends) == len(SPECS)
    for operation in sends:
        binding = operation["bindings"]["mqtt"]
        channel = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[1]]
        spec = next(s for s in SPECS.values() if channel["address"].endswith(s.template))
        assert (binding["qos"], binding["retain"]) == (spec.qos, spec.retain)


def test_asyncapi_payload_schemas_equal_the_structs() -> None:
    """The component schemas are msgspec's own schemas of the Structs, with docstrings and constraints."""
    components = build_asyncapi()["components"]["schemas"]
    command = components["OtaCommand"]
    assert command["description"].startswith("Update one device")
    assert command["properties"]["attempt"]["minimum"] == 1
    assert command["additionalProperties"] is False
    assert components["DeviceReport"].get("additionalProperties", True) is not False


@pytest.mark.parametrize("kind", list(TopicKind))
def test_examples_validate_against_the_exported_json_schema(kind: TopicKind) -> None:
    """Each exported JSON Schema accepts the example payload of its topic (draft 2020-12)."""
    schema = build_json_schemas()[kind.value]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(msgspec.json.decode(encode(example(kind))), schema)


def test_exported_json_schema_rejects_what_the_decoder_rejects() -> None:
    """The JSON Schema carries the constraints: a wildcard in a job id is invalid there too."""
    schema = build_json_schemas()[TopicKind.GATEWAY_COMMAND.value]
    raw = msgspec.json.decode(encode(example(TopicKind.GATEWAY_COMMAND)))
    raw["job_id"] = "job/#"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, schema)


def test_cli_check_passes_on_the_checked_in_files() -> None:
    """`mcufleet contract check` exits 0 on this tree (the command make test runs)."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("mcufleet")), "contract", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
