"""Configuration: a TOML file, overridden by environment variables, converted into typed Structs.

`MCUFLEET_AGENT__MQTT__HOST=broker` overrides `[mqtt] host` for a loader with prefix `MCUFLEET_AGENT`.
Environment values are read as TOML values when they parse as one (`1883`, `true`, `["a"]`) and as
plain strings otherwise. Unknown keys are errors (the Structs forbid them), so a typo in a config
file stops the process at start with the key named, instead of silently using a default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from service_runtime.errors import ConfigError

T = TypeVar("T")

MAX_CONFIG_BYTES = 1024 * 1024


def load_config(config_type: type[T], path: Path | None, *, env_prefix: str, environ: Mapping[str, str]) -> T:
    """Read `path` (optional), apply `env_prefix` overrides from `environ`, and convert to `config_type`.

    Raises:
        ConfigError: the file is unreadable, too large or not TOML, or a value is unknown or ill-typed.
    """
    document: dict[str, Any] = {}
    source = str(path) if path is not None else "<defaults>"
    if path is not None:
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise ConfigError(source, "$", f"cannot read: {error.strerror or error}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(source, "$", f"{len(raw)} bytes is larger than {MAX_CONFIG_BYTES}")
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(source, "$", f"not valid TOML: {error}") from None
    marker = f"{env_prefix}__"
    for name, value in sorted(environ.items()):
        if not name.startswith(marker):
            continue
        keys = [key.lower() for key in name[len(marker) :].split("__")]
        if not all(keys):
            raise ConfigError(name, "$", "empty key level in variable name")
        _assign(document, keys, _parse_env_value(value), name)
        source = f"{source} + environment"
    try:
        return msgspec.convert(document, config_type, strict=True)
    except msgspec.ValidationError as error:
        text = str(error)
        reason, _, at = text.partition(" - at `")
        key = at.rstrip("`") or "$"
        raise ConfigError(source, key, reason) from None


def _parse_env_value(value: str) -> object:
    try:
        return tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError:
        return value


def _assign(document: dict[str, Any], keys: list[str], value: object, variable: str) -> None:
    node = document
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(variable, ".".join(keys), f"{key} is a value, not a table")
        node = child
    node[keys[-1]] = value
