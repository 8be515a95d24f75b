"""The operator CLI's reading of broker answers: SUBACK failure codes and CONNACK refusals."""

from __future__ import annotations

from typing import Any, cast

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from controller.operator_cli import CliFailure, Exit, connect_failure, subscribe_or_fail
from controller.operator_profile import Profile


class GrantingClient:
    """Answers every SUBSCRIBE with the given reason code."""

    def __init__(self, code: int) -> None:
        self.code = code

    async def subscribe(self, topic: str, qos: int = 0) -> list[ReasonCode]:
        return [ReasonCode(PacketTypes.SUBACK, identifier=self.code)]


async def test_a_suback_failure_code_is_an_acl_denial() -> None:
    """0x87 (not authorized) on SUBACK exits 7 naming the topic; granted QoS 1 passes."""
    await subscribe_or_fail(cast(aiomqtt.Client, GrantingClient(1)), "t/ok")
    with pytest.raises(CliFailure) as raised:
        await subscribe_or_fail(cast(aiomqtt.Client, GrantingClient(0x87)), "t/denied")
    assert raised.value.code is Exit.DENIED and "t/denied" in str(raised.value)


@pytest.mark.parametrize(
    ("code", "expected"), [(0x86, Exit.LOGIN_REFUSED), (0x87, Exit.LOGIN_REFUSED), (0x88, Exit.UNREACHABLE)]
)
def test_connack_refusals_are_told_apart(code: int, expected: Exit) -> None:
    """Bad username or password and not authorised exit 6; server unavailable exits 4."""
    error: Any = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=code))
    assert connect_failure(error, Profile()).code is expected
