"""The shared `[mqtt]`, `[metrics]` and `[log]` tables and their one translation into `MqttSettings`."""

from __future__ import annotations

import msgspec
import pytest

from agent.settings import AgentSettings
from controller.settings import ControllerSettings
from service_runtime.mqtt import TlsSettings
from service_runtime.settings import MqttConfig, mqtt_settings


def test_the_mqtt_table_becomes_session_settings() -> None:
    """Every key of `[mqtt]` reaches the session; TLS only when a CA is configured."""
    config = MqttConfig(
        host="broker.example",
        port=8883,
        username="gw-7",
        password="pw-7",  # noqa: S106 - a test value
        ca_file="/ca.pem",
        cert_file="/gw.pem",
        key_file="/gw.key",
        keepalive_s=45,
        session_expiry_s=600,
        outbox_limit=500,
    )
    settings = mqtt_settings(config, client_id="gw-7")
    assert (settings.host, settings.port, settings.client_id) == ("broker.example", 8883, "gw-7")
    assert (settings.username, settings.password) == ("gw-7", "pw-7")
    assert settings.tls == TlsSettings("/ca.pem", "/gw.pem", "/gw.key")
    assert (settings.keepalive_s, settings.session_expiry_s, settings.outbox_limit) == (45, 600, 500)
    assert mqtt_settings(MqttConfig(), client_id="c").tls is None


def test_an_empty_username_takes_the_default() -> None:
    """A gateway without a configured username logs in under its gateway id."""
    assert mqtt_settings(MqttConfig(), client_id="gw-1", default_username="gw-1").username == "gw-1"
    assert mqtt_settings(MqttConfig(username="u"), client_id="gw-1", default_username="gw-1").username == "u"


def test_each_service_keeps_its_own_defaults() -> None:
    """The tables are shared; the agent's and the controller's defaults are what they were."""
    agent = msgspec.convert({"gateway_id": "gw-1"}, AgentSettings)
    controller = msgspec.convert({}, ControllerSettings)
    assert (agent.mqtt.username, agent.mqtt.outbox_limit, agent.mqtt.session_expiry_s) == (
        "",
        10_000,
        604_800,
    )
    assert (controller.mqtt.username, controller.mqtt.outbox_limit, controller.mqtt.session_expiry_s) == (
        "controller",
        200_000,
        120,
    )
    assert controller.mqtt.share_group == "controllers"
    assert (agent.metrics.port, controller.metrics.port) == (9464, 9465)


def test_a_service_keeps_its_own_constraints() -> None:
    """The controller's session expiry is capped at a week; the agent's is not."""
    with pytest.raises(msgspec.ValidationError, match=r"mqtt\.session_expiry_s"):
        msgspec.convert({"mqtt": {"session_expiry_s": 700_000}}, ControllerSettings)
    agent = msgspec.convert({"gateway_id": "gw-1", "mqtt": {"session_expiry_s": 700_000}}, AgentSettings)
    assert agent.mqtt.session_expiry_s == 700_000
