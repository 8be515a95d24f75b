"""Payload codecs: round trips, strict commands, evolving reports, and error messages that name fields."""

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import (
    MAX_PAYLOAD_BYTES,
    SPECS,
    DeviceReport,
    GatewayPresence,
    OfflineCause,
    OtaCommand,
    PauseRollout,
    PayloadError,
    TopicKind,
    decode,
    decode_as,
    encode,
    signing_payload,
    supersedes,
)
from tests.schemas.examples import example


@pytest.mark.parametrize("kind", list(TopicKind))
def test_examples_round_trip(kind: TopicKind) -> None:
    """Every topic's example payload decodes back to an equal value."""
    message = example(kind)
    assert decode(kind, encode(message)) == message


def test_command_errors_name_topic_and_field() -> None:
    """A command with a bad field is rejected with the topic and the JSON path of that field."""
    raw = msgspec.json.decode(encode(example(TopicKind.GATEWAY_COMMAND)))
    raw["artifact"]["sha256"] = "not-hex"
    with pytest.raises(PayloadError) as caught:
        decode(TopicKind.GATEWAY_COMMAND, msgspec.json.encode(raw), "mcufleet/v1/gw/gw-1/command")
    assert caught.value.field == "$.artifact.sha256"
    assert caught.value.topic == "mcufleet/v1/gw/gw-1/command"
    assert "gw-1/command" in str(caught.value)


def test_commands_reject_unknown_fields() -> None:
    """Inbound commands are strict: an unknown field is an error that names it."""
    raw = msgspec.json.decode(encode(example(TopicKind.GATEWAY_COMMAND)))
    raw["run_shell"] = "rm -rf /"
    with pytest.raises(PayloadError) as caught:
        decode(TopicKind.GATEWAY_COMMAND, msgspec.json.encode(raw))
    assert caught.value.field == "$.run_shell"


def test_operator_requests_reject_unknown_fields_in_nested_specs() -> None:
    """Strictness reaches nested structures: a typo inside a rollout spec is named with its path."""
    raw = msgspec.json.decode(encode(example(TopicKind.OPERATOR_REQUEST)))
    raw["spec"]["gates"] = {"succes_threshold": 0.9}
    with pytest.raises(PayloadError) as caught:
        decode(TopicKind.OPERATOR_REQUEST, msgspec.json.encode(raw))
    assert caught.value.field == "$.spec.gates.succes_threshold"


def test_unknown_command_kind_is_rejected() -> None:
    """A tagged union refuses a tag it does not know."""
    with pytest.raises(PayloadError, match="kind"):
        decode(TopicKind.GATEWAY_COMMAND, b'{"kind": "format_flash", "job_id": "j"}')


def test_reports_evolve_an_old_reader_ignores_new_fields() -> None:
    """A newer gateway may add report fields: today's reader decodes them and ignores the extras."""
    raw = msgspec.json.decode(encode(example(TopicKind.DEVICE_REPORT)))
    raw["battery_mv"] = 2950
    raw["images"][0]["future_flag"] = True
    report = decode_as(TopicKind.DEVICE_REPORT, msgspec.json.encode(raw), DeviceReport)
    assert report == example(TopicKind.DEVICE_REPORT)


def test_reports_from_older_gateways_use_defaults() -> None:
    """An older gateway that omits optional report fields still decodes."""
    minimal = (
        b'{"gateway_id":"gw-1","epoch":1,"seq":0,"device_serial":"S1","transport":"ble",'
        b'"address":"AA:BB:CC:DD:EE:FF","seen_at":"2026-11-24T12:00:00Z"}'
    )
    report = decode_as(TopicKind.DEVICE_REPORT, minimal, DeviceReport)
    assert report.images == []
    assert report.rssi_dbm is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"null",
        b"[]",
        b'"text"',
        b"\xff\xfe",
        b'{"kind":"ota"}',
        b"1e999999",
        b'{"kind":"ota","job_id":"j\xe1("}',  # a string that is not UTF-8 (found by tests/fuzz)
    ],
)
def test_garbage_is_a_payload_error(payload: bytes) -> None:
    """Non-JSON, wrong shapes and missing fields are PayloadErrors, never other exceptions."""
    with pytest.raises(PayloadError):
        decode(TopicKind.GATEWAY_COMMAND, payload)


def test_oversized_payload_is_refused_before_decoding() -> None:
    """A payload above the size cap is refused without being parsed."""
    with pytest.raises(PayloadError, match="exceeds"):
        decode(TopicKind.DEVICE_REPORT, b" " * (MAX_PAYLOAD_BYTES + 1))


def test_decode_as_checks_the_member_type() -> None:
    """decode_as refuses a valid payload of another type."""
    with pytest.raises(PayloadError, match="expected OtaCommand"):
        decode_as(TopicKind.GATEWAY_COMMAND, b'{"kind":"rebirth"}', OtaCommand)


def test_signing_payload_ignores_the_signature_fields() -> None:
    """The signed bytes are the same with or without a signature, and change with any other field."""
    unsigned = PauseRollout(request_id="r1", rollout_id="x", reason="storm")  # type: ignore[arg-type]
    signed = msgspec.structs.replace(unsigned, key_id="ops-1", signature="c2ln")
    assert signing_payload(unsigned) == signing_payload(signed)
    assert signing_payload(unsigned) != signing_payload(msgspec.structs.replace(unsigned, reason="calm"))


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_other_errors(payload: bytes) -> None:
    """Whatever arrives, every channel either decodes it or raises PayloadError."""
    for kind in SPECS:
        try:
            decode(kind, payload)
        except PayloadError:
            continue


def _presence(epoch: int, online: bool) -> GatewayPresence:
    return GatewayPresence(
        gateway_id="gw-1",  # type: ignore[arg-type]
        epoch=epoch,
        online=online,
        cause=OfflineCause.NONE if online else OfflineCause.WILL,
    )


def test_a_stale_will_does_not_mark_a_newer_session_dead() -> None:
    """A will of epoch 1 arriving after the birth of epoch 2 is ignored."""
    assert not supersedes(2, True, _presence(1, online=False))


def test_a_will_of_the_current_session_marks_it_dead() -> None:
    """The will of the current epoch replaces its birth; a birth never resurrects a dead epoch."""
    assert supersedes(2, True, _presence(2, online=False))
    assert not supersedes(2, False, _presence(2, online=True))


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=30))
def test_presence_converges_to_the_newest_epoch(events: list[tuple[int, bool]]) -> None:
    """Whatever the arrival order, the kept presence has the highest epoch that arrived."""
    epoch: int | None = None
    online: bool | None = None
    for event_epoch, event_online in events:
        incoming = _presence(event_epoch, event_online)
        if supersedes(epoch, online, incoming):
            epoch, online = incoming.epoch, incoming.online
    if events:
        assert epoch == max(e for e, _ in events)
