"""The pure correlation core: delta or full, must-pass-through hops, exclusions (property tests)."""

from hypothesis import given
from hypothesis import strategies as st

from controller.correlation import DeviceFacts, Excluded, Exclusion, Install, correlate
from controller.memfault_answers import (
    ArtifactRef,
    DeviceQuery,
    DeviceRefused,
    ReleaseOffer,
    Unanswered,
    UpToDate,
)
from schemas.versions import version_key

VERSIONS = ["1.0.0", "1.1.0", "1.5.0", "2.0.0", "2.1.0"]
TARGET = "2.0.0"


def _artifact(name: str, *, delta: bool = False, sha256: str = "a" * 64, md5: str = "") -> ArtifactRef:
    return ArtifactRef(f"https://cdn.test/{name}", 100, sha256, "hw", name, md5=md5, is_delta=delta)


facts_strategy = st.builds(
    DeviceFacts,
    serial=st.sampled_from(["S1", "S2"]),
    hardware_version=st.just("hw"),
    software_type=st.just("app"),
    current_version=st.sampled_from(VERSIONS),
    project_key=st.sampled_from(["", "key"]),
    accepts_delta=st.booleans(),
)
digests = st.sampled_from([("a" * 64, ""), ("", "b" * 32), ("", "")])


@st.composite
def offers(draw: st.DrawFn) -> ReleaseOffer:
    """Any release offer Memfault might make, delta or full, with or without a full image aside."""
    is_delta = draw(st.booleans())
    sha256, md5 = draw(digests)
    full = _artifact("full.bin") if is_delta and draw(st.booleans()) else None
    return ReleaseOffer(
        release_id=1,
        version=draw(st.sampled_from(VERSIONS)),
        is_delta=is_delta,
        must_pass_through=draw(st.booleans()),
        artifact=_artifact("chosen.bin", delta=is_delta, sha256=sha256, md5=md5),
        full_artifact=full,
    )


answers = st.one_of(
    offers(),
    st.builds(UpToDate, st.just("latest")),
    st.builds(DeviceRefused, st.just(400), st.just("bad")),
    st.builds(Unanswered, st.sampled_from(["http_404", "http_500", "malformed"])),
)


@given(facts_strategy, answers, st.booleans())
def test_a_delta_goes_only_to_a_device_that_accepts_it_from_the_exact_version(
    facts: DeviceFacts, answer: ReleaseOffer, same_tuple: bool
) -> None:
    """No patch is ever installed by a device that cannot apply one, or for an answer to another version."""
    asked = (
        facts.query() if same_tuple else DeviceQuery(facts.serial, "hw", "app", "0.9.0", facts.project_key)
    )
    result = correlate(facts, answer, asked, TARGET)
    if isinstance(result, Install) and (result.delta or result.artifact.is_delta):
        assert facts.accepts_delta
        assert asked.current_version == facts.current_version


@given(facts_strategy, answers)
def test_an_install_is_the_target_or_a_must_pass_through_hop_below_it(
    facts: DeviceFacts, answer: ReleaseOffer
) -> None:
    """Every install is the target version, or a must-pass-through release between current and target."""
    result = correlate(facts, answer, facts.query(), TARGET)
    if isinstance(result, Install):
        assert isinstance(answer, ReleaseOffer)
        if result.hop:
            assert answer.must_pass_through
            assert version_key(facts.current_version) < version_key(result.version) < version_key(TARGET)
        else:
            assert result.version == TARGET
        assert result.artifact.sha256 or result.artifact.md5
    else:
        assert result.detail


@given(facts_strategy, answers)
def test_non_offers_always_exclude_with_their_reason(facts: DeviceFacts, answer: ReleaseOffer) -> None:
    """Up to date, refused and unanswered devices are excluded, each with its own reason."""
    result = correlate(facts, answer, facts.query(), TARGET)
    expected = {
        UpToDate: Exclusion.UP_TO_DATE,
        DeviceRefused: Exclusion.REFUSED,
        Unanswered: Exclusion.UNANSWERED,
    }
    if not facts.project_key:
        assert result == Excluded(Exclusion.NO_PROJECT_KEY, "no project key known")
    elif type(answer) in expected:
        assert isinstance(result, Excluded)
        assert result.reason is expected[type(answer)]


