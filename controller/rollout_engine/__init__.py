"""The pure rollout core: planner, gates and the per-rollout state machine (no I/O, no clock)."""
