"""The one version order: MCUboot numbers, semver pre-releases by their numeric parts, a leading v."""

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.versions import InvalidVersion, is_version, same_version, version_key
from simulator.cloud import InvalidVersion as CloudInvalidVersion
from simulator.cloud import version_key as cloud_version_key

ORDERED = [
    "0.9",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0-rc.9",
    "1.0.0-rc.10",
    "1.0.0",
    "1.0.0+1",
    "1.0.0.2",
    "1.0.1",
    "1.2",
    "1.10.0",
    "10.0",
]


def test_versions_sort_by_the_shared_rules() -> None:
    """Numbers compare as numbers; pre-releases precede their release; the build breaks ties."""
    assert sorted(reversed(ORDERED), key=version_key) == ORDERED
    assert all(version_key(a) < version_key(b) for a, b in itertools.pairwise(ORDERED))


def test_rc10_is_newer_than_rc9() -> None:
    """The audit's example: pre-release numbers are numbers, not text ("rc.10" > "rc.9")."""
    assert version_key("1.4.0-rc.10") > version_key("1.4.0-rc.9")
    assert version_key("1.4.0-rc.9") < version_key("1.4.0")


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("1.2", "1.2.0"),
        ("1.2.0", "v1.2.0"),
        ("v1.2.3", "1.2.3"),
        ("1.2.3+4", "1.2.3.4"),
        ("1.2.3+0", "1.2.3"),
        ("1.2.3+abc", "1.2.3"),
        ("1.2.3-rc.1+g1234.dirty", "1.2.3-rc.1"),
    ],
)
def test_spellings_of_one_version_are_equal(left: str, right: str) -> None:
    """A leading v, trailing zeros, `+build` against Zephyr's fourth number, and +metadata do not matter."""
    assert version_key(left) == version_key(right)
    assert same_version(left, right)


def test_a_prerelease_precedes_its_release_whatever_its_build() -> None:
    """The build number is the last tie-breaker, after the pre-release."""
    assert version_key("1.2.3-rc.1+99") < version_key("1.2.3")
    assert version_key("1.2.3") < version_key("1.2.3+1")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "latest",
        "1..2",
        "1.2.",
        "1.2.3-",
        "1.2.3+",
        " 1.2",
        "1.2 ",
        "1.٣",
        "1.2.3.4.5",
        "1.2.3.4+5",
        "vv1.2",
        "1.2.3-rc.1234567890123456789",
        "1.2.3+1234567890123456789",
        "1" * 200,
    ],
)
def test_what_cannot_be_ordered_is_refused_with_a_reason(text: str) -> None:
    """Each such text raises InvalidVersion with a message that names what is expected or wrong."""
    with pytest.raises(InvalidVersion) as raised:
        version_key(text)
    assert str(raised.value) and not is_version(text)


def test_unorderable_text_is_only_the_same_as_itself() -> None:
    """same_version never raises: text that cannot be ordered equals only its exact spelling."""
    assert same_version("latest", "latest") and not same_version("latest", "1.0.0")


def test_the_emulator_orders_the_same_and_answers_its_own_error() -> None:
    """The cloud emulator uses this order; its error is its model's (answered as a 400)."""
    assert [cloud_version_key(v) for v in ORDERED] == [version_key(v) for v in ORDERED]
    with pytest.raises(CloudInvalidVersion):
        cloud_version_key("latest")


numbers = st.lists(st.integers(0, 10**6), min_size=1, max_size=4)
labels = st.one_of(
    st.integers(0, 10**6).map(str), st.from_regex(r"[a-zA-Z-][0-9A-Za-z-]{0,5}", fullmatch=True)
)
versions = st.builds(
    lambda nums, pre, build, v: (
        ("v" if v else "")
        + ".".join(map(str, nums))
        + (f"-{'.'.join(pre)}" if pre else "")
        + (f"+{build}" if build is not None and len(nums) < 4 else "")
    ),
    numbers,
    st.lists(labels, max_size=3),
    st.one_of(st.none(), st.integers(0, 10**6)),
    st.booleans(),
)


@given(versions, versions, versions)
def test_the_order_is_total_and_transitive(a: str, b: str, c: str) -> None:
    """Any two versions compare exactly one way, and the order is transitive."""
    ka, kb, kc = version_key(a), version_key(b), version_key(c)
    assert sum([ka < kb, ka == kb, ka > kb]) == 1
    if ka <= kb <= kc:
        assert ka <= kc


@given(numbers, numbers)
def test_order_matches_numeric_tuples(left: list[int], right: list[int]) -> None:
    """Plain numeric versions order like their zero-padded component tuples."""
    width = max(len(left), len(right))
    padded_left, padded_right = left + [0] * (width - len(left)), right + [0] * (width - len(right))
    left_key, right_key = version_key(".".join(map(str, left))), version_key(".".join(map(str, right)))
    assert (left_key < right_key) == (padded_left < padded_right)
    assert (left_key == right_key) == (padded_left == padded_right)


@given(versions, st.text(max_size=30))
def test_hostile_text_raises_only_invalid_version(valid: str, noise: str) -> None:
    """Arbitrary text around a version either orders or raises InvalidVersion, nothing else."""
    for text in (noise, valid + noise, noise + valid):
        with contextlib.suppress(InvalidVersion):
            version_key(text)
