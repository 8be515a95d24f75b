"""CLI profiles: which profile is chosen, what overrides it, and clear errors for bad files and values."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from controller.errors import ConfigError
from controller.operator_auth import OperatorKeys
from controller.operator_profile import Profile, default_path, read_profile_file, resolve_profile
from controller.settings import ControllerSettings

FILE = """
default_profile = "prod"

[profiles.prod]
host = "mqtt.example.com"
port = 8883
ca_file = "pki/ca.crt"
cert_file = "/etc/mcufleet/alice.crt"
key_file = "~/alice.key"
signing_key_id = "alice-2026"

[profiles.lab]
host = "lab.local"
"""


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    """A cli.toml with two profiles."""
    path = tmp_path / "cli.toml"
    path.write_text(FILE)
    return path


def resolve(
    path: Path | None, name: str = "", environ: dict[str, str] | None = None, **flags: object
) -> Profile:
    """The effective profile for these inputs."""
    return resolve_profile(config_path=path, profile_name=name, environ=environ or {}, flags=flags)


def test_the_default_profile_is_chosen_and_paths_are_anchored(profile_file: Path) -> None:
    """default_profile picks `prod`; relative paths are the file's, `~` is the home."""
    profile = resolve(profile_file, environ={"HOME": "/home/alice"})
    assert (profile.host, profile.port, profile.uses_tls) == ("mqtt.example.com", 8883, True)
    assert profile.ca_file == str(profile_file.parent / "pki/ca.crt")
    assert profile.cert_file == "/etc/mcufleet/alice.crt"
    assert profile.key_file.endswith("/alice.key") and not profile.key_file.startswith("~")


def test_flag_beats_environment_beats_file(profile_file: Path) -> None:
    """--profile beats MCUFLEET_CLI_PROFILE beats default_profile; flags beat MCUFLEET_CLI_* beat the file."""
    assert resolve(profile_file, environ={"MCUFLEET_CLI_PROFILE": "lab"}).host == "lab.local"
    assert resolve(profile_file, "prod", environ={"MCUFLEET_CLI_PROFILE": "lab"}).host == "mqtt.example.com"
    environ = {"MCUFLEET_CLI_PORT": "18883", "MCUFLEET_CLI_PASSWORD": "s3cret", "MCUFLEET_CLI_TLS": "true"}
    profile = resolve(profile_file, "lab", environ)
    assert (profile.port, profile.password, profile.tls) == (18883, "s3cret", True)
    assert resolve(profile_file, "lab", environ, port=1).port == 1


def test_the_config_file_comes_from_the_environment_or_xdg(profile_file: Path, tmp_path: Path) -> None:
    """MCUFLEET_CLI_CONFIG names the file; otherwise $XDG_CONFIG_HOME/mcufleet/cli.toml."""
    assert resolve(None, environ={"MCUFLEET_CLI_CONFIG": str(profile_file)}).host == "mqtt.example.com"
    assert default_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "mcufleet/cli.toml"
    assert default_path({"HOME": "/home/alice"}) == Path("/home/alice/.config/mcufleet/cli.toml")


def test_a_missing_default_file_means_built_in_defaults(tmp_path: Path) -> None:
    """Without a file at the default place, the defaults apply (plain MQTT on localhost)."""
    profile = resolve(None, environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert profile == Profile()


@pytest.mark.parametrize(
    ("content", "environ", "name", "message"),
    [
        (FILE, {}, "staging", "no profile 'staging'"),
        (FILE.replace("port = 8883", 'port = "8883"'), {}, "", "profiles.prod.port"),
        (FILE.replace("port = 8883", "port = 70000"), {}, "", "profiles.prod.port"),
        (FILE + "colour = 1\n", {}, "", "colour"),
        (FILE.replace('host = "lab.local"', 'hots = "lab.local"'), {}, "lab", "hots"),
        ("[profiles.x\n", {}, "", "not valid TOML"),
        (FILE, {"MCUFLEET_CLI_PORT": "eighty"}, "", "MCUFLEET_CLI_PORT"),
        (FILE, {"MCUFLEET_CLI_HOTS": "x"}, "", "MCUFLEET_CLI_HOTS"),
    ],
)
def test_bad_profiles_are_clear_errors(
    tmp_path: Path, content: str, environ: dict[str, str], name: str, message: str
) -> None:
    """Unknown profiles, keys or variables and ill-typed values are errors that name the culprit."""
    path = tmp_path / "cli.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        resolve(path, name, environ)


def test_an_explicit_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    """--config naming no file is an error (only the default location may be absent)."""
    with pytest.raises(ConfigError, match="cannot read"):
        resolve(tmp_path / "nope.toml")


def test_the_examples_in_the_operations_guide_decode(tmp_path: Path) -> None:
    """docs/operations.md's controller key table and CLI profile file are valid as written."""
    text = (Path(__file__).resolve().parents[2] / "docs/operations.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    controller = next(block for block in blocks if block.startswith("[operator_auth]"))
    settings = msgspec.convert(tomllib.loads(controller), ControllerSettings, strict=True)
    assert OperatorKeys(settings.operator_auth).required
    cli = next(block for block in blocks if block.startswith("default_profile"))
    path = tmp_path / "cli.toml"
    path.write_text(cli)
    assert set(read_profile_file(path).profiles) == {"prod", "lab"}
