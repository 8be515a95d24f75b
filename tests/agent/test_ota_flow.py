"""One OTA job carried out against a simulated device in memory: no socket, no broker."""

from __future__ import annotations

from pathlib import Path

import cbor2
import msgspec

from agent.ota import JobReport, OtaJob
from agent.smp import commands
from agent.smp.frame import HEADER, HEADER_SIZE
from schemas import JobOutcome, JobPhase, OtaCommand, ReasonCode
from simulator.device import BootOutcome, FaultPlan, LinkProfile, MemfaultMode
from simulator.device.upload import upload_offset
from simulator.image import parse_mcuboot_image
from tests.agent.memory_link import MemoryDevice, ReplyFilter
from tests.agent.ota_world import FAST_JOB, artifact_client, command, fetcher, image, memory_device

MEMFAULT_GROUP = 128


async def run_job(
    device: MemoryDevice, tmp_path: Path, job: OtaCommand, *, journal_phase: JobPhase | None = None
) -> tuple[JobReport, list[JobPhase]]:
    """Run one job against `device`; return its report and the phases it went through."""
    phases: list[JobPhase] = []

    def progress(phase: JobPhase, bytes_done: int, bytes_total: int) -> None:
        del bytes_done, bytes_total
        if not phases or phases[-1] is not phase:
            phases.append(phase)

    async with artifact_client() as http:
        report = await OtaJob(
            job,
            device.link(timeout_s=0.5),
            fetcher(http, tmp_path / "cache"),
            progress,
            FAST_JOB,
            journal_phase=journal_phase,
        ).run()
    return report, phases


def running_slot(device: MemoryDevice) -> tuple[str, bool]:
    """Slot 0's version and whether it is confirmed."""
    slot = next(s for s in device.device.image_states() if s.slot == 0)
    return slot.version, slot.confirmed


async def test_a_job_updates_a_device_over_the_memory_link(tmp_path: Path) -> None:
    """Download, upload, test, reset, swap, verify, confirm: the device runs 1.1.0 confirmed."""
    device = memory_device()
    report, phases = await run_job(device, tmp_path, command("j1", "M1"))
    assert (report.outcome, report.reason, report.running_version, report.uploads) == (
        JobOutcome.SUCCEEDED,
        ReasonCode.OK,
        "1.1.0",
        1,
    )
    assert running_slot(device) == ("1.1.0", True)
    assert [b.outcome for b in device.device.boots] == [BootOutcome.SWAPPED]
    assert phases == [
        JobPhase.DOWNLOADING,
        JobPhase.UPLOADING,
        JobPhase.TESTING,
        JobPhase.REBOOTING,
        JobPhase.VERIFYING,
        JobPhase.CONFIRMING,
    ]


async def test_a_device_without_group_128_is_verified_by_its_image_state(tmp_path: Path) -> None:
    """Group 128 answers rc 8: the job still succeeds on slot 0's hash, version and confirmation."""
    device = memory_device(memfault_mode=MemfaultMode.GROUP_ABSENT)
    report, _ = await run_job(device, tmp_path, command("j1", "M1"))
    assert (report.outcome, report.reason, report.running_version) == (
        JobOutcome.SUCCEEDED,
        ReasonCode.OK,
        "1.1.0",
    )
    assert running_slot(device) == ("1.1.0", True)


def _group128_says(version: str) -> ReplyFilter:
    """A reply filter: group 128's device info reports `version` whatever runs (a lying firmware)."""

    def rewrite(frame: bytes) -> bytes | None:
        op, flags, _length, group, sequence, command_id = HEADER.unpack_from(frame)
        if group != MEMFAULT_GROUP:
            return frame
        body = cbor2.loads(frame[HEADER_SIZE:])
        if "current_version" not in body:
            return frame
        payload = cbor2.dumps({**body, "current_version": version})
        return HEADER.pack(op, flags, len(payload), group, sequence, command_id) + payload

    return rewrite


