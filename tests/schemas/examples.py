"""One valid example payload per topic kind, shared by contract, fuzz and integration tests."""

from datetime import UTC, datetime, timedelta

import msgspec

from schemas import (
    Artifact,
    AuditEvent,
    ControllerId,
    ControllerPresence,
    CreateRollout,
    DeviceCredential,
    DeviceReport,
    DeviceSerial,
    GatewayId,
    GatewayPresence,
    ImageSlot,
    JobId,
    JobOutcome,
    JobPhase,
    JobProgress,
    JobResult,
    OperatorReply,
    OtaCommand,
    PlannedDevice,
    PlannedWave,
    ReasonCode,
    ReplyStatus,
    RequestId,
    RolloutId,
    RolloutPlan,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    TopicKind,
    Transport,
    WaveSpec,
    paginate_plan,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
GATEWAY = GatewayId("gw-1")
SERIAL = DeviceSerial("65071B2E77FB7451")
JOB = JobId("job-1")
ROLLOUT = RolloutId("r-2026-11")
SHA = "ab" * 32


def example(kind: TopicKind) -> msgspec.Struct:  # noqa: PLR0911, PLR0912 (one return per topic kind)
    """Return a valid payload for topics of `kind`."""
    match kind:
        case TopicKind.GATEWAY_PRESENCE:
            return GatewayPresence(gateway_id=GATEWAY, epoch=7, online=True, started_at=NOW, device_count=3)
        case TopicKind.DEVICE_REPORT:
            return DeviceReport(
                gateway_id=GATEWAY,
                epoch=7,
                seq=12,
                device_serial=SERIAL,
                hardware_version="nrf54l15dk",
                software_type="app",
                current_version="1.0.0",
                transport=Transport.UDP,
                address="127.0.0.2:1337",
                seen_at=NOW,
                images=[ImageSlot(slot=0, version="1.0.0", hash_sha256=SHA, active=True, confirmed=True)],
            )
        case TopicKind.DEVICE_CREDENTIAL:
            return DeviceCredential(
                gateway_id=GATEWAY,
                device_serial=SERIAL,
                project_key="dummy-key",
                fingerprint="0123456789abcdef",
            )
        case TopicKind.GATEWAY_COMMAND:
            return OtaCommand(
                job_id=JOB,
                rollout_id=ROLLOUT,
                device_serial=SERIAL,
                issued_at=NOW,
                deadline=NOW + timedelta(hours=1),
                artifact=Artifact(url="https://cdn.example/app.bin", size_bytes=123_456, sha256=SHA),
                target_version="1.1.0",
                expected_current_version="1.0.0",
            )
        case TopicKind.JOB_PROGRESS:
            return JobProgress(
                gateway_id=GATEWAY,
                job_id=JOB,
                device_serial=SERIAL,
                phase=JobPhase.UPLOADING,
                bytes_done=4096,
                bytes_total=123_456,
                at=NOW,
            )
        case TopicKind.JOB_RESULT:
            return JobResult(
                gateway_id=GATEWAY,
                job_id=JOB,
                device_serial=SERIAL,
                outcome=JobOutcome.SUCCEEDED,
                reason=ReasonCode.OK,
                retryable=False,
                running_version="1.1.0",
                uploads=1,
                finished_at=NOW,
            )
        case TopicKind.CONTROLLER_PRESENCE:
            return ControllerPresence(controller_id=ControllerId("ctl-a"), epoch=3, online=True, leader=True)
        case TopicKind.OPERATOR_REQUEST:
            return CreateRollout(
                request_id=RequestId("req-1"),
                operator="alice",
                rollout_id=ROLLOUT,
                spec=RolloutSpec(
                    software_type="app",
                    target_version="1.1.0",
                    waves=[WaveSpec(count=1), WaveSpec(percent=50.0), WaveSpec(percent=100.0)],
                ),
            )
        case TopicKind.OPERATOR_REPLY | TopicKind.OPERATOR_DEFAULT_REPLY:
            return OperatorReply(
                request_id="req-1", op="create", status=ReplyStatus.ACCEPTED, rollout_id=ROLLOUT
            )
        case TopicKind.ROLLOUT_STATE:
            return RolloutState(
                rollout_id=ROLLOUT,
                status=RolloutStatus.RUNNING,
                software_type="app",
                target_version="1.1.0",
                updated_at=NOW,
            )
        case TopicKind.ROLLOUT_PLAN:
            return paginate_plan(example_plan())[0]
        case TopicKind.ROLLOUT_PLAN_PAGE:
            return paginate_plan(example_plan())[1][0]
        case TopicKind.AUDIT:
            return AuditEvent(at=NOW, actor="alice", action="create", rollout_id=ROLLOUT)


def example_plan() -> RolloutPlan:
    """A one-device plan, whole (as the controller holds it before paging it)."""
    return RolloutPlan(
        rollout_id=ROLLOUT,
        plan_id="p-1",
        created_at=NOW,
        software_type="app",
        target_version="1.1.0",
        waves=[
            PlannedWave(
                index=0,
                devices=[
                    PlannedDevice(device_serial=SERIAL, gateway_id=GATEWAY, hardware_version="nrf54l15dk")
                ],
            )
        ],
    )
