"""One OTA job, start to finish: download, verify, upload, test-boot, verify, confirm, report.

This module carries the job out (I/O, timeouts, retries); what to do next is decided by the pure
`agent.ota_decisions.decide` from what the device reports. Its two waiting loops, reconnecting
during an upload or after a reset (`_with_backoff`) and polling until the device has really
rebooted (`_rebooted`), wait on the shared `service_runtime.backoff.Backoff` schedule.

The flow reconciles with what the device already holds before each step, so it is safe to run
again after an agent crash, a dropped link or a hand-over from another gateway: an image already in
slot 1 is not uploaded again, an image already running is only confirmed, and an upload in
progress resumes by sha. Success is reported only once slot 0 runs the target image (its hash and
version from the image state read) and is confirmed; group 128's `current_version` must agree as
well when the device has that group (real Zephyr builds without it answer rc 8, ENOTSUP).
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar, assert_never

from agent.artifacts import ArtifactFetcher, ArtifactRefused
from agent.errors import (
    DeviceUnreachable,
    ImageError,
    LinkClosed,
    LinkTimeout,
    SmpDeviceError,
    SmpError,
    TransportError,
)
from agent.firmware import inspect_image
from agent.link.device_link import DeviceLink
from agent.link.image_upload import upload_image
from agent.link.session import SmpSession
from agent.ota_decisions import (
    AwaitReboot,
    DeviceView,
    Finish,
    RequestConfirm,
    RequestReset,
    RequestTest,
    Stage,
    Step,
    Target,
    Upload,
    cancellable,
    decide,
    past_point_of_no_return,
)
from agent.smp import commands, group128
from agent.smp.frame import Group, ImgMgmtErr, McumgrErr
from agent.smp.upload import UploadStalled, WindowLimits
from schemas import JobOutcome, JobPhase, OtaCommand, ReasonCode
from schemas.versions import is_version, same_version
from service_runtime.backoff import Backoff

AFTER_TEST_BOOT: Final = "; it may run the unconfirmed test image until its next reset"
"""Said of a device silent after its test boot: MCUboot reverts only on the next reset."""
T = TypeVar("T")
RESET_RETRY_S: Final = 5.0
REBOOT_POLL_TIMEOUT_S: Final = 0.4
REBOOT_POLL_MAX_DELAY_S: Final = 0.4
NON_RETRYABLE_DOWNLOAD_REASONS: Final = {
    ReasonCode.URL_NOT_ALLOWED,
    ReasonCode.ARTIFACT_TOO_LARGE,
    ReasonCode.HASH_MISMATCH,
}


@dataclass(frozen=True, slots=True)
class JobSettings:
    """Timeouts and retry limits of the OTA flow."""

    first_chunk_timeout_s: float = 40.0
    chunk_timeout_s: float = 5.0
    reboot_timeout_s: float = 120.0
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 5.0
    max_link_drops: int = 3
    window: int | WindowLimits | None = None
    """The upload window: a fixed start, limits (agent config `[jobs.window]`) or the defaults."""


@dataclass(frozen=True, slots=True)
class JobReport:
    """How a job ended, in the contract's terms."""

    outcome: JobOutcome
    reason: ReasonCode
    retryable: bool
    detail: str = ""
    running_version: str = ""
    uploads: int = 0
    old_image_running: bool | None = None
    """After a failed test boot: True when the device is back on its confirmed previous image,
    None when that is not known (it never answered after the reset)."""


class ProgressSink(Protocol):
    """Receives the job's phase and byte progress (the service throttles what it publishes)."""

    def __call__(self, phase: JobPhase, bytes_done: int, bytes_total: int) -> None:
        """Record progress."""
        ...


class _JobEnded(Exception):
    def __init__(self, report: JobReport) -> None:
        self.report = report
        super().__init__(report.reason)


def _end(
    outcome: JobOutcome, reason: ReasonCode, *, retryable: bool, detail: str = "", running_version: str = ""
) -> _JobEnded:
    return _JobEnded(JobReport(outcome, reason, retryable, detail[:1000], running_version))


