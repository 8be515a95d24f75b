"""Enumeration management (group 10): how many groups the device serves and which.

Rules (zephyrproject-rtos/zephyr:subsys/mgmt/mcumgr/grp/enum_mgmt/src/enum_mgmt.c), as the real
Zephyr 4.4.0 smp_server builds answer them (measured on native_sim_udp):
- count (0) read answers `{"count": n}` and list (1) read `{"groups": [...]}` in registration
  order; neither reads its payload (unknown keys are ignored).
- single (2) and details (3) reads answer `{"rc": 3}` whatever the payload (`index` 0 to 100,
  `groups` of served or unknown ids, nothing at all).
- Writes, and commands from 4 on, have no handler (rc 8).
"""

from simulator.device.codes import EnumCommand, MgmtErr, Op
from simulator.device.replies import MgmtError, Ok, Reply


def handle_enumeration(command_id: int, op: int, served: tuple[int, ...]) -> Reply | None:
    """Handle one enumeration request for a device serving the groups `served`; None: no handler."""
    if op != Op.READ:
        return None
    match command_id:
        case EnumCommand.COUNT:
            return Ok({"count": len(served)})
        case EnumCommand.LIST:
            return Ok({"groups": list(served)})
        case EnumCommand.SINGLE | EnumCommand.DETAILS:
            return MgmtError(MgmtErr.EINVAL)
    return None
