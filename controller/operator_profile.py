"""The operator CLI's connection profiles: `~/.config/mcufleet/cli.toml`, environment, then flags.

A profile file holds several named profiles:

    default_profile = "prod"

    [profiles.prod]
    host = "mqtt.example.com"
    port = 8883
    ca_file = "ca.crt"              # relative paths are relative to this file
    cert_file = "alice.crt"
    key_file = "alice.key"
    signing_key_id = "alice-2026"
    signing_key_file = "alice-signing.pem"

The profile is the one named by `--profile`, else `MCUFLEET_CLI_PROFILE`, else `default_profile`,
else the profile named `default`, else the built-in defaults. Each field can then be overridden
by `MCUFLEET_CLI_<FIELD>` (`MCUFLEET_CLI_PASSWORD=...`), and flags override everything. The file is
`--config`, else `MCUFLEET_CLI_CONFIG`, else `$XDG_CONFIG_HOME/mcufleet/cli.toml` (by default
`~/.config/mcufleet/cli.toml`); only the default location may be missing. The file is decoded
strictly: an unknown key or an ill-typed value is an error naming it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from controller.errors import ConfigError

T = TypeVar("T")
ENV_PREFIX = "MCUFLEET_CLI_"
MAX_PROFILE_FILE_BYTES = 256 * 1024

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Name = Annotated[str, msgspec.Meta(max_length=256)]


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How to reach the broker and sign requests as one operator."""

    host: Name = "127.0.0.1"
    port: Port = 1883
    tls: bool = False
    """Use TLS (implied by `ca_file` or `cert_file`; with neither, the system CAs are trusted)."""
    ca_file: str = ""
    """The CA that signed the broker's certificate."""
    cert_file: str = ""
    """This operator's client certificate: its CN is the MQTT username the broker ACL sees."""
    key_file: str = ""
    """The client certificate's private key."""
    username: Name = ""
    password: Name = ""
    prefix: Name = "mcufleet/v1"
    operator: Name = ""
    """Your name in requests (the audit records the signing key's identity when requests are signed)."""
    signing_key_id: Name = ""
    signing_key_file: str = ""
    """Ed25519 private key (PEM) that signs requests, registered with the controller as `signing_key_id`."""
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    """How long to wait for the broker and for the controller's reply."""

    @property
    def uses_tls(self) -> bool:
        """Whether to connect with TLS."""
        return self.tls or bool(self.ca_file or self.cert_file)


class ProfileFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole `cli.toml`."""

    default_profile: Name = ""
    profiles: dict[str, Profile] = msgspec.field(default_factory=dict)


PATH_FIELDS = ("ca_file", "cert_file", "key_file", "signing_key_file")
FIELDS: tuple[str, ...] = Profile.__struct_fields__


def default_path(environ: Mapping[str, str]) -> Path | None:
    """`$XDG_CONFIG_HOME/mcufleet/cli.toml`, else `~/.config/mcufleet/cli.toml` (None without a home)."""
    base = environ.get("XDG_CONFIG_HOME", "")
    if base:
        return Path(base) / "mcufleet" / "cli.toml"
    home = environ.get("HOME", "")
    if not home:
        try:
            home = str(Path.home())
        except RuntimeError:
            return None
    return Path(home) / ".config" / "mcufleet" / "cli.toml"


def read_profile_file(path: Path) -> ProfileFile:
    """Decode `path` strictly.

    Raises:
        ConfigError: unreadable, too large, not TOML, or a key unknown or ill-typed (named).
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"profile file {path}: cannot read: {error.strerror or error}") from None
    if len(raw) > MAX_PROFILE_FILE_BYTES:
        raise ConfigError(f"profile file {path}: {len(raw)} bytes is larger than {MAX_PROFILE_FILE_BYTES}")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"profile file {path}: not valid TOML: {error}") from None
    bodies = document.pop("profiles", {})
    if not isinstance(bodies, dict):
        raise ConfigError(f"profile file {path}: `profiles` must be a table of [profiles.<name>] tables")
    # Each profile on its own, so an error names the profile it is in.
    profiles = {name: _strict(Profile, body, path, f"profiles.{name}") for name, body in bodies.items()}
    header = _strict(ProfileFile, document, path, "")
    return msgspec.structs.replace(header, profiles=profiles)


def _strict(kind: type[T], document: object, path: Path, where: str) -> T:
    try:
        return msgspec.convert(document, kind, strict=True)
    except msgspec.ValidationError as error:
        message = (
            str(error).replace("`$.", f"`{where}." if where else "`").replace("`$`", f"`{where or '$'}`")
        )
        raise ConfigError(f"profile file {path}: {message}") from None


def resolve_profile(
    *,
    config_path: Path | None,
    profile_name: str,
    environ: Mapping[str, str],
    flags: Mapping[str, object],
) -> Profile:
    """The effective profile: file, then environment, then `flags` (fields given on the command line).

    Raises:
        ConfigError: the file is bad, the profile unknown, or an override ill-typed (its source named).
    """
    explicit = config_path or (
        Path(environ[f"{ENV_PREFIX}CONFIG"]) if environ.get(f"{ENV_PREFIX}CONFIG") else None
    )
    path = explicit or default_path(environ)
    document = ProfileFile()
    if path is not None and (explicit is not None or path.exists()):
        document = read_profile_file(path)
    name = profile_name or environ.get(f"{ENV_PREFIX}PROFILE", "") or document.default_profile
    if name:
        if name not in document.profiles:
            known = ", ".join(sorted(document.profiles)) or "none"
            raise ConfigError(f"no profile {name!r} in {path} (profiles: {known})")
        profile = document.profiles[name]
    else:
        profile = document.profiles.get("default", Profile())
    if path is not None:
        profile = _anchor_paths(profile, path.parent)
    for variable, value in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or variable in (f"{ENV_PREFIX}CONFIG", f"{ENV_PREFIX}PROFILE"):
            continue
        field = variable[len(ENV_PREFIX) :].lower()
        if field not in FIELDS:
            raise ConfigError(f"{variable}: no profile field {field!r} (fields: {', '.join(FIELDS)})")
        profile = _override(profile, {field: value}, variable)
    for flag, given in flags.items():
        profile = _override(profile, {flag: given}, f"--{flag.replace('_', '-')}")
    return _expand_home(profile)


def _override(profile: Profile, values: dict[str, object], source: str) -> Profile:
    document: dict[str, Any] = {**msgspec.to_builtins(profile), **values}
    try:
        # Not strict: environment values are strings ("8883", "true").
        return msgspec.convert(document, Profile, strict=False)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{source}: {error}") from None


def _anchor_paths(profile: Profile, directory: Path) -> Profile:
    changes = {
        name: str(directory / value)
        for name in PATH_FIELDS
        if (value := getattr(profile, name)) and not os.path.isabs(value) and not value.startswith("~")
    }
    return msgspec.structs.replace(profile, **changes) if changes else profile


def _expand_home(profile: Profile) -> Profile:
    changes = {
        name: os.path.expanduser(value)
        for name in PATH_FIELDS
        if (value := getattr(profile, name)).startswith("~")
    }
    return msgspec.structs.replace(profile, **changes) if changes else profile
