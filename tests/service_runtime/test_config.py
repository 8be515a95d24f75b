"""Config loading: TOML plus environment overrides into strict Structs, with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from service_runtime.config import load_config
from service_runtime.errors import ConfigError


class Broker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A nested table."""

    host: str = "127.0.0.1"
    port: int = 1883


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A settings document like the agent's."""

    gateway_id: str
    mqtt: Broker = Broker()
    tags: tuple[str, ...] = ()


def test_file_and_environment_are_merged_with_environment_winning(tmp_path: Path) -> None:
    """Environment variables override file values, parsed as TOML values where they can be."""
    path = tmp_path / "agent.toml"
    path.write_text('gateway_id = "gw-1"\n[mqtt]\nhost = "broker"\nport = 1884\n')
    environ = {"MCUFLEET_AGENT__MQTT__PORT": "8883", "MCUFLEET_AGENT__TAGS": '["a", "b"]', "OTHER": "x"}
    settings = load_config(Settings, path, env_prefix="MCUFLEET_AGENT", environ=environ)
    assert settings == Settings(gateway_id="gw-1", mqtt=Broker(host="broker", port=8883), tags=("a", "b"))


def test_defaults_apply_without_a_file() -> None:
    """With no file, the environment alone can supply the required values."""
    settings = load_config(
        Settings, None, env_prefix="MCUFLEET_AGENT", environ={"MCUFLEET_AGENT__GATEWAY_ID": "gw-9"}
    )
    assert settings.gateway_id == "gw-9" and settings.mqtt == Broker()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('gateway_id = "g"\n[mqtt]\nprot = 1\n', "$.mqtt", "unknown field `prot`"),
        ('gateway_id = "g"\n[mqtt]\nport = "1883"\n', "$.mqtt.port", "Expected `int`, got `str`"),
        ("[mqtt]\n", "$", "missing required field `gateway_id`"),
        ("gateway_id = ", "$", "not valid TOML"),
        ("\xff\xfe", "$", "not valid TOML"),
    ],
)
def test_bad_files_name_the_key_and_the_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    """Typos, wrong types, missing keys and broken TOML stop loading with the key named."""
    path = tmp_path / "agent.toml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(Settings, path, env_prefix="MCUFLEET_AGENT", environ={})
    assert caught.value.key == key and reason in caught.value.reason


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is reported as such, not as a crash."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Settings, tmp_path / "absent.toml", env_prefix="X", environ={})


def test_environment_cannot_descend_into_a_value(tmp_path: Path) -> None:
    """An override that treats a value as a table is refused with the variable named."""
    environ = {"MCUFLEET_AGENT__GATEWAY_ID": "g", "MCUFLEET_AGENT__GATEWAY_ID__X": "1"}
    with pytest.raises(ConfigError, match="MCUFLEET_AGENT__GATEWAY_ID__X"):
        load_config(Settings, None, env_prefix="MCUFLEET_AGENT", environ=environ)
