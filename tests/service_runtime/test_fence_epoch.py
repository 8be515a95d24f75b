"""The fence epoch: a floor on controller epochs that survives restarts and bad files."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from service_runtime.epoch import FenceEpoch


def test_the_floor_survives_a_restart(tmp_path: Path) -> None:
    """A new counter on the same file refuses what the old one would have refused."""
    path = tmp_path / "state" / "controller_epoch"
    fence = FenceEpoch(path)
    assert fence.admit(0) and fence.admit(7) and fence.admit(7)
    assert not fence.admit(6)
    again = FenceEpoch(path)
    assert again.highest == 7
    assert not again.admit(5)
    assert again.admit(8)
    assert FenceEpoch(path).highest == 8
    assert not path.with_suffix(".tmp").exists()


def test_a_missing_or_corrupt_file_starts_at_zero(tmp_path: Path) -> None:
    """A lost floor admits everything again (the clock-free fallback), it never crashes the agent."""
    path = tmp_path / "controller_epoch"
    assert FenceEpoch(path).highest == 0
    path.write_text("not a number")
    assert FenceEpoch(path).highest == 0
    assert FenceEpoch(path).admit(3)
    assert path.read_text() == "3\n"


@given(st.lists(st.integers(min_value=0, max_value=10**12), max_size=40))
def test_admitted_epochs_never_go_down(epochs: list[int]) -> None:
    """An epoch is admitted exactly when it is at least every epoch admitted before it."""
    fence = FenceEpoch()
    highest = 0
    for epoch in epochs:
        assert fence.admit(epoch) == (epoch >= highest)
        highest = max(highest, epoch)
        assert fence.highest == highest
