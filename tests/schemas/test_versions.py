"""Version ordering: numeric components, pre-releases before releases, build numbers last."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.cloud import InvalidVersion, version_key

ORDERED = [
    "0.9",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-beta",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.0+1",
    "1.0.0+2",
    "1.0.1",
    "1.2",
    "1.10.0",
    "10.0",
]


def test_versions_sort_semver_style() -> None:
    """Components compare as numbers; a pre-release precedes its release; a build number breaks ties."""
    assert sorted(ORDERED, key=version_key) == ORDERED


def test_trailing_zeros_and_a_v_prefix_do_not_matter() -> None:
    """1.2, 1.2.0 and v1.2.0 are the same version."""
    assert version_key("1.2") == version_key("1.2.0") == version_key("v1.2.0")


@pytest.mark.parametrize("text", ["", "abc", "1..2", "1.2.", "1.2.3-", "1.2.3+", " 1.2", "1.٣", "1" * 200])
def test_non_versions_are_refused(text: str) -> None:
    """Text without the numeric shape raises InvalidVersion."""
    with pytest.raises(InvalidVersion):
        version_key(text)


@given(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=5),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=5),
)
def test_order_matches_numeric_tuples(left: list[int], right: list[int]) -> None:
    """Plain numeric versions order like their zero-padded component tuples."""
    width = max(len(left), len(right))
    padded_left, padded_right = left + [0] * (width - len(left)), right + [0] * (width - len(right))
    left_key, right_key = version_key(".".join(map(str, left))), version_key(".".join(map(str, right)))
    assert (left_key < right_key) == (padded_left < padded_right)
    assert (left_key == right_key) == (padded_left == padded_right)
