"""What a command handler answers: a success map, a group error or an SMP error, plus side effects.

Handlers are pure functions of the request and the device state they were given; anything that
must happen later or outside the reply (a reboot, a slow flash erase) is returned as an effect for
the device to schedule.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from simulator.device.cbor import ReplyValue
from simulator.device.codes import MgmtErr


@dataclass(frozen=True, slots=True)
class ResetRequested:
    """OS reset: reboot once the reply is out (after the firmware's reset delay)."""


@dataclass(frozen=True, slots=True)
class FlashErased:
    """The handler erased this much flash before answering (it takes time on a real part)."""

    size_bytes: int


@dataclass(frozen=True, slots=True)
class UploadStarted:
    """A first upload chunk started a new session of this size (the slot was checked and erased)."""

    size_bytes: int


Effect = ResetRequested | FlashErased | UploadStarted


@dataclass(frozen=True, slots=True)
class Ok:
    """A success reply: the command's fields, in the order the firmware writes them."""

    fields: Mapping[str, ReplyValue] = field(default_factory=dict)
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupError:
    """A group error (`smp_add_cmd_err`): `{"err": {...}}` in v2, a translated `rc` in v1."""

    group: int
    rc: int
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class MgmtError:
    """An SMP error a handler returns: the partial reply is dropped and `{"rc": n}` sent instead."""

    rc: MgmtErr


Reply = Ok | GroupError | MgmtError
