"""The rollout planner: which devices, in which wave, through which gateway, and how long it takes.

Eligible devices are ordered by a hash of rollout id and serial (deterministic, different for
every rollout), and the first wave is a stratified canary: it takes one device of every hardware
version, site, gateway and current version present before filling up in hash order, so a bad build
for one board, a bad gateway or a bad path from one old version shows up in the canary, not in wave
three. Gateways are chosen with dispatch's own score, ties spread across gateways, so the preview's
gateway column is what dispatch will do. Every exclusion carries its reason.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec

from controller.rollout_engine.cron import (
    CronSchedule,
    next_window_start,
    open_window_start,
    parse_cron,
    zone,
)
from controller.rollout_engine.model import Candidate, GatewayLink, link_score
from schemas import (
    DeviceSerial,
    ExcludedDevice,
    GatewayId,
    PlannedDevice,
    PlannedWave,
    RolloutId,
    RolloutPlan,
    RolloutSpec,
    Selector,
)
from schemas.versions import InvalidVersion, same_version, version_key


def order_key(rollout_id: str, serial: str) -> bytes:
    """The device's place in this rollout's order."""
    return hashlib.sha256(f"{rollout_id}\0{serial}".encode()).digest()[:8]


def selected(selector: Selector, candidate: Candidate, sites: set[str]) -> bool:
    """Whether the operator's selector covers the device (empty lists mean any)."""
    if candidate.serial in selector.serial_deny:
        return False
    if selector.serial_allow and candidate.serial not in selector.serial_allow:
        return False
    if selector.hardware_versions and candidate.hardware_version not in selector.hardware_versions:
        return False
    if selector.current_versions and candidate.current_version not in selector.current_versions:
        return False
    gateways = {link.gateway_id for link in candidate.links}
    if selector.gateways and not gateways & set(selector.gateways):
        return False
    return not (selector.sites and not sites & set(selector.sites))


def exclusion(spec: RolloutSpec, candidate: Candidate) -> str:
    """Why a selected device cannot be in the plan ("" when it can)."""
    if same_version(candidate.current_version, spec.target_version):
        return "already on the target version"
    if candidate.offered_version is None:
        # The correlation core's reason says it all (up to date, refused, unanswered, delta only...).
        return candidate.refusal or "memfault offers nothing: up to date"
    if not same_version(candidate.offered_version, spec.target_version):
        return f"memfault offers {candidate.offered_version}, not {spec.target_version}"
    if refusal := _downgrade_refusal(spec, candidate.current_version):
        return refusal
    if not any(link.online for link in candidate.links):
        return "no online gateway hears it"
    return ""


def _downgrade_refusal(spec: RolloutSpec, current_version: str) -> str:
    if spec.allow_downgrade:
        return ""
    try:
        current = version_key(current_version)
    except InvalidVersion as error:
        return f"its version cannot be ordered, so a downgrade cannot be ruled out: {error}"
    return f"downgrade from {current_version} refused" if version_key(spec.target_version) < current else ""


def wave_sizes(spec: RolloutSpec, eligible: int) -> list[int]:
    """How many devices each wave adds (cumulative percentages or counts)."""
    sizes: list[int] = []
    covered = 0
    for wave in spec.waves:
        if wave.count is not None:
            target = covered + wave.count
        else:
            target = math.ceil(eligible * (wave.percent or 100.0) / 100.0)
        target = min(max(target, covered), eligible)
        sizes.append(target - covered)
        covered = target
    return sizes


