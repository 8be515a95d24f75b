"""The pure rules of what the controller believes from a gateway."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.device_probe import fingerprint as agent_fingerprint
from controller.gateway_trust import (
    REFUSAL_LABELS,
    RefusalReason,
    RefusedKind,
    credential_refusal,
    job_event_refusal,
    key_fingerprint,
)

GATEWAYS = st.sampled_from(["gw-a", "gw-b", "gw-c"])


@given(sender=GATEWAYS, claimed=GATEWAYS, dispatched_to=st.none() | GATEWAYS)
def test_a_job_event_counts_only_from_the_gateway_it_was_dispatched_to(
    sender: str, claimed: str, dispatched_to: str | None
) -> None:
    """A job event counts exactly when topic and payload agree and the job is that gateway's (or unknown)."""
    refusal = job_event_refusal(sender, claimed, dispatched_to)
    counts = sender == claimed and dispatched_to in (None, sender)
    assert (refusal is None) == counts
    if sender != claimed:
        assert refusal is RefusalReason.TOPIC_MISMATCH


def _credential(**overrides: object) -> RefusalReason | None:
    arguments: dict[str, object] = {
        "sender": "gw-a",
        "claimed": "gw-a",
        "project_key": "key-1",
        "fingerprint": key_fingerprint("key-1"),
        "known_key": None,
        "allowed_keys": ("key-1", "key-2"),
    }
    arguments.update(overrides)
    return credential_refusal(**arguments)  # type: ignore[arg-type]


def test_credential_rules() -> None:
    """Each rule refuses with its own reason; a first or unchanged allowed key passes."""
    assert _credential() is None
    assert _credential(known_key="key-1") is None
    assert _credential(claimed="gw-b") is RefusalReason.TOPIC_MISMATCH
    assert _credential(fingerprint="0" * 16) is RefusalReason.BAD_FINGERPRINT
    assert (
        _credential(project_key="key-3", fingerprint=key_fingerprint("key-3"))
        is RefusalReason.PROJECT_NOT_ALLOWED
    )
    assert _credential(known_key="key-2") is RefusalReason.PROJECT_KEY_CHANGED


def test_an_empty_allow_list_accepts_any_project_but_not_a_key_change() -> None:
    """Without an allow-list any project passes, and a known device still cannot change key."""
    other = {"project_key": "key-9", "fingerprint": key_fingerprint("key-9"), "allowed_keys": ()}
    assert _credential(**other) is None
    assert _credential(**other, known_key="key-1") is RefusalReason.PROJECT_KEY_CHANGED


@given(st.text(min_size=1, max_size=64))
def test_the_fingerprint_is_the_one_agents_put_in_reports(project_key: str) -> None:
    """The controller's fingerprint of a key equals the agent's, so honest credentials pass."""
    assert key_fingerprint(project_key) == agent_fingerprint(project_key)
    assert key_fingerprint("project-key-1") == "bead7d69ced2c01f"


def test_every_refusal_label_is_known_up_front() -> None:
    """Each (kind, reason) the code can count is in REFUSAL_LABELS, so counters start at 0."""
    kinds = {kind for kind, _ in REFUSAL_LABELS}
    assert kinds == {kind.value for kind in RefusedKind}
    assert {reason for _, reason in REFUSAL_LABELS} == {reason.value for reason in RefusalReason}
