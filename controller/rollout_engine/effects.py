"""What the rollout machine asks the outside world to do; the coordinator carries each one out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas import GateDecision


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send an OTA command for `serial` through `gateway_id`."""

    job_id: str
    serial: str
    gateway_id: str
    attempt: int
    deadline: datetime


@dataclass(frozen=True, slots=True)
class Cancel:
    """Ask `gateway_id` to cancel a job (it was rerouted, canceled or the rollout aborted)."""

    job_id: str
    gateway_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Audit:
    """A transition worth a line in the audit log."""

    action: str
    detail: str


@dataclass(frozen=True, slots=True)
class GateDecided:
    """A gate decision that changed the rollout."""

    decision: GateDecision


Effect = Dispatch | Cancel | Audit | GateDecided
