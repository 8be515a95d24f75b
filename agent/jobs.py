"""The gateway's job runner: validates OTA commands, queues them, runs a few at once, reports results.

A command is refused (with a result saying why) when its deadline has passed, the device is not
known to this gateway, the queue is full, or the controller epoch is older than one already seen. A
command whose job id was seen before is answered with the job's current state and never run again.
Accepted jobs are journaled before they are queued, results go through the journal's outbox, and
jobs interrupted by a crash resume when the runner starts.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

import structlog

from agent.artifacts import ArtifactFetcher
from agent.journal import JobState, Journal
from agent.link.device_link import DeviceLink
from agent.ota import JobReport, JobSettings, OtaJob
from agent.ota_decisions import cancellable
from schemas import (
    CancelJob,
    GatewayId,
    JobOutcome,
    JobPhase,
    JobProgress,
    JobResult,
    OtaCommand,
    ReasonCode,
)

PROGRESS_INTERVAL_S: Final = 1.0
LINK_GRACE_S: Final = 30.0
"""How long a job waits for discovery to find its device (resumed jobs start before the first probe)."""
log = structlog.get_logger("mcufleet.agent.jobs")


class JobPublisher(Protocol):
    """Where the runner sends what it has to say (the MQTT side of the agent)."""

    async def deliver_result(self, result: JobResult, *, finish_job: bool) -> None:
        """Publish a result durably (QoS 1 through the journal's outbox).

        With `finish_job`, the journal marks the job finished and queues the result in one
        transaction before publishing, so neither can exist without the other.
        """
        ...

    def publish_progress(self, progress: JobProgress) -> None:
        """Publish progress (QoS 0, fire and forget)."""
        ...


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """Concurrency and queue bounds of the runner."""

    concurrency: int = 2
    upload_slots: int = 2
    """Uploads at a time across the runner's jobs (the radio's share)."""
    queue_size: int = 64
    job: JobSettings = field(default_factory=JobSettings)


class JobRunner:
    """Runs OTA jobs for one gateway."""

    def __init__(
        self,
        gateway_id: GatewayId,
        *,
        settings: RunnerSettings,
        journal: Journal,
        fetcher: ArtifactFetcher,
        publisher: JobPublisher,
        find_link: Callable[[str], DeviceLink | None],
        await_link: Callable[[str, float], Awaitable[DeviceLink | None]] | None = None,
        inventory_warm: Callable[[], bool] = lambda: True,
        device_lock: Callable[[str], contextlib.AbstractAsyncContextManager[object]],
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
    ) -> None:
        """Wire the runner; `device_lock(serial)` keeps inventory probes off a device during a job."""
        self.gateway_id = gateway_id
        self.settings = settings
        self._journal = journal
        self._fetcher = fetcher
        self._publisher = publisher
        self._find_link = find_link
        self._await_link = await_link
        self._inventory_warm = inventory_warm
        self._device_lock = device_lock
        self._now = now
        self._monotonic = monotonic
        self._queue: asyncio.Queue[OtaCommand] = asyncio.Queue(settings.queue_size)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, OtaJob] = {}
        self._phases: dict[str, JobPhase] = {}
        self._canceled: set[str] = set()
        self._upload_slots = asyncio.Semaphore(settings.upload_slots)
        self._highest_epoch = 0
        self._progress_at: dict[str, float] = {}
        self._progress_seq: dict[str, int] = {}
        self._workers: list[asyncio.Task[None]] = []
        self.outcomes: dict[str, int] = {}
        self.uploaded_bytes = 0

    @property
    def queue_depth(self) -> int:
        """Jobs accepted and waiting for a worker."""
        return self._queue.qsize()

    async def start(self) -> None:
        """Resume jobs a crash interrupted, then start the workers."""
        for entry in self._journal.unfinished():
            log.info("resuming job", job=entry.command.job_id, phase=entry.phase, uploads=entry.uploads)
            self._queue.put_nowait(entry.command)
        for index in range(self.settings.concurrency):
            self._workers.append(asyncio.create_task(self._work(), name=f"job-worker-{index}"))

    async def stop(self) -> None:
        """Stop the workers; running jobs are interrupted and resume at the next start."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()

    async def submit(self, command: OtaCommand) -> None:
        """Validate a command and queue it, or answer why not."""
        if command.controller_epoch < self._highest_epoch:
            log.warning(
                "command from a fenced controller", job=command.job_id, epoch=command.controller_epoch
            )
            return
        self._highest_epoch = max(self._highest_epoch, command.controller_epoch)
        known = self._journal.get(command.job_id)
        if known is not None:
            await self._answer_duplicate(command, known.state, known.phase, known.outcome)
            return
        refusal = self._refusal(command)
        if refusal is not None:
            outcome, reason, detail = refusal
            await self._publish_result(command, JobReport(outcome, reason, False, detail), journal=False)
            return
        if self._queue.full():
            await self._publish_result(
                command,
                JobReport(JobOutcome.FAILED, ReasonCode.GATEWAY_BUSY, True, "job queue is full"),
                journal=False,
            )
            return
        if not self._journal.accept(command, self._monotonic()):
            return
        self._queue.put_nowait(command)
        self._progress(command, JobPhase.QUEUED, 0, command.artifact.size_bytes, force=True)

    def _refusal(self, command: OtaCommand) -> tuple[JobOutcome, ReasonCode, str] | None:
        if command.deadline <= self._now():
            return (
                JobOutcome.REJECTED,
                ReasonCode.EXPIRED,
                f"deadline {command.deadline.isoformat()} has passed",
            )
        if self._find_link(command.device_serial) is None and self._inventory_warm():
            # Before the first probe round (just restarted) the job is accepted and waits for it.
            return JobOutcome.REJECTED, ReasonCode.UNKNOWN_DEVICE, "this gateway does not know the device"
        return None

    async def _answer_duplicate(
        self, command: OtaCommand, state: JobState, phase: JobPhase, outcome: str | None
    ) -> None:
        log.info("duplicate command", job=command.job_id, state=state)
        if state is JobState.FINISHED:
            # Repeat the outcome: the controller may have missed the original result.
            await self._publisher.deliver_result(
                JobResult(
                    gateway_id=self.gateway_id,
                    job_id=command.job_id,
                    device_serial=command.device_serial,
                    rollout_id=command.rollout_id,
                    attempt=command.attempt,
                    outcome=JobOutcome(outcome or JobOutcome.FAILED),
                    reason=ReasonCode.DUPLICATE_JOB,
                    retryable=False,
                    detail="job already finished; this repeats its outcome",
                    finished_at=self._now(),
                ),
                finish_job=False,
            )
            return
        self._progress(command, self._phases.get(command.job_id, phase), 0, 0, force=True)

    def cancel(self, request: CancelJob) -> None:
        """Cancel a queued or running job; a job past its test-boot step finishes anyway.

        That includes a resumed job whose journal says the test request may have reached the
        device, even while it waits in the queue.
        """
        self._canceled.add(request.job_id)
        job, task = self._jobs.get(request.job_id), self._running.get(request.job_id)
        if task is not None and job is not None and not job.testing_started:
            task.cancel()

    async def _work(self) -> None:
        while True:
            command = await self._queue.get()
            task = asyncio.create_task(self._run(command), name=f"job-{command.job_id}")
            self._running[command.job_id] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # Swallow only the job's own cancellation (a CancelJob). A stop that lands just
                # as the job finishes must still end the worker, or `stop()` waits forever.
                worker = asyncio.current_task()
                if not task.done() or (worker is not None and worker.cancelling()):
                    raise
            finally:
                self._running.pop(command.job_id, None)
                self._queue.task_done()

    async def _run(self, command: OtaCommand) -> None:
        entry = self._journal.get(command.job_id)
        journal_phase = entry.phase if entry else None
        if command.job_id in self._canceled and cancellable(journal_phase):
            await self._finish(
                command, JobReport(JobOutcome.CANCELED, ReasonCode.CANCELED, False, "canceled")
            )
            return
        link = self._find_link(command.device_serial)
        if link is None and self._await_link is not None:
            # Right after a restart the inventory has not probed the device yet: give it a moment.
            grace_s = min(LINK_GRACE_S, max(0.0, (command.deadline - self._now()).total_seconds()))
            link = await self._await_link(command.device_serial, grace_s)
        if link is None:
            await self._finish(
                command,
                JobReport(JobOutcome.FAILED, ReasonCode.DEVICE_UNREACHABLE, True, "device no longer heard"),
            )
            return
        previous_uploads = entry.uploads if entry else 0

        def count_upload() -> None:
            self._journal.count_upload(command.job_id)

        job = OtaJob(
            command,
            link,
            self._fetcher,
            lambda phase, done, total: self._progress(command, phase, done, total),
            self.settings.job,
            on_upload_start=count_upload,
            upload_slot=self._upload_slots,
            journal_phase=journal_phase,
        )
        self._jobs[command.job_id] = job
        remaining_s = (command.deadline - self._now()).total_seconds()
        try:
            async with self._device_lock(command.device_serial):
                report = await asyncio.wait_for(job.run(), timeout=max(0.0, remaining_s))
        except TimeoutError:
            report = JobReport(JobOutcome.TIMED_OUT, ReasonCode.DEADLINE_PASSED, True, "the deadline passed")
        except Exception as error:  # A bug in one job must not kill the worker or lose the result.
            log.exception("job crashed", job=command.job_id)
            report = JobReport(
                JobOutcome.FAILED, ReasonCode.AGENT_ERROR, True, f"{type(error).__name__}: {error}"
            )
        except asyncio.CancelledError:
            if command.job_id not in self._canceled:
                raise
            report = JobReport(JobOutcome.CANCELED, ReasonCode.CANCELED, False, "canceled by the controller")
        finally:
            self._jobs.pop(command.job_id, None)
        total_uploads = previous_uploads + job.uploads
        if report.outcome is JobOutcome.SUCCEEDED and job.uploads:
            self.uploaded_bytes += command.artifact.size_bytes
        await self._finish(command, report, uploads=total_uploads)

    async def _finish(self, command: OtaCommand, report: JobReport, *, uploads: int | None = None) -> None:
        self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1
        log.info("job finished", job=command.job_id, outcome=report.outcome, reason=report.reason)
        await self._publish_result(command, report, journal=True, uploads=uploads)
        self._phases.pop(command.job_id, None)
        self._progress_at.pop(command.job_id, None)
        self._progress_seq.pop(command.job_id, None)

    async def _publish_result(
        self, command: OtaCommand, report: JobReport, *, journal: bool, uploads: int | None = None
    ) -> None:
        result = JobResult(
            gateway_id=self.gateway_id,
            job_id=command.job_id,
            device_serial=command.device_serial,
            rollout_id=command.rollout_id,
            attempt=command.attempt,
            outcome=report.outcome,
            reason=report.reason,
            retryable=report.retryable,
            detail=report.detail[:4000],
            running_version=report.running_version[:256],
            old_image_running=report.old_image_running,
            uploads=report.uploads if uploads is None else uploads,
            finished_at=self._now(),
        )
        await self._publisher.deliver_result(result, finish_job=journal)

    def _progress(
        self, command: OtaCommand, phase: JobPhase, done: int, total: int, *, force: bool = False
    ) -> None:
        job_id = command.job_id
        changed = self._phases.get(job_id) != phase
        if changed:
            self._phases[job_id] = phase
            if phase is not JobPhase.QUEUED:
                self._journal.set_phase(job_id, phase)
        now = self._monotonic()
        if (
            not (force or changed)
            and now - self._progress_at.get(job_id, -PROGRESS_INTERVAL_S) < PROGRESS_INTERVAL_S
        ):
            return
        self._progress_at[job_id] = now
        seq = self._progress_seq.get(job_id, 0) + 1
        self._progress_seq[job_id] = seq
        self._publisher.publish_progress(
            JobProgress(
                gateway_id=self.gateway_id,
                job_id=command.job_id,
                device_serial=command.device_serial,
                rollout_id=command.rollout_id,
                phase=phase,
                bytes_done=done,
                bytes_total=total,
                seq=seq,
                at=self._now(),
            )
        )