def test_a_device_without_delta_support_gets_the_full_image_listed_aside() -> None:
    """A delta offer to a device that takes no deltas installs the release's full image instead."""
    facts = DeviceFacts("S1", "hw", "app", "1.0.0", "key", accepts_delta=False)
    offer = ReleaseOffer(1, TARGET, True, False, _artifact("d.bin", delta=True), _artifact("f.bin"))
    result = correlate(facts, offer, facts.query(), TARGET)
    assert result == Install(TARGET, _artifact("f.bin"), delta=False, hop=False)
    only_delta = ReleaseOffer(1, TARGET, True, False, _artifact("d.bin", delta=True))
    assert correlate(facts, only_delta, facts.query(), TARGET) == Excluded(
        Exclusion.DELTA_ONLY, f"memfault offers only a delta to {TARGET}; the device takes none"
    )


def test_a_device_with_delta_support_gets_the_patch() -> None:
    """A device that declares delta support on the From version installs the patch."""
    facts = DeviceFacts("S1", "hw", "app", "1.0.0", "key", accepts_delta=True)
    offer = ReleaseOffer(1, TARGET, True, False, _artifact("d.bin", delta=True), _artifact("f.bin"))
    assert correlate(facts, offer, facts.query(), TARGET) == Install(
        TARGET, _artifact("d.bin", delta=True), delta=True, hop=False
    )


def test_a_must_pass_through_below_the_target_is_a_hop_and_others_exclude() -> None:
    """A must-pass-through 1.5.0 on the way to 2.0.0 is a hop; a plain 1.5.0 offer excludes the device."""
    facts = DeviceFacts("S1", "hw", "app", "1.0.0", "key")
    hop = ReleaseOffer(1, "1.5.0", False, True, _artifact("h.bin"))
    assert correlate(facts, hop, facts.query(), TARGET) == Install(
        "1.5.0", _artifact("h.bin"), delta=False, hop=True
    )
    plain = ReleaseOffer(1, "1.5.0", False, False, _artifact("h.bin"))
    result = correlate(facts, plain, facts.query(), TARGET)
    assert isinstance(result, Excluded)
    assert result.reason is Exclusion.OTHER_RELEASE


def test_a_payload_without_sha256_installs_with_md5_and_none_without_any_digest() -> None:
    """md5 alone is enough to install; a payload with neither digest is excluded."""
    facts = DeviceFacts("S1", "hw", "app", "1.0.0", "key")
    md5_only = ReleaseOffer(1, TARGET, False, False, _artifact("f.bin", sha256="", md5="b" * 32))
    assert isinstance(correlate(facts, md5_only, facts.query(), TARGET), Install)
    bare = ReleaseOffer(1, TARGET, False, False, _artifact("f.bin", sha256=""))
    result = correlate(facts, bare, facts.query(), TARGET)
    assert isinstance(result, Excluded)
    assert result.reason is Exclusion.NO_DIGEST


def test_versions_are_compared_in_the_shared_order() -> None:
    """`v2.0.0` is the target 2.0.0; an offer or a device version that cannot be ordered excludes with why."""
    facts = DeviceFacts("S1", "hw", "app", "1.0.0", "key")
    spelled = ReleaseOffer(1, "v2.0.0", False, False, _artifact("f.bin"))
    assert correlate(facts, spelled, facts.query(), TARGET) == Install(
        "v2.0.0", _artifact("f.bin"), delta=False, hop=False
    )
    odd_offer = ReleaseOffer(1, "nightly", False, True, _artifact("f.bin"))
    result = correlate(facts, odd_offer, facts.query(), TARGET)
    assert isinstance(result, Excluded) and result.reason is Exclusion.UNORDERED_VERSION
    assert "memfault offers" in result.detail
    odd_device = DeviceFacts("S1", "hw", "app", "build-42", "key")
    hop = ReleaseOffer(1, "1.5.0", False, True, _artifact("h.bin"))
    result = correlate(odd_device, hop, odd_device.query(), TARGET)
    assert isinstance(result, Excluded) and result.reason is Exclusion.UNORDERED_VERSION
    assert "device's version" in result.detail
