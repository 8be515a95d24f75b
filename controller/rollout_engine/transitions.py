"""Every status change a rollout may make: one table of (status, event) -> new status.

Rules of this file:
- `TRANSITIONS` is the whole lifecycle of `RolloutStatus`; a change not in it does not happen.
  The machine (`machine.py`) never assigns a status itself: it names the event and stores what
  `next_status` returns.
- An event names what happened (an operator's request or the gate's verdict), not where it leads;
  the operator and the failure gate share PAUSE and ABORT because they lead to the same place.
- `may_take` lets a request check the table before it changes anything, so a refused request
  leaves the rollout as it was; the request then refuses in its own words.
- Only status lives here: waves, soak, reasons and device states stay in the machine.
- Pure: no clock, no I/O, no state of its own.

    CREATED --PLAN--> PLANNED (PLAN again: a new plan) --START--> RUNNING
    RUNNING --PAUSE--> PAUSED --RESUME--> RUNNING
    RUNNING --COMPLETE--> COMPLETED --REOPEN--> RUNNING
    CREATED, PLANNED, RUNNING, PAUSED --ABORT--> ABORTED (for good)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from controller.errors import RolloutError
from schemas import RolloutStatus


class StatusEvent(enum.StrEnum):
    """Something that happened to a rollout that may change its status."""

    PLAN = "plan"
    """A plan was adopted (again, while not started)."""
    START = "start"
    """An operator approved the plan and started."""
    PAUSE = "pause"
    """An operator, or the failure gate, stopped new jobs."""
    RESUME = "resume"
    """An operator resumed a paused rollout."""
    ABORT = "abort"
    """An operator, or the failure gate, ended the rollout without finishing it."""
    COMPLETE = "complete"
    """The gate promoted the last wave."""
    REOPEN = "reopen"
    """An operator retried failed devices of a completed rollout."""


_S, _E = RolloutStatus, StatusEvent
TRANSITIONS: Mapping[tuple[RolloutStatus, StatusEvent], RolloutStatus] = MappingProxyType(
    {
        (_S.CREATED, _E.PLAN): _S.PLANNED,
        (_S.PLANNED, _E.PLAN): _S.PLANNED,
        (_S.PLANNED, _E.START): _S.RUNNING,
        (_S.RUNNING, _E.PAUSE): _S.PAUSED,
        (_S.PAUSED, _E.RESUME): _S.RUNNING,
        (_S.RUNNING, _E.COMPLETE): _S.COMPLETED,
        (_S.COMPLETED, _E.REOPEN): _S.RUNNING,
        (_S.CREATED, _E.ABORT): _S.ABORTED,
        (_S.PLANNED, _E.ABORT): _S.ABORTED,
        (_S.RUNNING, _E.ABORT): _S.ABORTED,
        (_S.PAUSED, _E.ABORT): _S.ABORTED,
    }
)
"""(status, event) -> the status after it; a pair missing here is a forbidden change."""


def may_take(status: RolloutStatus, event: StatusEvent) -> bool:
    """Whether a rollout in `status` may take `event` (a row of `TRANSITIONS` exists)."""
    return (status, event) in TRANSITIONS


def next_status(status: RolloutStatus, event: StatusEvent) -> RolloutStatus:
    """The status after `event` in `status`; raises `RolloutError` on a change not in the table."""
    try:
        return TRANSITIONS[status, event]
    except KeyError:
        allowed = ", ".join(sorted(e.value for s, e in TRANSITIONS if s is status)) or "none"
        message = f"rollout is {status}; it cannot take {event!s} (from {status} only: {allowed})"
        raise RolloutError(message) from None
