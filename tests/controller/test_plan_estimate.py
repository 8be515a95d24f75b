"""The plan's estimate: when each wave is expected to start and end (windows, start rate, ramp, retries)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.rollout_engine.planner import EXPECTED_RETRY_SHARE, estimate_waves, estimated_duration_s
from schemas import (
    DeviceSerial,
    FlowSpec,
    GatewayId,
    MaintenanceWindow,
    PlannedDevice,
    PlannedWave,
    RolloutSpec,
    WaveSpec,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
JOB_S = 100.0  # 95 s of upload at 10 kB/s plus a 5 s reboot


def wave(index: int, size: int, gateways: int = 10, soak_s: float = 0.0) -> PlannedWave:
    """`size` devices spread over `gateways` gateways."""
    devices = [
        PlannedDevice(
            device_serial=DeviceSerial(f"S{index}-{i}"),
            gateway_id=GatewayId(f"gw-{i % gateways}"),
            hardware_version="hw",
        )
        for i in range(size)
    ]
    return PlannedWave(index=index, devices=devices, soak_s=soak_s)


def estimate(spec: RolloutSpec, waves: list[PlannedWave]) -> list[PlannedWave]:
    return estimate_waves(
        waves, spec, NOW, image_size_bytes=950_000, throughput_bytes_per_s=10_000, reboot_s=5
    )


def spec(**overrides: object) -> RolloutSpec:
    base: dict[str, object] = {
        "software_type": "app",
        "target_version": "1.1.0",
        "waves": [WaveSpec(percent=100)],
    }
    return RolloutSpec(**{**base, **overrides})  # type: ignore[arg-type]


def test_rounds_of_the_in_flight_budget_with_retries_and_soaks() -> None:
    """20 devices (22 jobs with retries) at 10 in flight: three rounds; the next wave after the soak.

    The second wave's 5 devices sit behind 5 gateways, one each: 5 in flight, 6 jobs, two rounds.
    """
    waves = estimate(
        spec(flow=FlowSpec(max_in_flight=10, max_in_flight_per_gateway=2)),
        [wave(0, 20, soak_s=50), wave(1, 5)],
    )
    assert EXPECTED_RETRY_SHARE == 0.1
    assert waves[0].expected_start == NOW and waves[0].expected_end == NOW + timedelta(seconds=3 * JOB_S)
    assert waves[1].expected_start == NOW + timedelta(seconds=3 * JOB_S + 50)
    assert estimated_duration_s(waves, NOW) == 3 * JOB_S + 50 + 2 * JOB_S


def test_the_ramp_and_the_start_rate_slow_the_first_rounds() -> None:
    """A ramp from 1 doubles per round (1, 2, 4, 8, 8 for 22 jobs); 6 starts a minute cap rounds at 10."""
    ramped = estimate(
        spec(flow=FlowSpec(max_in_flight=8, max_in_flight_per_gateway=8, ramp_initial_in_flight=1)),
        [wave(0, 20)],
    )
    assert ramped[0].expected_end == NOW + timedelta(seconds=5 * JOB_S)  # 1+2+4+8+8 = 23 >= 22
    rated = estimate(
        spec(flow=FlowSpec(max_in_flight=50, max_in_flight_per_gateway=8, starts_per_minute=6)), [wave(0, 20)]
    )
    # 100 s rounds allow 10 starts each: 22 jobs take three rounds, the last of two jobs 100 s long.
    assert rated[0].expected_end == NOW + timedelta(seconds=3 * JOB_S)


def test_a_window_delays_the_start_and_splits_the_work() -> None:
    """A 09:30-09:33 UTC window: rounds start only inside it, the rest wait for the next day's."""
    window = MaintenanceWindow(cron="30 9 * * *", duration_s=180)
    waves = estimate(
        spec(windows=[window], flow=FlowSpec(max_in_flight=10, max_in_flight_per_gateway=2)), [wave(0, 30)]
    )
    start = NOW + timedelta(minutes=30)
    assert waves[0].expected_start == start
    # 33 jobs: rounds at 09:30 and 09:31:40 fit (10 + 10), then 09:33:20 is past the end: next day.
    assert waves[0].expected_end == start + timedelta(days=1, seconds=2 * JOB_S)


def test_the_estimate_waits_for_the_first_window_with_cron_day_rules() -> None:
    """`0 0 31 2 1` is February 31st *or* a Monday in February: the first start is 1 February 2027."""
    window = MaintenanceWindow(cron="0 0 31 2 1", duration_s=3600)
    waves = estimate(spec(windows=[window]), [wave(0, 3)])
    assert waves[0].expected_start == datetime(2027, 2, 1, 0, 0, tzinfo=UTC)


def test_the_busiest_gateway_bounds_a_wave() -> None:
    """All 20 devices behind one gateway with a radio cap of 2: ten rounds, whatever the global cap."""
    waves = estimate(
        spec(flow=FlowSpec(max_in_flight=50, max_in_flight_per_gateway=2)), [wave(0, 20, gateways=1)]
    )
    assert waves[0].expected_end == NOW + timedelta(seconds=11 * JOB_S)  # 22 jobs, 2 at a time
