"""Retained rollout messages fit the broker's message size limit at any fleet size (plans are paged)."""

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    ExcludedDevice,
    GateDecision,
    GateVerdict,
    GatewayProgress,
    PlannedDevice,
    PlannedWave,
    RolloutPlan,
    RolloutPlanPage,
    RolloutPlanSummary,
    RolloutState,
    RolloutStatus,
    StateCounts,
    TopicKind,
    WaveState,
    assemble_plan,
    channels,
    paginate_plan,
)
from schemas.ids import ID_MAX_LENGTH, DeviceSerial, GatewayId, RolloutId
from schemas.rollout import MAX_GATEWAYS_IN_STATE

BROKER_LIMIT_BYTES = 256 * 1024
"""`message_size_limit` of deploy/mosquitto/mosquitto.conf."""


def fleet_plan(devices: int, waves: int, excluded: int, gateways: int = 1000) -> RolloutPlan:
    """A plan over `devices` devices split evenly into `waves`, with long ids (the worst case)."""
    per_wave = -(-devices // waves) if waves else 0
    serials = [f"SERIAL-{i:032d}" for i in range(devices)]
    return RolloutPlan(
        rollout_id=RolloutId("r-big"),
        plan_id="p-1",
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        software_type="app",
        target_version="1.1.0",
        waves=[
            PlannedWave(
                index=w,
                devices=[
                    PlannedDevice(
                        device_serial=DeviceSerial(s),
                        gateway_id=GatewayId(f"gateway-{i % gateways:05d}"),
                        hardware_version="nrf52840dk-revision-b",
                    )
                    for i, s in enumerate(serials[w * per_wave : (w + 1) * per_wave], start=w * per_wave)
                ],
            )
            for w in range(waves)
        ],
        excluded=[
            ExcludedDevice(device_serial=DeviceSerial(f"EX-{i:030d}"), reason="memfault: 500 " + "x" * 200)
            for i in range(excluded)
        ],
    )


def test_a_100k_device_plan_fits_the_broker_page_by_page_and_reassembles_exactly() -> None:
    """100k devices and 20k exclusions: every message is under 256 KB, and the pages give the plan back."""
    plan = fleet_plan(100_000, 5, 20_000)
    summary, pages = paginate_plan(plan)
    encoded = [channels.encode(summary), *(channels.encode(page) for page in pages)]
    assert max(len(message) for message in encoded) < BROKER_LIMIT_BYTES
    assert summary.devices == 100_000 and summary.excluded_count == 20_000
    assert summary.pages == len(pages) > 5
    # What a reader decodes off the wire, through the contract's own decoders.
    decoded_summary = channels.decode_as(TopicKind.ROLLOUT_PLAN, encoded[0], RolloutPlanSummary)
    decoded_pages = {
        page.page: page
        for page in (
            channels.decode_as(TopicKind.ROLLOUT_PLAN_PAGE, raw, RolloutPlanPage) for raw in encoded[1:]
        )
    }
    assert assemble_plan(decoded_summary, decoded_pages) == plan


def test_a_plan_with_a_page_missing_or_from_another_plan_is_not_assembled() -> None:
    """Until every page of this plan id is there, a reader has no plan (never a partial one)."""
    summary, pages = paginate_plan(fleet_plan(20_000, 2, 0))
    by_number = {page.page: page for page in pages}
    assert assemble_plan(summary, by_number) is not None
    assert assemble_plan(summary, {n: p for n, p in by_number.items() if n != 1}) is None
    stale = {**by_number, 0: RolloutPlanPage(rollout_id=summary.rollout_id, plan_id="p-0", page=0)}
    assert assemble_plan(summary, stale) is None


@settings(max_examples=40, deadline=None)
@given(
    devices=st.integers(0, 3000),
    waves=st.integers(1, 20),
    excluded=st.integers(0, 300),
    budget_bytes=st.integers(200, 20_000),
)
def test_any_plan_round_trips_through_pages_within_the_budget(
    devices: int, waves: int, excluded: int, budget_bytes: int
) -> None:
    """Whatever the sizes, pages respect the byte budget (one item at least) and give the plan back."""
    plan = fleet_plan(devices, waves, excluded, gateways=50)
    summary, pages = paginate_plan(plan, budget_bytes)
    for page in pages:
        items = len(page.devices) + len(page.excluded)
        assert items >= 1
        if items > 1:
            body = sum(len(channels.encode(item)) + 1 for item in [*page.devices, *page.excluded])
            assert body <= budget_bytes
    assert [page.page for page in pages] == list(range(summary.pages))
    assert assemble_plan(summary, {page.page: page for page in pages}) == plan


def test_the_largest_possible_rollout_state_fits_the_broker() -> None:
    """The state is bounded (20 waves, 256 gateways, 20 decisions): its worst case is under 256 KB."""
    long_text = "x" * 256
    gateway = "g" * ID_MAX_LENGTH
    counts = StateCounts(**dict.fromkeys(StateCounts.__struct_fields__, 10_000_000))
    decision = GateDecision(
        at=datetime(2026, 12, 1, tzinfo=UTC),
        wave=19,
        verdict=GateVerdict.PAUSE,
        reason=long_text,
        attempted=10_000_000,
        succeeded=10_000_000,
        failed=10_000_000,
        failure_lower_bound=0.123456789,
    )
    state = RolloutState(
        rollout_id=RolloutId("r" * ID_MAX_LENGTH),
        status=RolloutStatus.PAUSED,
        software_type=long_text,
        target_version=long_text,
        plan_id=long_text,
        current_wave=19,
        waves=[WaveState(index=i, size=10_000_000, counts=counts) for i in range(20)],
        counts=counts,
        gate_decisions=[decision] * 20,
        paused_reason=long_text,
        gateways=[
            GatewayProgress(
                gateway_id=GatewayId(gateway[:-3] + f"{i:03d}"),
                in_flight=10_000_000,
                succeeded=10_000_000,
                failed=10_000_000,
            )
            for i in range(MAX_GATEWAYS_IN_STATE)
        ],
        updated_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert len(channels.encode(state)) < BROKER_LIMIT_BYTES
