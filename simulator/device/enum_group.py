"""Enumeration management (group 10): how many groups the device serves, which, and what they are.

Rules (zephyrproject-rtos/zephyr:subsys/mgmt/mcumgr/grp/enum_mgmt/src/enum_mgmt.c), as measured on
the Zephyr 4.4.0 native_sim_udp build; groups are listed in registration order:
- count (0): `{"count": n}`; list (1): `{"groups": [...]}`; neither reads its payload.
- single (2): `index` (default 0) selects one group: `{"group": g}`, with `"end": true` on the last;
  an index past the last is group error 4 (INDEX_TOO_LARGE); an index that is not an unsigned
  integer is rc 3.
- details (3): `{"groups": [{"group", "name", "handlers"}, ...]}` for every group, or, when
  `groups` is a list, for the served groups it names (still in registration order, unknown ids
  left out); a `groups` that is not a list counts as absent.
- Writes, and commands from 4 on, have no handler (rc 8).
"""

from dataclasses import dataclass
from enum import IntEnum

import cbor2

from simulator.device.cbor import ReplyValue, RequestMap
from simulator.device.codes import EnumCommand, Group, MgmtErr, Op
from simulator.device.replies import GroupError, MgmtError, Ok, Reply
from simulator.errors import CborDecodeError


class EnumErr(IntEnum):
    """`enum_mgmt_err_code_t`."""

    OK = 0
    UNKNOWN = 1
    TOO_MANY_GROUP_ENTRIES = 2
    INSUFFICIENT_HEAP_FOR_ENTRIES = 3
    INDEX_TOO_LARGE = 4


@dataclass(frozen=True, slots=True)
class ServedGroup:
    """One registered group as details reports it: `handlers` is the size of its handler table."""

    group: int
    name: str
    handlers: int


def handle_enumeration(
    command_id: int, op: int, payload: bytes, served: tuple[ServedGroup, ...]
) -> Reply | None:
    """Handle one enumeration request for a device serving `served`; None: no handler."""
    if op != Op.READ:
        return None
    match command_id:
        case EnumCommand.COUNT:
            return Ok({"count": len(served)})
        case EnumCommand.LIST:
            return Ok({"groups": [entry.group for entry in served]})
        case EnumCommand.SINGLE:
            return _single(payload, served)
        case EnumCommand.DETAILS:
            return _details(payload, served)
    return None


def _single(payload: bytes, served: tuple[ServedGroup, ...]) -> Reply:
    try:
        index = RequestMap.decode(payload).uint("index")
    except CborDecodeError:
        return MgmtError(MgmtErr.EINVAL)
    index = index or 0
    if index >= len(served):
        return GroupError(Group.ENUMERATION, EnumErr.INDEX_TOO_LARGE)
    if index == len(served) - 1:
        return Ok({"group": served[index].group, "end": True})
    return Ok({"group": served[index].group})


def _details(payload: bytes, served: tuple[ServedGroup, ...]) -> Reply:
    try:
        RequestMap.decode(payload)
        # Our zcbor-like decoder checks the map but keeps no arrays; cbor2 reads the list itself.
        wanted = cbor2.loads(payload).get("groups")
    except (CborDecodeError, cbor2.CBORDecodeError, AttributeError, TypeError, ValueError):
        return MgmtError(MgmtErr.EINVAL)
    chosen = served
    if isinstance(wanted, list):
        ids = {value for value in wanted if isinstance(value, int)}
        chosen = tuple(entry for entry in served if entry.group in ids)
    entries: list[ReplyValue] = [
        {"group": entry.group, "name": entry.name, "handlers": entry.handlers} for entry in chosen
    ]
    return Ok({"groups": entries})