async def test_group_128_is_still_checked_when_the_device_has_it(tmp_path: Path) -> None:
    """Slot 0 runs the target but group 128 reports another version: VERIFY_FAILED, never confirmed."""
    stale = memory_device("M2", reply_filter=_group128_says("1.0.0"))
    report, phases = await run_job(stale, tmp_path, command("j1", "M2"))
    assert (report.outcome, report.reason) == (JobOutcome.FAILED, ReasonCode.VERIFY_FAILED)
    assert "group 128 reports 1.0.0" in report.detail
    assert running_slot(stale) == ("1.1.0", False)
    assert JobPhase.CONFIRMING not in phases


async def test_a_bad_build_ends_reverted_with_the_old_version_running(tmp_path: Path) -> None:
    """MCUboot swaps a build that never comes up back: REVERTED, not retryable, 1.0.0 confirmed."""
    device = memory_device(faults=FaultPlan(bad_build_versions=frozenset({"1.1.0"})))
    report, _ = await run_job(device, tmp_path, command("j1", "M1"))
    assert (report.outcome, report.reason, report.retryable, report.running_version) == (
        JobOutcome.REVERTED,
        ReasonCode.REVERTED,
        False,
        "1.0.0",
    )
    assert running_slot(device) == ("1.0.0", True)


async def test_a_device_silent_after_its_test_boot_is_a_failed_boot_not_retried(tmp_path: Path) -> None:
    """Nothing answers after the reset: REBOOT_TIMEOUT, not retryable, the old image not known to run."""
    holder: list[MemoryDevice] = []

    def silent_after_boot(frame: bytes) -> bytes | None:
        return None if holder[0].device.boots else frame

    device = memory_device(reply_filter=silent_after_boot)
    holder.append(device)
    report, phases = await run_job(device, tmp_path, command("j1", "M1"))
    assert (report.outcome, report.reason, report.retryable) == (
        JobOutcome.FAILED,
        ReasonCode.REBOOT_TIMEOUT,
        False,
    )
    assert report.old_image_running is None and "unconfirmed test image" in report.detail
    assert JobPhase.REBOOTING in phases and device.device.boots


async def test_a_reverted_device_is_known_back_on_its_old_image(tmp_path: Path) -> None:
    """The agent says which failed boot happened: reverted, and the previous image confirmed again."""
    device = memory_device(faults=FaultPlan(bad_build_versions=frozenset({"1.1.0"})))
    report, _ = await run_job(device, tmp_path, command("j1", "M1"))
    assert (report.reason, report.old_image_running) == (ReasonCode.REVERTED, True)


async def test_a_link_drop_mid_upload_resumes_from_the_device_offset(tmp_path: Path) -> None:
    """The link drops at half the image: the upload goes on from the device's offset, not from 0."""
    device = memory_device(link=LinkProfile(buf_size_bytes=512, buf_count=4))
    half = len(image("1.1.0")) // 2
    device.drop_link_when(lambda sim: (sim.upload_session or _NO_SESSION).offset >= half)
    report, _ = await run_job(device, tmp_path, command("j1", "M1"))
    assert (report.outcome, report.uploads) == (JobOutcome.SUCCEEDED, 1)
    assert device.drops == 1
    offsets = [o for o in map(upload_offset, device.sent_frames) if o is not None]
    # After the drop the uploader asks with offset 0 and the image's sha (Zephyr's resume probe);
    # the device answers with its offset, and the next chunk goes from there.
    restart = offsets.index(0, 1)
    in_flight_bytes = 4 * 512
    assert offsets[restart + 1] >= half - in_flight_bytes, offsets
    assert offsets.count(0) == 2, offsets


class _NoSession:
    offset = 0


_NO_SESSION = _NoSession()


async def test_an_image_already_staged_is_not_uploaded_again(tmp_path: Path) -> None:
    """Slot 1 already holds the target (another gateway uploaded it): test-boot it, no upload."""
    staged = memory_device("M2", staged=image("1.1.0"))
    report, phases = await run_job(staged, tmp_path, command("j1", "M2"))
    assert (report.outcome, report.uploads) == (JobOutcome.SUCCEEDED, 0)
    assert JobPhase.UPLOADING not in phases
    assert running_slot(staged) == ("1.1.0", True)