class OtaJob:
    """Runs one OtaCommand against one device."""

    def __init__(
        self,
        command: OtaCommand,
        link: DeviceLink,
        fetcher: ArtifactFetcher,
        progress: ProgressSink,
        settings: JobSettings,
        *,
        on_upload_start: Callable[[], None] | None = None,
        upload_slot: asyncio.Semaphore | None = None,
        journal_phase: JobPhase | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """Prepare the job; `on_upload_start` lets the journal count flashes durably.

        `upload_slot`, shared by a gateway's jobs, bounds how many upload at once (the radio).
        `journal_phase` is the phase the journal held for this job when it was resumed.
        `sleep` is how the reconnect and reboot-poll backoffs wait (a test may record it).
        """
        self.command = command
        self._link = link
        self._fetcher = fetcher
        self._progress = progress
        self._settings = settings
        self._on_upload_start = on_upload_start
        self._upload_slot = upload_slot or asyncio.Semaphore(1)
        self._journal_phase = journal_phase
        self._sleep = sleep
        self.uploads = 0
        self.testing_started = not cancellable(journal_phase)
        """Set once the test-boot is requested: from then on the job finishes even when canceled."""

    async def run(self) -> JobReport:
        """Run the flow and return its report; never raises for device or link trouble."""
        try:
            report = await self._flow()
        except _JobEnded as ended:
            report = ended.report
        except ArtifactRefused as error:
            report = JobReport(
                JobOutcome.REJECTED if error.reason in NON_RETRYABLE_DOWNLOAD_REASONS else JobOutcome.FAILED,
                error.reason,
                error.reason not in NON_RETRYABLE_DOWNLOAD_REASONS,
                str(error),
            )
        except ImageError as error:
            report = JobReport(JobOutcome.REJECTED, ReasonCode.BAD_IMAGE, False, str(error))
        except DeviceUnreachable as error:
            report = JobReport(JobOutcome.FAILED, ReasonCode.DEVICE_UNREACHABLE, True, str(error))
        except TransportError as error:
            report = JobReport(JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, True, str(error))
        except SmpError as error:
            report = JobReport(JobOutcome.FAILED, ReasonCode.DEVICE_ERROR, True, str(error))
        return JobReport(
            report.outcome,
            report.reason,
            report.retryable,
            report.detail,
            report.running_version,
            self.uploads,
            report.old_image_running,
        )

    async def _flow(self) -> JobReport:
        command = self.command
        self._progress(JobPhase.DOWNLOADING, 0, command.artifact.size_bytes)
        path = await self._fetcher.fetch(
            command.artifact.url,
            command.artifact.size_bytes,
            command.artifact.sha256,
            lambda done, total: self._progress(JobPhase.DOWNLOADING, done, total),
            md5_hex=command.artifact.md5,
            sha1_hex=command.artifact.sha1,
        )
        image = await asyncio.to_thread(path.read_bytes)
        facts = inspect_image(image)
        if not is_version(command.target_version):
            raise _end(
                JobOutcome.REJECTED,
                ReasonCode.INVALID_COMMAND,
                retryable=False,
                detail=f"target version {command.target_version!r} cannot be ordered",
            )
        if not same_version(facts.version, command.target_version):
            raise _end(
                JobOutcome.REJECTED,
                ReasonCode.VERSION_MISMATCH,
                retryable=False,
                detail=f"image version {facts.version} is not the target {command.target_version}",
            )
        target = Target(
            facts.image_hash,
            facts.version,
            expected_current_version=command.expected_current_version,
            allow_downgrade=command.allow_downgrade,
        )
        session = await self._link.connect()
        try:
            view = await self._look(session)
            if past_point_of_no_return(target, view):
                # This job test-booted the target before the agent restarted: a cancel no longer
                # stops it.
                self.testing_started = True
            running = view.slot(0)
            if running is not None and running.hash_sha256 == target.image_hash:
                self._progress(JobPhase.VERIFYING, 0, 0)
            step = self._decide(target, view, Stage.FIRST_LOOK)
            while True:
                match step:
                    case Finish():
                        return JobReport(
                            step.outcome,
                            step.reason,
                            step.retryable,
                            step.detail[:1000],
                            step.running_version,
                            old_image_running=step.old_image_running,
                        )
                    case Upload():
                        async with self._upload_slot:
                            await self._upload(session, image)
                        view = await self._look(session)
                        step = self._decide(target, view, Stage.UPLOADED)
                    case RequestTest():
                        size = command.artifact.size_bytes
                        self._progress(JobPhase.TESTING, size, size)
                        self.testing_started = True
                        reply = await session.request(
                            lambda seq: commands.encode_state_write(
                                seq, image_hash=facts.image_hash, confirm=False
                            )
                        )
                        view = _replace_slots(view, commands.parse_state(reply.raise_for_error()))
                        step = self._decide(target, view, Stage.TEST_REQUESTED)
                    case RequestReset() | AwaitReboot():
                        self.testing_started = True
                        self._progress(JobPhase.REBOOTING, 0, 0)
                        await _request_reset(session)
                        await session.close()
                        session, view, step = await self._rebooted(target)
                    case RequestConfirm():
                        self._progress(JobPhase.CONFIRMING, 0, 0)
                        reply = await session.request(
                            lambda seq: commands.encode_state_write(seq, image_hash=None, confirm=True)
                        )
                        view = _replace_slots(view, commands.parse_state(reply.raise_for_error()))
                        step = self._decide(target, view, Stage.CONFIRM_REQUESTED)
                    case _:
                        assert_never(step)
        finally:
            await session.close()

    def _decide(self, target: Target, view: DeviceView, stage: Stage) -> Step:
        return decide(
            target,
            view,
            stage,
            journal_phase=self._journal_phase,
            did_work=bool(self.uploads) or self.testing_started,
        )

    async def _look(self, session: SmpSession) -> DeviceView:
        """Read what the decisions need: group 128's version (when it exists) and the image state."""
        info = await self._device_info(session)
        slots = await _state(session)
        return DeviceView(tuple(slots), info.current_version if info is not None else None)

    async def _device_info(self, session: SmpSession) -> group128.DeviceInfo | None:
        """Group 128's device info, or None when the device has no group 128 (plain rc 8)."""
        try:
            reply = await session.request(group128.encode_device_info_read)
            return group128.parse_device_info(reply.raise_for_error())
        except SmpDeviceError as error:
            if error.rc == McumgrErr.ENOTSUP and not error.group_error:
                return None
            if error.rc == McumgrErr.EACCESSDENIED and not error.group_error:
                raise _end(
                    JobOutcome.REJECTED, ReasonCode.ACCESS_DENIED, retryable=False, detail=str(error)
                ) from None
            raise

    async def _upload(self, session: SmpSession, image: bytes) -> None:
        self._progress(JobPhase.UPLOADING, 0, len(image))
        if self._on_upload_start is not None:
            self._on_upload_start()
        self.uploads += 1

        async def reconnect() -> None:
            await self._with_backoff(
                session.reopen, self._settings.reboot_timeout_s, ReasonCode.UPLOAD_FAILED
            )

        try:
            await upload_image(
                session,
                image,
                upgrade=not self.command.allow_downgrade,
                window=self._settings.window,
                first_timeout_s=self._settings.first_chunk_timeout_s,
                chunk_timeout_s=self._settings.chunk_timeout_s,
                on_progress=lambda done: self._progress(JobPhase.UPLOADING, done, len(image)),
                reconnect=reconnect,
                max_reconnects=self._settings.max_link_drops,
            )
        except SmpDeviceError as error:
            if (
                error.group_error
                and error.group == Group.IMAGE
                and error.rc == ImgMgmtErr.CURRENT_VERSION_IS_NEWER
            ):
                raise _end(
                    JobOutcome.REJECTED,
                    ReasonCode.DOWNGRADE_REFUSED,
                    retryable=False,
                    detail="the device refused an image that is not newer",
                ) from None
            raise _end(
                JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, retryable=True, detail=str(error)
            ) from None
        except (LinkClosed, LinkTimeout, UploadStalled) as error:
            # A stall is chunks lost or refused until the window gave up: the upload failed.
            raise _end(
                JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, retryable=True, detail=str(error)
            ) from None
        del reconnect

    async def _rebooted(self, target: Target) -> tuple[SmpSession, DeviceView, Step]:
        """A session to the device once the reset really happened, what it reported, the next step.

        A device keeps answering during its reset delay, so a quick reconnect can still see the
        test image pending in slot 1: that is "not rebooted yet" (`AwaitReboot`), never
        "reverted". The reset is asked for again every `RESET_RETRY_S` in case the first request
        was lost.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._settings.reboot_timeout_s
        next_reset = loop.time() + RESET_RETRY_S
        # Capped like the poll's connects: the device is back within a second or two, and every
        # second waited here is a second of the rollout.
        backoff = self._backoff(min(REBOOT_POLL_MAX_DELAY_S, self._settings.reconnect_max_s))
        while True:
            session = await self._reconnect(max(0.0, give_up - loop.time()), poll=True)
            try:
                view = await self._look(session)
                step = self._decide(target, view, Stage.RESET_REQUESTED)
                if not isinstance(step, AwaitReboot):
                    self._progress(JobPhase.VERIFYING, 0, 0)
                    return session, view, step
                if loop.time() >= next_reset:
                    await _request_reset(session)
                    next_reset = loop.time() + RESET_RETRY_S
            except (TransportError, SmpError) as error:
                # The device went quiet to reboot between the connect and the read: expected.
                log_detail = str(error)
            except BaseException:
                await session.close()
                raise
            else:
                log_detail = "test image still pending"
            await session.close()
            if loop.time() >= give_up:
                raise _reboot_timed_out(self._settings.reboot_timeout_s, log_detail)
            await backoff.wait()

    async def _reconnect(self, deadline_s: float, *, poll: bool = False) -> SmpSession:
        """Connect with backoff until the device answers (the MCUboot swap takes time).

        With `poll`, a rebooting device is asked often with short handshakes: it comes back within
        a second or two, and every second waited is a second of the rollout.
        """
        if poll:
            return await self._with_backoff(
                lambda: self._link.connect(REBOOT_POLL_TIMEOUT_S),
                deadline_s,
                ReasonCode.REBOOT_TIMEOUT,
                max_delay_s=REBOOT_POLL_MAX_DELAY_S,
            )
        return await self._with_backoff(self._link.connect, deadline_s, ReasonCode.REBOOT_TIMEOUT)

    async def _with_backoff(
        self,
        attempt: Callable[[], Awaitable[T]],
        deadline_s: float,
        reason: ReasonCode,
        *,
        max_delay_s: float | None = None,
    ) -> T:
        """`attempt()` again after each `DeviceUnreachable`, with backoff, until it succeeds.

        The job ends with `reason` once the next wait would pass `deadline_s`.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        backoff = self._backoff(max_delay_s or self._settings.reconnect_max_s)
        while True:
            try:
                return await attempt()
            except DeviceUnreachable as error:
                if loop.time() + backoff.upcoming_s > give_up:
                    raise _unreachable(reason, deadline_s, error) from None
            await backoff.wait()

    def _backoff(self, max_s: float) -> Backoff:
        return Backoff(initial_s=self._settings.reconnect_initial_s, max_s=max_s, sleep=self._sleep)


def _unreachable(reason: ReasonCode, deadline_s: float, error: DeviceUnreachable) -> _JobEnded:
    """The end of a job whose device stayed silent for `deadline_s`."""
    after_test_boot = reason is ReasonCode.REBOOT_TIMEOUT
    return _end(
        JobOutcome.FAILED,
        reason,
        # After the test boot, silence is a failed boot of the release, not a link fault.
        retryable=not after_test_boot,
        detail=f"device did not answer within {deadline_s:.0f} s: {error}"
        + (AFTER_TEST_BOOT if after_test_boot else ""),
    )


def _reboot_timed_out(reboot_timeout_s: float, log_detail: str) -> _JobEnded:
    """The end of a job whose device answered but never came back from its reset."""
    return _end(
        JobOutcome.FAILED,
        ReasonCode.REBOOT_TIMEOUT,
        retryable=False,  # a failed boot of the release: the same build must not go again
        detail=f"no reboot within {reboot_timeout_s} s ({log_detail})" + AFTER_TEST_BOOT,
    )


async def _state(session: SmpSession) -> list[commands.SlotState]:
    reply = await session.request(commands.encode_state_read)
    return commands.parse_state(reply.raise_for_error())


def _replace_slots(view: DeviceView, slots: list[commands.SlotState]) -> DeviceView:
    """The view after a state write: its reply's slots, the version group 128 reported before."""
    return DeviceView(tuple(slots), view.group128_version)


async def _request_reset(session: SmpSession) -> None:
    """Ask for a reset; the reply may be lost when the link drops at once, which is fine."""
    with contextlib.suppress(LinkTimeout, LinkClosed):
        reply = await session.request(commands.encode_reset)
        reply.raise_for_error()
