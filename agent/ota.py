"""One OTA job, start to finish: download, verify, upload, test-boot, verify, confirm, report.

The flow reconciles with what the device already holds before each step, so it is safe to run
again after an agent crash, a dropped link or a hand-over from another gateway: an image already in
slot 1 is not uploaded again, an image already running is only confirmed, and an upload in
progress resumes by sha. Success is reported only once the new image runs, reports the target
version through group 128 and is confirmed.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from agent.artifacts import ArtifactFetcher, ArtifactRefused
from agent.device_link import DeviceLink
from agent.errors import (
    DeviceUnreachable,
    ImageError,
    LinkClosed,
    LinkTimeout,
    SmpDeviceError,
    SmpError,
    TransportError,
)
from agent.firmware import ImageFacts, inspect_image, version_key
from agent.session import SmpSession
from agent.smp import commands, group128
from agent.smp.frame import Group, McumgrErr
from agent.uploader import upload_image
from schemas import JobOutcome, JobPhase, OtaCommand, ReasonCode

IMG_ERR_CURRENT_VERSION_IS_NEWER: Final = 27
"""img_mgmt group error: the `upgrade` check refused an image that is not newer."""
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
    window: int | None = None


@dataclass(frozen=True, slots=True)
class JobReport:
    """How a job ended, in the contract's terms."""

    outcome: JobOutcome
    reason: ReasonCode
    retryable: bool
    detail: str = ""
    running_version: str = ""
    uploads: int = 0


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
    ) -> None:
        """Prepare the job; `on_upload_start` lets the journal count flashes durably.

        `upload_slot`, shared by a gateway's jobs, bounds how many upload at once (the radio).
        """
        self.command = command
        self._link = link
        self._fetcher = fetcher
        self._progress = progress
        self._settings = settings
        self._on_upload_start = on_upload_start
        self._upload_slot = upload_slot or asyncio.Semaphore(1)
        self.uploads = 0
        self.testing_started = False
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
        if version_key(facts.version) != version_key(command.target_version):
            raise _end(
                JobOutcome.REJECTED,
                ReasonCode.VERSION_MISMATCH,
                retryable=False,
                detail=f"image version {facts.version} is not the target {command.target_version}",
            )
        async with self._session() as session:
            info = await self._device_info(session)
            slots = await _state(session)
            running = _slot(slots, 0)
            if running is not None and running.hash_sha256 == facts.image_hash:
                # Running the target unconfirmed means this job test-booted it before the agent
                # restarted: past the point of no return, so a cancel no longer stops the job.
                self.testing_started = not running.confirmed
                return await self._confirm(session, facts)
            self._check_preconditions(info, facts)
            staged = _slot(slots, 1)
            if staged is None or staged.hash_sha256 != facts.image_hash:
                async with self._upload_slot:
                    await self._upload(session, image)
                slots = await _state(session)
                staged = _slot(slots, 1)
                if staged is None or staged.hash_sha256 != facts.image_hash:
                    raise _end(
                        JobOutcome.FAILED,
                        ReasonCode.VERIFY_FAILED,
                        retryable=True,
                        detail="slot 1 does not hold the uploaded image after the upload",
                    )
            self._progress(JobPhase.TESTING, command.artifact.size_bytes, command.artifact.size_bytes)
            self.testing_started = True
            if not staged.pending:
                reply = await session.request(
                    lambda seq: commands.encode_state_write(seq, image_hash=facts.image_hash, confirm=False)
                )
                after = commands.parse_state(reply.raise_for_error())
                pending = _slot(after, 1)
                if pending is None or not pending.pending:
                    raise _end(
                        JobOutcome.FAILED,
                        ReasonCode.TEST_FAILED,
                        retryable=True,
                        detail="slot 1 is not pending after the test request",
                    )
            self._progress(JobPhase.REBOOTING, 0, 0)
            await _request_reset(session)
        session = await self._rebooted(facts)
        try:
            return await self._confirm(session, facts)
        finally:
            await session.close()

    def _check_preconditions(self, info: group128.DeviceInfo, facts: ImageFacts) -> None:
        command = self.command
        if (
            command.expected_current_version is not None
            and info.current_version != command.expected_current_version
        ):
            raise _end(
                JobOutcome.REJECTED,
                ReasonCode.WRONG_CURRENT_VERSION,
                retryable=False,
                detail=f"device runs {info.current_version}, expected {command.expected_current_version}",
                running_version=info.current_version,
            )
        with contextlib.suppress(ImageError):
            if not command.allow_downgrade and version_key(info.current_version) >= facts.version_key:
                raise _end(
                    JobOutcome.REJECTED,
                    ReasonCode.DOWNGRADE_REFUSED,
                    retryable=False,
                    detail=f"device runs {info.current_version}, image is {facts.version}",
                    running_version=info.current_version,
                )

    async def _device_info(self, session: SmpSession) -> group128.DeviceInfo:
        try:
            reply = await session.request(group128.encode_device_info_read)
            return group128.parse_device_info(reply.raise_for_error())
        except SmpDeviceError as error:
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
                and error.rc == IMG_ERR_CURRENT_VERSION_IS_NEWER
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
        except (LinkClosed, LinkTimeout) as error:
            raise _end(
                JobOutcome.FAILED, ReasonCode.UPLOAD_FAILED, retryable=True, detail=str(error)
            ) from None
        del reconnect

    async def _confirm(self, session: SmpSession, facts: ImageFacts) -> JobReport:
        self._progress(JobPhase.VERIFYING, 0, 0)
        slots = await _state(session)
        running = _slot(slots, 0)
        if running is None or running.hash_sha256 != facts.image_hash:
            version = running.version if running else ""
            raise _end(
                JobOutcome.REVERTED,
                ReasonCode.REVERTED,
                retryable=False,
                detail=f"the device booted {version or 'no image'} again",
                running_version=version,
            )
        info = await self._device_info(session)
        if version_key(info.current_version) != facts.version_key:
            raise _end(
                JobOutcome.FAILED,
                ReasonCode.VERIFY_FAILED,
                retryable=True,
                detail=f"group 128 reports {info.current_version}, expected {facts.version}",
                running_version=info.current_version,
            )
        if not running.confirmed:
            self._progress(JobPhase.CONFIRMING, 0, 0)
            reply = await session.request(
                lambda seq: commands.encode_state_write(seq, image_hash=None, confirm=True)
            )
            confirmed = _slot(commands.parse_state(reply.raise_for_error()), 0)
            if confirmed is None or not confirmed.confirmed or confirmed.hash_sha256 != facts.image_hash:
                raise _end(
                    JobOutcome.FAILED,
                    ReasonCode.CONFIRM_FAILED,
                    retryable=True,
                    detail="the running image is not confirmed after the confirm request",
                    running_version=info.current_version,
                )
        reason = ReasonCode.OK if self.uploads or self.testing_started else ReasonCode.ALREADY_ON_TARGET
        return JobReport(JobOutcome.SUCCEEDED, reason, False, running_version=info.current_version)

    @contextlib.asynccontextmanager
    async def _session(self, *, after_reboot: bool = False) -> AsyncIterator[SmpSession]:
        session = await (
            self._reconnect(self._settings.reboot_timeout_s) if after_reboot else self._link.connect()
        )
        try:
            yield session
        finally:
            await session.close()

    async def _rebooted(self, facts: ImageFacts) -> SmpSession:
        """A session to the device once the reset really happened.

        A device keeps answering during its reset delay, so a quick reconnect can still see the
        test image pending in slot 1: that is "not rebooted yet", never "reverted". The reset is
        asked for again every `RESET_RETRY_S` in case the first request was lost.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._settings.reboot_timeout_s
        next_reset = loop.time() + RESET_RETRY_S
        delay = self._settings.reconnect_initial_s
        while True:
            session = await self._reconnect(max(0.0, give_up - loop.time()), poll=True)
            try:
                staged = _slot(await _state(session), 1)
                if not (staged and staged.pending and staged.hash_sha256 == facts.image_hash):
                    return session
                if loop.time() >= next_reset:
                    await _request_reset(session)
                    next_reset = loop.time() + RESET_RETRY_S
            except (TransportError, SmpError) as error:
                # The device went quiet to reboot between the connect and the read: expected.
                log_detail = str(error)
            else:
                log_detail = "test image still pending"
            await session.close()
            delay = min(delay, REBOOT_POLL_MAX_DELAY_S)
            if loop.time() >= give_up:
                raise _end(
                    JobOutcome.FAILED,
                    ReasonCode.REBOOT_TIMEOUT,
                    retryable=True,
                    detail=f"no reboot within {self._settings.reboot_timeout_s} s ({log_detail})",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.reconnect_max_s)

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
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        delay = self._settings.reconnect_initial_s
        while True:
            try:
                return await attempt()
            except DeviceUnreachable as error:
                if loop.time() + delay > give_up:
                    raise _end(
                        JobOutcome.FAILED,
                        reason,
                        retryable=True,
                        detail=f"device did not answer within {deadline_s} s: {error}",
                    ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s or self._settings.reconnect_max_s)


async def _state(session: SmpSession) -> list[commands.SlotState]:
    reply = await session.request(commands.encode_state_read)
    return commands.parse_state(reply.raise_for_error())


def _slot(slots: list[commands.SlotState], slot: int) -> commands.SlotState | None:
    return next((s for s in slots if s.image == 0 and s.slot == slot), None)


async def _request_reset(session: SmpSession) -> None:
    """Ask for a reset; the reply may be lost when the link drops at once, which is fine."""
    with contextlib.suppress(LinkTimeout, LinkClosed):
        reply = await session.request(commands.encode_reset)
        reply.raise_for_error()