def plan_rollout(
    rollout_id: str,
    plan_id: str,
    spec: RolloutSpec,
    candidates: Sequence[Candidate],
    now: datetime,
    *,
    image_size_bytes: int,
    throughput_bytes_per_s: float,
    reboot_s: float,
    gateway_success: Mapping[str, float] | None = None,
) -> RolloutPlan:
    """Plan a rollout over `candidates` (the registry's devices of the spec's software type).

    `gateway_success` is the success rate per gateway that dispatch scores links with.
    """
    excluded: list[ExcludedDevice] = []
    chosen: list[tuple[bytes, Candidate]] = []
    for candidate in candidates:
        if candidate.software_type != spec.software_type:
            continue
        sites = {link.site for link in candidate.links}
        if not selected(spec.selector, candidate, sites):
            continue
        reason = exclusion(spec, candidate)
        if reason:
            excluded.append(ExcludedDevice(device_serial=DeviceSerial(candidate.serial), reason=reason))
            continue
        chosen.append((order_key(rollout_id, candidate.serial), candidate))
    chosen.sort(key=lambda item: item[0])
    planned: dict[str, int] = {}
    eligible: list[tuple[bytes, Candidate, GatewayLink]] = []
    for key, candidate in chosen:
        link = _route(candidate, gateway_success or {}, planned)
        planned[link.gateway_id] = planned.get(link.gateway_id, 0) + 1
        eligible.append((key, candidate, link))
    sizes = wave_sizes(spec, len(eligible))
    ordered = _canary_first(eligible, sizes[0] if sizes else 0)
    waves: list[PlannedWave] = []
    start = 0
    for index, (size, wave_spec) in enumerate(zip(sizes, spec.waves, strict=True)):
        members = ordered[start : start + size]
        start += size
        devices = [
            PlannedDevice(
                device_serial=DeviceSerial(c.serial),
                gateway_id=GatewayId(link.gateway_id),
                hardware_version=c.hardware_version,
            )
            for _, c, link in members
        ]
        waves.append(PlannedWave(index=index, devices=devices, soak_s=wave_spec.soak_s))
    for _, candidate, _ in ordered[start:]:
        excluded.append(
            ExcludedDevice(device_serial=DeviceSerial(candidate.serial), reason="beyond the last wave")
        )
    waves = estimate_waves(
        waves,
        spec,
        now,
        image_size_bytes=image_size_bytes,
        throughput_bytes_per_s=throughput_bytes_per_s,
        reboot_s=reboot_s,
    )
    return RolloutPlan(
        rollout_id=RolloutId(rollout_id),
        plan_id=plan_id,
        created_at=now,
        software_type=spec.software_type,
        target_version=spec.target_version,
        waves=waves,
        excluded=excluded,
        image_size_bytes=image_size_bytes,
        estimated_duration_s=estimated_duration_s(waves, now),
    )


def _route(candidate: Candidate, success: Mapping[str, float], planned: Mapping[str, int]) -> GatewayLink:
    """The link dispatch would pick (`link_score` with nothing in flight yet).

    A tie goes to the gateway with the fewest devices planned so far; dispatch keeps the planned
    gateway on a tie, so the plan spreads tied devices and dispatch follows it.
    """
    online = [link for link in candidate.links if link.online]
    assert online  # exclusion() guarantees a link  # noqa: S101
    scores = {link.gateway_id: link_score(link, success.get(link.gateway_id, 1.0)) for link in online}
    top = max(scores.values())
    tied = [link for link in online if scores[link.gateway_id] == top]
    return min(tied, key=lambda link: (planned.get(link.gateway_id, 0), link.gateway_id))


STRATUM_WEIGHTS = {"hardware": 8, "version": 4, "site": 2, "gateway": 1}
"""A new hardware version outweighs any mix of the others, then a new current version, site, gateway."""


def _strata(candidate: Candidate, link: GatewayLink) -> tuple[tuple[str, str], ...]:
    return (
        ("hardware", candidate.hardware_version),
        ("version", candidate.current_version),
        ("site", link.site),
        ("gateway", link.gateway_id),
    )


def _canary_first(
    eligible: list[tuple[bytes, Candidate, GatewayLink]], canary_size: int
) -> list[tuple[bytes, Candidate, GatewayLink]]:
    """Move a stratified sample to the front, as far as `canary_size` allows.

    Every hardware version is represented before any twice, then every current version, site and
    gateway in that order of priority (`STRATUM_WEIGHTS`): passes over the distinct combinations of
    the four, from the most to the least new weight, take each combination's first device in hash
    order. Deterministic, and linear in the fleet size (the combinations are few).
    """
    if canary_size <= 0:
        return eligible
    first_of: dict[tuple[tuple[str, str], ...], int] = {}
    for index, (_, candidate, link) in enumerate(eligible):
        first_of.setdefault(_strata(candidate, link), index)
    chosen: list[int] = []
    picked: set[int] = set()
    seen: set[tuple[str, str]] = set()
    for needed in range(sum(STRATUM_WEIGHTS.values()), 0, -1):
        for strata, index in first_of.items():
            if len(chosen) >= canary_size:
                break
            new_weight = sum(STRATUM_WEIGHTS[kind] for kind, value in strata if (kind, value) not in seen)
            if index not in picked and new_weight >= needed:
                chosen.append(index)
                picked.add(index)
                seen.update(strata)
    return [eligible[i] for i in chosen] + [item for i, item in enumerate(eligible) if i not in picked]