async def test_a_device_already_on_target_is_reported_without_touching_it(tmp_path: Path) -> None:
    """Running the target confirmed: ALREADY_ON_TARGET, no upload, no reboot."""
    device = memory_device(version="1.1.0")
    report, _ = await run_job(device, tmp_path, command("j1", "M1"))
    assert (report.outcome, report.reason, report.uploads) == (
        JobOutcome.SUCCEEDED,
        ReasonCode.ALREADY_ON_TARGET,
        0,
    )
    assert device.device.boots == []


async def test_a_wrong_current_version_is_rejected_before_any_upload(tmp_path: Path) -> None:
    """`expected_current_version` differs from what the device runs: REJECTED, nothing sent."""
    device = memory_device()
    report, _ = await run_job(device, tmp_path, command("j1", "M1", expected_current_version="0.9.0"))
    assert (report.outcome, report.reason) == (JobOutcome.REJECTED, ReasonCode.WRONG_CURRENT_VERSION)
    assert not any(upload_offset(frame) is not None for frame in device.sent_frames)


async def test_a_target_spelled_with_a_leading_v_is_the_image_version(tmp_path: Path) -> None:
    """Memfault's `v1.1.0` names the image 1.1.0 (the shared order): the job runs, not BAD_IMAGE."""
    device = memory_device()
    job = msgspec.structs.replace(command("j1", "M1"), target_version="v1.1.0")
    report, _ = await run_job(device, tmp_path, job)
    assert (report.outcome, report.reason, report.running_version) == (
        JobOutcome.SUCCEEDED,
        ReasonCode.OK,
        "1.1.0",
    )


async def test_a_target_that_cannot_be_ordered_is_rejected_with_the_reason(tmp_path: Path) -> None:
    """A target such as `latest` is refused as an invalid command before any byte reaches the device."""
    device = memory_device()
    job = msgspec.structs.replace(command("j1", "M1"), target_version="latest")
    report, _ = await run_job(device, tmp_path, job)
    assert (report.outcome, report.reason, report.retryable) == (
        JobOutcome.REJECTED,
        ReasonCode.INVALID_COMMAND,
        False,
    )
    assert "cannot be ordered" in report.detail
    assert not any(upload_offset(frame) is not None for frame in device.sent_frames)


async def test_a_resumed_job_whose_test_boot_reverted_is_reported_reverted(tmp_path: Path) -> None:
    """Journal says REBOOTING, the device runs the old image with the target not pending: REVERTED."""
    device = memory_device(staged=image("1.1.0"))
    report, _ = await run_job(device, tmp_path, command("j1", "M1"), journal_phase=JobPhase.REBOOTING)
    assert (report.outcome, report.reason) == (JobOutcome.REVERTED, ReasonCode.REVERTED)
    assert device.device.boots == []


async def test_an_unreachable_device_fails_the_job_as_retryable(tmp_path: Path) -> None:
    """No answer at all: FAILED, DEVICE_UNREACHABLE, retryable, nothing sent."""
    device = memory_device()
    device.reachable = False
    report, _ = await run_job(device, tmp_path, command("j1", "M1"))
    assert (report.outcome, report.reason, report.retryable) == (
        JobOutcome.FAILED,
        ReasonCode.DEVICE_UNREACHABLE,
        True,
    )
    assert device.sent_frames == []


async def test_a_resumed_job_with_the_test_image_pending_resets_and_confirms(tmp_path: Path) -> None:
    """Journal at TESTING, target pending in slot 1: the job is cancel-proof from the start, no upload."""
    target = image("1.1.0")
    device = memory_device(staged=target)
    session = await device.link().connect()
    try:
        reply = await session.request(
            lambda seq: commands.encode_state_write(
                seq, image_hash=parse_mcuboot_image(target).hash_sha256, confirm=False
            )
        )
        reply.raise_for_error()
    finally:
        await session.close()
    async with artifact_client() as http:
        job = OtaJob(
            command("j1", "M1"),
            device.link(timeout_s=0.5),
            fetcher(http, tmp_path / "cache"),
            lambda phase, done, total: None,
            FAST_JOB,
            journal_phase=JobPhase.TESTING,
        )
        assert job.testing_started, "a resumed job past its test request must not be cancellable"
        report = await job.run()
    assert (report.outcome, report.reason, report.uploads) == (JobOutcome.SUCCEEDED, ReasonCode.OK, 0)
    assert running_slot(device) == ("1.1.0", True)
