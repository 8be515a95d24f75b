"""The release decision without HTTP: cohorts, staging, precedence, downgrades and refusals."""

import hashlib
from http import HTTPStatus

import pytest

from simulator.cloud import (
    ArtifactSource,
    CloudModel,
    DeviceQuery,
    ModelError,
    NoUpdate,
    NoUpdateReason,
    Offer,
    OfferReason,
    Refusal,
    decide,
)
from simulator.cloud.decision import staging_bucket

KEY = "key"
HW = "hw-a"


def _model(*versions: str, must_pass_through: tuple[str, ...] = ()) -> CloudModel:
    model = CloudModel()
    for index, version in enumerate(versions):
        model.add_release(
            KEY,
            version,
            [ArtifactSource(HW, version.encode())],
            created_s=1000.0 + index,
            must_pass_through=version in must_pass_through,
        )
        model.activate(KEY, version)
    return model


def _query(
    current: str = "1.0.0", serial: str = "S1", hardware: str = HW, software_type: str = "app"
) -> DeviceQuery:
    return DeviceQuery(serial, hardware, software_type, current)


def _offered_version(model: CloudModel, query: DeviceQuery) -> str:
    decision = decide(model, KEY, query)
    assert isinstance(decision, Offer), decision
    return decision.release.version


def test_the_highest_newer_full_release_is_offered() -> None:
    """Without deltas or must-pass-through releases, the newest active release wins."""
    model = _model("1.0.0", "1.1.0", "1.2.0")
    decision = decide(model, KEY, _query("1.0.0"))
    assert isinstance(decision, Offer)
    assert (decision.release.version, decision.reason, decision.is_delta) == (
        "1.2.0",
        OfferReason.NEWEST,
        False,
    )


def test_must_pass_through_releases_cannot_be_skipped() -> None:
    """The lowest must-pass-through release above the device comes before newer ones."""
    model = _model("1.1.0", "1.2.0", "1.3.0", "2.0.0", must_pass_through=("1.2.0", "1.3.0"))
    assert _offered_version(model, _query("1.0.0")) == "1.2.0"
    assert _offered_version(model, _query("1.2.0")) == "1.3.0"
    assert _offered_version(model, _query("1.3.0")) == "2.0.0"


def test_a_delta_from_the_running_version_is_preferred() -> None:
    """A patch whose base is the running version wins over the full image, and over must-pass-through."""
    model = _model("1.1.0", must_pass_through=("1.1.0",))
    model.add_release(
        KEY,
        "1.2.0",
        [ArtifactSource(HW, b"full"), ArtifactSource(HW, b"patch", base_version="1.0")],
        created_s=2000.0,
    )
    model.activate(KEY, "1.2.0")
    decision = decide(model, KEY, _query("1.0.0"))
    assert isinstance(decision, Offer)
    assert (decision.release.version, decision.artifact.content, decision.is_delta) == (
        "1.2.0",
        b"patch",
        True,
    )
    assert _offered_version(model, _query("0.9.0")) == "1.1.0"


def test_up_to_date_and_downgrades_answer_no_update() -> None:
    """The running version gets `latest`; a device ahead of the active release gets `not_newer`."""
    model = _model("1.0.0", "1.1.0")
    assert decide(model, KEY, _query("1.1.0")) == NoUpdate(NoUpdateReason.LATEST)
    assert decide(model, KEY, _query("2.0.0")) == NoUpdate(NoUpdateReason.NOT_NEWER)


def test_a_cohort_without_version_checking_offers_a_rollback() -> None:
    """With version checking disabled, an active release older than the device is offered."""
    model = _model("1.0.0", "1.1.0")
    model.deactivate(KEY, "1.1.0")
    model.configure_cohort(KEY, "default", allow_downgrade=True)
    decision = decide(model, KEY, _query("1.1.0"))
    assert isinstance(decision, Offer)
    assert (decision.release.version, decision.reason) == ("1.0.0", OfferReason.VERSION_CHECKING_DISABLED)


def test_activation_is_per_cohort() -> None:
    """A release active in one cohort is invisible to devices of another."""
    model = _model("1.1.0")
    model.add_release(KEY, "1.2.0", [ArtifactSource(HW, b"x")], created_s=1.0)
    model.activate(KEY, "1.2.0", "canary")
    model.assign(KEY, "CANARY-1", "canary")
    assert _offered_version(model, _query(serial="CANARY-1")) == "1.2.0"
    assert _offered_version(model, _query(serial="OTHER-1")) == "1.1.0"
    model.assign(KEY, "LONELY-1", "empty")
    assert decide(model, KEY, _query(serial="LONELY-1")) == NoUpdate(NoUpdateReason.NO_ACTIVE_RELEASE)