EXPECTED_RETRY_SHARE = 0.1
"""The share of extra attempts the estimate adds (transient failures retried): 10 % more jobs."""
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Windows:
    """When jobs may start: always, or only inside one of the spec's maintenance windows."""

    windows: tuple[tuple[CronSchedule, ZoneInfo, float], ...]

    def open_at(self, moment: datetime) -> tuple[datetime, datetime] | None:
        """The first time at or after `moment` that a job may start, and when that window ends."""
        if not self.windows:
            return moment, _NEVER
        opens: list[tuple[datetime, datetime]] = []
        for schedule, tz, duration_s in self.windows:
            start = open_window_start(schedule, tz, duration_s, moment)
            if start is not None:
                opens.append((moment, start + timedelta(seconds=duration_s)))
                continue
            upcoming = next_window_start(schedule, tz, moment)
            if upcoming is not None:
                opens.append((upcoming, upcoming + timedelta(seconds=duration_s)))
        return min(opens, default=None)


def estimate_waves(
    waves: Sequence[PlannedWave],
    spec: RolloutSpec,
    now: datetime,
    *,
    image_size_bytes: int,
    throughput_bytes_per_s: float,
    reboot_s: float,
) -> list[PlannedWave]:
    """The waves with when each is expected to start and end.

    Jobs run in rounds of one job's duration (upload plus reboot). A round starts only inside a
    maintenance window (a job started in it runs to its end), holds at most the in-flight budget
    (the global cap, the radio caps of the wave's gateways, the ramp, which doubles after each
    round), and no more jobs than `starts_per_minute` allows; each wave has `EXPECTED_RETRY_SHARE`
    more jobs than devices, and the next wave starts after this one's soak. A wave is never shorter
    than its busiest gateway's queue.
    """
    per_job_s = image_size_bytes / max(throughput_bytes_per_s, 1.0) + reboot_s
    flow = spec.flow
    per_minute = flow.starts_per_minute
    starts = _Windows(tuple((parse_cron(w.cron), zone(w.timezone), w.duration_s) for w in spec.windows))
    ramp = flow.ramp_initial_in_flight or flow.max_in_flight
    moment: datetime | None = now
    estimated: list[PlannedWave] = []
    for wave in waves:
        if moment is None or not wave.devices:
            estimated.append(msgspec.structs.replace(wave, expected_start=moment, expected_end=moment))
            continue
        per_gateway: dict[str, int] = {}
        for device in wave.devices:
            per_gateway[device.gateway_id] = per_gateway.get(device.gateway_id, 0) + 1
        radio = sum(min(count, flow.max_in_flight_per_gateway) for count in per_gateway.values())
        jobs = math.ceil(len(wave.devices) * (1 + EXPECTED_RETRY_SHARE))
        first: datetime | None = None
        window_end = moment
        while jobs > 0 and moment is not None:
            if moment >= window_end:
                found = starts.open_at(moment)
                if found is None:
                    moment = None
                    break
                moment, window_end = found
            first = first or moment
            batch = min(jobs, flow.max_in_flight, radio, ramp)
            round_s = per_job_s
            if per_minute is not None:
                batch = min(batch, max(1, math.floor(per_minute * per_job_s / 60.0)))
                round_s = max(per_job_s, batch * 60.0 / per_minute)
            moment += timedelta(seconds=round_s)
            jobs -= batch
            ramp = min(flow.max_in_flight, ramp * 2)
        if moment is None or first is None:
            estimated.append(msgspec.structs.replace(wave, expected_start=first, expected_end=None))
            continue
        busiest_s = math.ceil(max(per_gateway.values()) / flow.max_in_flight_per_gateway) * per_job_s
        end = max(moment, first + timedelta(seconds=busiest_s))
        estimated.append(msgspec.structs.replace(wave, expected_start=first, expected_end=end))
        moment = end + timedelta(seconds=wave.soak_s)
    return estimated


def estimated_duration_s(waves: Sequence[PlannedWave], now: datetime) -> float:
    """From now to the end of the last wave's soak (0 when a wave cannot start: no window opens)."""
    if any(wave.devices and wave.expected_end is None for wave in waves):
        return 0.0
    ends = [wave.expected_end + timedelta(seconds=wave.soak_s) for wave in waves if wave.expected_end]
    return round((max(ends) - now).total_seconds(), 1) if ends else 0.0
