"""Scripted faults for one device: what goes wrong, when, and how often.

A `FaultPlan` is a value; the device keeps the progress (which one-shot faults already fired).
Numbers of responses are 1-based and count every reply frame the device produces, dropped or not.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from simulator.device.cbor import ReplyValue


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Faults to inject into one simulated device (the default injects none)."""

    drop_responses: frozenset[int] = frozenset()
    """Reply numbers (1-based) that are never sent: the request was handled, the reply is lost."""
    delay_responses_s: Mapping[int, float] = field(default_factory=dict)
    """Reply number -> extra seconds before that reply leaves the device."""
    silent_at_upload_offset: int | None = None
    """The first upload chunk at or beyond this offset is dropped and the device goes silent."""
    silent_duration_s: float = 0.0
    """How long the device ignores every frame once `silent_at_upload_offset` fires."""
    reboot_at_upload_offset: int | None = None
    """The first upload chunk at or beyond this offset is dropped and the device reboots at once
    (the upload session is lost, the partial image stays in slot 1)."""
    first_chunk_erase_delay_s: float = 0.0
    """Extra time the first chunk of every new upload takes (a slow slot erase); the device is busy."""
    legacy_rc: bool = False
    """Every success reply starts with `"rc": 0` (CONFIG_MCUMGR_SMP_LEGACY_RC_BEHAVIOUR)."""
    extra_fields: Mapping[str, ReplyValue] = field(default_factory=dict)
    """Fields appended to every success reply, as a newer firmware might send."""
    bad_build_versions: frozenset[str] = frozenset()
    """Image versions (Zephyr form, `1.2.3`) that never come up: a test boot reverts, a permanent
    install bricks the device."""


class UploadFault(StrEnum):
    """What an upload chunk triggers."""

    GO_SILENT = "go_silent"
    REBOOT = "reboot"


class FaultState:
    """A plan and its progress: which one-shot faults fired, how many replies were numbered."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._replies_seen = 0
        self._silent_fired = False
        self._reboot_fired = False

    @property
    def watches_uploads(self) -> bool:
        """Whether an upload chunk could still trigger a fault."""
        plan = self.plan
        return (plan.silent_at_upload_offset is not None and not self._silent_fired) or (
            plan.reboot_at_upload_offset is not None and not self._reboot_fired
        )

    def on_upload_chunk(self, offset: int) -> UploadFault | None:
        """The fault an upload chunk at `offset` fires (each fires once), if any."""
        silent_at, reboot_at = self.plan.silent_at_upload_offset, self.plan.reboot_at_upload_offset
        if silent_at is not None and not self._silent_fired and offset >= silent_at:
            self._silent_fired = True
            return UploadFault.GO_SILENT
        if reboot_at is not None and not self._reboot_fired and offset >= reboot_at:
            self._reboot_fired = True
            return UploadFault.REBOOT
        return None

    def next_reply_delay_s(self) -> float | None:
        """Number the next reply; None if the plan drops it, else its extra delay."""
        self._replies_seen += 1
        if self._replies_seen in self.plan.drop_responses:
            return None
        return self.plan.delay_responses_s.get(self._replies_seen, 0.0)
