"""The SMP server loop of Zephyr's smp.c, as a pure function from one datagram to its reply frames.

Rules (zephyrproject-rtos/zephyr:subsys/mgmt/mcumgr/smp/src/smp.c, `smp_process_request_packet()`):
- A datagram may hold several requests; each is answered in its own frame, in order, and the first
  error reply ends the datagram.
- Fewer than 8 bytes left: silence. A header whose length runs past the datagram: `{"rc": 9}`.
- Ops other than read and write: `{"rc": 8}`. v1 without original-protocol support: `{"rc": 12}`;
  version bits 2 or 3: `{"rc": 13}`. No handler for the group, command or op: `{"rc": 8}`.
- A handler's SMP error replaces the partial reply with `{"rc": n}`; a group error is `{"err": ...}`
  in v2 and the group's translated `rc` in v1. A reply that would not fit `buf_size`: `{"rc": 7}`.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from simulator.device import codec
from simulator.device.cbor import ReplyValue
from simulator.device.codec import HEADER_SIZE_BYTES, Header
from simulator.device.codes import MgmtErr, Op, SmpVersion, translate_group_error
from simulator.device.replies import Effect, GroupError, MgmtError, Ok, Reply


@dataclass(frozen=True, slots=True)
class SmpOptions:
    """Firmware build options that shape replies."""

    buf_size_bytes: int = 2048
    """CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE: the largest reply frame."""
    original_protocol: bool = True
    """CONFIG_MCUMGR_SMP_SUPPORT_ORIGINAL_PROTOCOL: answer v1 requests (translating group errors)."""
    legacy_rc: bool = False
    """CONFIG_MCUMGR_SMP_LEGACY_RC_BEHAVIOUR: `"rc": 0` in every success reply."""
    extra_fields: Mapping[str, ReplyValue] = field(default_factory=dict)
    """Fields a newer firmware might add to every success reply (clients must tolerate them)."""


class Dispatch(Protocol):
    """Routes one request to its handler; None means no handler for that group, command and op."""

    def __call__(self, header: Header, payload: bytes) -> Reply | None:
        """Handle one request."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One reply frame and the effects its handler asked for."""

    request: Header
    frame: bytes
    effects: tuple[Effect, ...] = ()
    handled: bool = False
    """True when the request reached the group dispatch (and so cost processing time)."""


def process_datagram(datagram: bytes, dispatch: Dispatch, options: SmpOptions) -> list[Answer]:
    """Answer every request in `datagram` as Zephyr's SMP server would."""
    answers: list[Answer] = []
    position = 0
    while len(datagram) - position >= HEADER_SIZE_BYTES:
        header = Header.parse(datagram[position : position + HEADER_SIZE_BYTES])
        position += HEADER_SIZE_BYTES
        if len(datagram) - position < header.length:
            answers.append(_error(header, MgmtErr.ECORRUPT))
            break
        payload = datagram[position : position + header.length]
        position += header.length
        answer, failed = _handle_one(header, payload, dispatch, options)
        answers.append(answer)
        if failed:
            break
    return answers


def _handle_one(  # noqa: PLR0911 - one return per smp.c rule, in its order
    header: Header, payload: bytes, dispatch: Dispatch, options: SmpOptions
) -> tuple[Answer, bool]:
    if header.op not in (Op.READ, Op.WRITE):
        return _error(header, MgmtErr.ENOTSUP), True
    if header.version == SmpVersion.V1 and not options.original_protocol:
        return _error(header, MgmtErr.UNSUPPORTED_TOO_OLD), True
    if header.version > SmpVersion.V2:
        return _error(header, MgmtErr.UNSUPPORTED_TOO_NEW), True
    reply = dispatch(header, payload)
    match reply:
        case None:
            return _handled(_error(header, MgmtErr.ENOTSUP)), True
        case MgmtError(rc=rc):
            return _handled(_error(header, rc)), True
        case GroupError(group=group, rc=rc, effects=effects):
            if header.version == SmpVersion.V1:
                return _handled(_error(header, translate_group_error(group, rc))), True
            payload_out = codec.group_error_payload(group, rc)
        case Ok(fields=fields, effects=effects):
            payload_out = codec.ok_payload(fields, legacy_rc=options.legacy_rc, extra=options.extra_fields)
    if HEADER_SIZE_BYTES + len(payload_out) > options.buf_size_bytes:
        return _handled(_error(header, MgmtErr.EMSGSIZE)), True
    return Answer(header, codec.reply_frame(header, payload_out), effects, handled=True), False


def _handled(answer: Answer) -> Answer:
    return replace(answer, handled=True)


def _error(header: Header, rc: int) -> Answer:
    return Answer(header, codec.reply_frame(header, codec.rc_payload(rc)))