def test_staged_rollouts_include_a_stable_growing_subset() -> None:
    """Staged devices are those whose bucket is below the percent; raising it keeps them staged."""
    model = _model()
    model.add_release(KEY, "1.1.0", [ArtifactSource(HW, b"x")], created_s=1.0)
    serials = [f"SIM-{number:05d}" for number in range(1000)]
    staged_by_percent = {}
    for percent in (0, 10, 50, 100):
        model.activate(KEY, "1.1.0", percent=percent)
        staged_by_percent[percent] = {
            s for s in serials if isinstance(decide(model, KEY, _query(serial=s)), Offer)
        }
    assert staged_by_percent[0] == set()
    assert staged_by_percent[10] <= staged_by_percent[50] <= staged_by_percent[100] == set(serials)
    assert 60 <= len(staged_by_percent[10]) <= 140
    release = model.projects[KEY].release("1.1.0")
    assert all(staging_bucket(KEY, release, s) < 10 for s in staged_by_percent[10])
    model.activate(KEY, "1.1.0", percent=10)
    outside = next(s for s in serials if s not in staged_by_percent[10])
    assert decide(model, KEY, _query(serial=outside)) == NoUpdate(NoUpdateReason.NOT_STAGED)


def test_unknown_project_hardware_and_software_type_are_refused() -> None:
    """A wrong key is 403; a hardware version or software type the project never saw is 400."""
    model = _model("1.1.0")
    assert decide(model, "other", _query()) == Refusal(HTTPStatus.FORBIDDEN, "Invalid project key")
    assert isinstance(refusal := decide(model, KEY, _query(hardware="hw-z")), Refusal)
    assert refusal.status is HTTPStatus.BAD_REQUEST
    assert isinstance(refusal := decide(model, KEY, _query(software_type="modem")), Refusal)
    assert refusal.status is HTTPStatus.BAD_REQUEST


def test_declared_hardware_without_artifacts_gets_no_update() -> None:
    """Hardware the project declares but no active release serves is told there is no artifact."""
    model = _model("1.1.0")
    model.add_project(KEY, hardware_versions=["hw-b"])
    assert decide(model, KEY, _query(hardware="hw-b")) == NoUpdate(NoUpdateReason.NO_ARTIFACT_FOR_HARDWARE)


def test_projects_that_do_not_register_devices_ignore_strangers() -> None:
    """With auto-registration off, only assigned devices get releases."""
    model = _model("1.1.0")
    model.add_project(KEY, auto_register=False)
    assert decide(model, KEY, _query(serial="NEW")) == NoUpdate(NoUpdateReason.UNKNOWN_DEVICE)
    model.assign(KEY, "NEW", "default")
    assert _offered_version(model, _query(serial="NEW")) == "1.1.0"


def test_a_device_that_does_not_say_its_version_gets_the_newest() -> None:
    """An empty current_version makes every active release newer."""
    assert _offered_version(_model("1.0.0", "1.1.0", must_pass_through=("1.0.0",)), _query("")) == "1.1.0"


def test_model_mistakes_raise_model_error() -> None:
    """Duplicate releases, bad versions, bad percents, unknown releases and odd file names raise."""
    model = _model("1.0.0")
    with pytest.raises(ModelError):
        model.add_release(KEY, "1.0", [ArtifactSource(HW, b"x")], created_s=0.0)
    with pytest.raises(ModelError):
        model.add_release(KEY, "one", [ArtifactSource(HW, b"x")], created_s=0.0)
    with pytest.raises(ModelError):
        model.add_release(KEY, "2.0", [], created_s=0.0)
    with pytest.raises(ModelError):
        model.add_release(KEY, "2.0", [ArtifactSource(HW, b"x", filename="../etc/passwd")], created_s=0.0)
    with pytest.raises(ModelError):
        model.activate(KEY, "1.0.0", percent=101)
    with pytest.raises(ModelError):
        model.activate(KEY, "9.9.9")
    with pytest.raises(ModelError):
        model.activate("nobody", "1.0.0")


def test_artifact_digests_are_computed_from_the_bytes() -> None:
    """md5, sha1, sha256 and the size describe the content."""
    artifact = _model("1.0.0").projects[KEY].release("1.0.0").artifacts[0]
    assert artifact.size_bytes == len(b"1.0.0")
    assert artifact.md5 == hashlib.md5(b"1.0.0", usedforsecurity=False).hexdigest()
    assert artifact.sha1 == hashlib.sha1(b"1.0.0", usedforsecurity=False).hexdigest()
    assert artifact.sha256 == hashlib.sha256(b"1.0.0").hexdigest()
