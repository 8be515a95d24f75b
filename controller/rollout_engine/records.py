"""The persisted state of one rollout (msgpack via msgspec; mutable, owned by its machine)."""

from __future__ import annotations

import msgspec

from controller.rollout_engine.gates import Evidence
from schemas import DeviceJobState, GateDecision, RolloutPlan, RolloutSpec, RolloutStatus


class RolloutDevice(msgspec.Struct, kw_only=True):
    """Where one device stands in one rollout (the fleet store's `DeviceRecord` is the device itself)."""

    wave: int
    gateway: str
    hardware_version: str = ""
    state: DeviceJobState = DeviceJobState.PENDING
    attempts: int = 0
    job_id: str = ""
    dispatched_at: float = 0.0
    progress_at: float = 0.0
    next_attempt_at: float = 0.0
    reason: str = ""
    tried: list[str] = msgspec.field(default_factory=list)
    """Gateways that already failed this device (routing avoids them while others hear it)."""
    unheard_since: float = 0.0
    """When dispatch last found no online gateway for it (0: it was heard at the last try)."""
    failures_at: list[float] = msgspec.field(default_factory=list)
    """When its recent attempts failed (the penalty box parks it at `penalty.device_failures`)."""
    cancel_at: float = 0.0
    """When its job is canceled because its maintenance window closed (0: it may finish)."""
    window_canceled: bool = False
    """The job in flight was canceled by its window's end: a canceled result gives the attempt back."""
    evidence: Evidence = Evidence.NONE
    """What its ended job says about the release (the gate counts it); NONE while not ended."""


class RolloutSnapshot(msgspec.Struct, kw_only=True):
    """Everything a rollout machine needs to continue after a restart."""

    rollout_id: str
    spec: RolloutSpec
    created_at: float
    status: RolloutStatus = RolloutStatus.CREATED
    plan: RolloutPlan | None = None
    devices: dict[str, RolloutDevice] = msgspec.field(default_factory=dict)
    order: list[str] = msgspec.field(default_factory=list)
    current_wave: int = 0
    wave_started_at: float = 0.0
    soak_until: float | None = None
    gate_decisions: list[GateDecision] = msgspec.field(default_factory=list)
    paused_reason: str = ""
    short_sample_accepted_wave: int = -1
    """The wave whose short sample an operator accepted by resuming the hold on it."""
    job_seq: int = 0
    started: int = 0
    ramp_cap: int = 0
    tokens: float = 1.0
    tokens_at: float = 0.0
    window_started_at: float = 0.0
    window_base: int = 0
    window_pending: int = 0
    gateway_successes: dict[str, int] = msgspec.field(default_factory=dict)
    gateway_failures: dict[str, int] = msgspec.field(default_factory=dict)
    gateway_strikes: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)
    """Per gateway, the devices whose jobs through it failed on the link lately, and when."""
    gateway_cooled_until: dict[str, float] = msgspec.field(default_factory=dict)
    gateway_coolings: dict[str, int] = msgspec.field(default_factory=dict)
    """Coolings in a row per gateway (each doubles the next); a success through it resets them."""
