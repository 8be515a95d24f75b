"""The config tables both services have (`[mqtt]`, `[metrics]`, `[log]`), and `[mqtt]` as `MqttSettings`.

`mqtt_settings` is the one translation of the `[mqtt]` table into the session's settings.

Each service subclasses a table where its defaults differ (the controller's MQTT username, outbox,
session expiry and share group; each service's metrics port): msgspec keeps a redefined field in its
place with the new default and constraints, so a key means the same thing in both files.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from service_runtime.mqtt import MqttSettings, TlsSettings

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


class MqttConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The broker and this process's credentials (TLS when `ca_file` is set)."""

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, msgspec.Meta(ge=0)] = 7 * 24 * 3600
    topic_prefix: str = "mcufleet/v1"
    outbox_limit: Annotated[int, msgspec.Meta(ge=10)] = 10_000


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where `/metrics` is served (loopback by default; port 0 picks a free one)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Log level and format (JSON lines for journald, console for a terminal)."""

    level: str = "info"
    json: bool = True


def mqtt_settings(config: MqttConfig, *, client_id: str, default_username: str = "") -> MqttSettings:
    """The session settings for `[mqtt]`; `default_username` stands in for an empty `username`."""
    tls = TlsSettings(config.ca_file, config.cert_file, config.key_file) if config.ca_file else None
    return MqttSettings(
        config.host,
        config.port,
        client_id,
        username=config.username or default_username,
        password=config.password,
        tls=tls,
        keepalive_s=config.keepalive_s,
        session_expiry_s=config.session_expiry_s,
        outbox_limit=config.outbox_limit,
    )
