"""The controller as a system: ingest, plan and rollout of a whole fleet through the real broker.

Every part runs in its own process, as in the field:
- mosquitto with the shipped limits: `deploy/mosquitto/mosquitto.conf` with its TLS listener, ACL
  and paths replaced by a plain-TCP loopback listener and this run's directory (every queue, size
  and in-flight limit is kept, so a retained message over `message_size_limit` is dropped here as
  in production);
- the Memfault cloud emulator over loopback HTTP, serving release 1.1.0 to every device, with a
  per-device rate limit (`MEMFAULT_PER_DEVICE_PER_MINUTE`);
- `mcufleet controller --config controller.toml` on SQLite, its Memfault rate raised to
  `MEMFAULT_REQUESTS_PER_S` and `MEMFAULT_MAX_CONCURRENCY` (everything else the shipped defaults);
- fake gateways (`bench.fake_gateways`): up to ten processes, each playing many gateways with
  paho, publishing births, retained reports and credentials and answering every OTA command with
  progress and a succeeded result, as agents do.
This process is the operator (requests over MQTT, the retained plan and state followed).

For each fleet (`1k`: 1,000 devices on 10 gateways, `10k`: 10,000 on 100, `100k`: 100,000 on
1,000) it measures, every phase bounded by its own timeout:
- `controller.system_ingest_<n>_s`: gateways started to every device and every credential in
  the registry (read from the store); `..._rss_mb` the controller's peak RSS by then; diagnostics
  `..._rebirths` (rebirths the controller asked for) and `..._reports_per_device` (reports applied).
- `controller.system_plan_<n>_cold_s`: a create request sent to its retained plan received (its
  summary and every page; no release cached); `..._warm_s`: a preview request of the same rollout
  to its new plan received; `..._excluded` the devices each plan left out (0 when every device was
  answered); `controller.system_plan_<n>_largest_message_bytes` the largest summary or page (the
  shipped broker drops a retained message over 256 KiB).
- `controller.system_results_per_s_<n>`: job results turned into state per second, from the start
  request to the last change of the retained state's finished count (a single wave over the whole
  fleet, `MAX_IN_FLIGHT_PER_GATEWAY` jobs per gateway).
- `controller.system_duplicate_commands_<n>`: OTA commands the gateways received beyond one per
  device and target; `controller.system_duplicate_commands` sums it over the fleets of the run.
A phase that times out records `..._completed_ratio` (how far it got; for ingest also the devices'
and the credentials' ratios) and the run goes on.

`make bench` runs the 1k and 10k fleets; `make bench-system` runs the 100k fleet alone
(`python -m bench.bench_system 100k`), merging its figures into bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as StopEvent
from pathlib import Path
from typing import Final

import aiomqtt
import httpx

from bench import fake_gateways
from controller.operator_cli import send_request
from controller.settings import (
    ControllerSettings,
    LogConfig,
    MemfaultConfig,
    MetricsConfig,
    MqttConfig,
    StoreConfig,
)
from controller.store.opening import open_store
from schemas import (
    CreateRollout,
    FlowSpec,
    PreviewRollout,
    ReplyStatus,
    RequestId,
    RolloutId,
    RolloutPlan,
    RolloutPlanPage,
    RolloutPlanSummary,
    RolloutSpec,
    RolloutState,
    StartRollout,
    TopicKind,
    TopicTree,
    WaveSpec,
    assemble_plan,
    channels,
)
from simulator.cloud import CloudEmulator
from simulator.fleet import firmware_image
from tests.harness.broker import MosquittoBroker
from tests.harness.ports import free_tcp_port
from tests.integration.world import settings_document, to_toml

SHIPPED_BROKER_CONF: Final = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "mosquitto.conf"
TARGET: Final = "1.1.0"
MEMFAULT_PER_DEVICE_PER_MINUTE: Final = 6
"""Latest-release requests the emulator allows per device a minute (a plan and a dispatch need two)."""
MEMFAULT_REQUESTS_PER_S: Final = 3000.0
"""The controller's Memfault rate (the shipped 20/s would make the cold plan of 10k last 500 s)."""
MEMFAULT_MAX_CONCURRENCY: Final = 32
"""Memfault queries in flight (the shipped 8 cap a cold 100k plan at 8 / latency)."""
MAX_IN_FLIGHT_PER_GATEWAY: Final = 16
GATEWAY_PROCESSES_MAX: Final = 10
REQUEST_TIMEOUT_S: Final = 60.0
SETTLE_S: Final = 3.0
"""After the rollout: time for late (duplicate) commands to reach the gateways."""
STOP_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.5
TREE: Final = TopicTree()


@dataclass(frozen=True, slots=True)
class FleetSize:
    """One fleet and the timeouts of its phases."""

    label: str
    devices: int
    gateways: int
    ingest_timeout_s: float
    plan_timeout_s: float
    rollout_timeout_s: float


FLEETS: Final = {
    "1k": FleetSize("1k", 1_000, 10, 90.0, 120.0, 180.0),
    "10k": FleetSize("10k", 10_000, 100, 180.0, 300.0, 300.0),
    "100k": FleetSize("100k", 100_000, 1_000, 300.0, 300.0, 600.0),
}
MAKE_BENCH_FLEETS: Final = ("1k", "10k")


def broker_config(port: int, workdir: Path, overrides: Mapping[str, str] | None = None) -> str:
    """The shipped broker config with a plain-TCP loopback listener and this run's paths.

    `overrides` replace shipped options (diagnostics only: `python -m bench.bench_system --broker`).
    """
    changed = dict(overrides or {})
    dropped = (
        "listener",
        "protocol",
        "cafile",
        "certfile",
        "keyfile",
        "tls_version",
        "require_certificate",
        "use_identity_as_username",
        "acl_file",
        "allow_anonymous",
        "persistence_location",
        "per_listener_settings",
        "user",
        *changed,
    )
    kept = [
        line
        for line in SHIPPED_BROKER_CONF.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and line.split()[0] not in dropped
    ]
    return "\n".join(
        [
            *kept,
            "per_listener_settings false",
            "allow_anonymous true",
            f"persistence_location {workdir / 'data'}/",
            *(f"{option} {value}" for option, value in changed.items()),
            # As root, mosquitto would drop to user `mosquitto` and could not write this run's store.
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {port} 127.0.0.1",
            "",
        ]
    )


def _serve_cloud(port: int, ready: StopEvent, stop: StopEvent) -> None:
    """The Memfault emulator, in its own process, until `stop` is set."""

    async def serve() -> None:
        async with CloudEmulator(port=port) as cloud:
            cloud.add_project(fake_gateways.PROJECT_KEY)
            image = firmware_image(TARGET, 24_000)
            cloud.add_release(fake_gateways.PROJECT_KEY, TARGET, {fake_gateways.HARDWARE: image})
            cloud.activate(fake_gateways.PROJECT_KEY, TARGET)
            cloud.faults.configure(rate_limit_per_minute=MEMFAULT_PER_DEVICE_PER_MINUTE)
            ready.set()
            while not stop.is_set():  # noqa: ASYNC110 (the stop signal comes from another process)
                await asyncio.sleep(0.2)

    asyncio.run(serve())


@dataclass
class Follower:
    """The retained plans and states of every rollout, with when each arrived (monotonic).

    A plan is published as a summary and pages (`rollout/<id>/plan` and `rollout/<id>/plan/<n>`);
    it counts as arrived when its summary and every page of the same plan id are in.
    """

    plans: dict[str, list[tuple[float, RolloutPlan]]] = field(default_factory=dict)
    summaries: dict[str, RolloutPlanSummary] = field(default_factory=dict)
    pages: dict[tuple[str, str], dict[int, RolloutPlanPage]] = field(default_factory=dict)
    """Pages by (rollout, plan id), then page number."""
    largest_message_bytes: int = 0
    """The largest plan summary or page seen (each must stay under the broker's size limit)."""
    states: dict[str, tuple[float, RolloutState]] = field(default_factory=dict)
    finished_changed_at: dict[str, float] = field(default_factory=dict)
    controller_online: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, message: aiomqtt.Message) -> None:
        """Record one plan summary or page, state or controller presence."""
        payload = message.payload
        if not isinstance(payload, bytes) or not payload:
            return
        topic = message.topic.value
        now = time.monotonic()
        route = TREE.parse(topic)
        kind = route.kind
        if kind in {TopicKind.ROLLOUT_PLAN, TopicKind.ROLLOUT_PLAN_PAGE}:
            self.largest_message_bytes = max(self.largest_message_bytes, len(payload))
        decoded = channels.decode(kind, payload, topic)
        if isinstance(decoded, RolloutPlanSummary):
            self.summaries[decoded.rollout_id] = decoded
            self._assemble(decoded.rollout_id, now)
        elif isinstance(decoded, RolloutPlanPage):
            self.pages.setdefault((decoded.rollout_id, decoded.plan_id), {})[decoded.page] = decoded
            self._assemble(decoded.rollout_id, now)
        elif isinstance(decoded, RolloutState):
            previous = self.states.get(decoded.rollout_id)
            if previous is None or _finished(previous[1]) != _finished(decoded):
                self.finished_changed_at[decoded.rollout_id] = now
            self.states[decoded.rollout_id] = (now, decoded)
        elif kind is TopicKind.CONTROLLER_PRESENCE and getattr(decoded, "online", False):
            self.controller_online.set()

    def _assemble(self, rollout_id: str, now: float) -> None:
        summary = self.summaries.get(rollout_id)
        if summary is None:
            return
        known = self.plans.get(rollout_id, [])
        if known and known[-1][1].plan_id == summary.plan_id:
            return
        plan = assemble_plan(summary, self.pages.get((rollout_id, summary.plan_id), {}))
        if plan is not None:
            self.plans.setdefault(rollout_id, []).append((now, plan))


def _finished(state: RolloutState) -> int:
    counts = state.counts
    ended = (counts.succeeded, counts.failed, counts.rejected, counts.timed_out, counts.reverted)
    return sum(ended) + counts.canceled


def _planned(state: RolloutState) -> int:
    return sum(wave.size for wave in state.waves)


@contextlib.asynccontextmanager
async def following(port: int) -> AsyncIterator[Follower]:
    """A follower subscribed to rollout plans, states and controller presence."""
    follower = Follower()
    identifier = f"bench-follow-{uuid.uuid4().hex[:6]}"
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        kinds = (
            TopicKind.ROLLOUT_PLAN,
            TopicKind.ROLLOUT_PLAN_PAGE,
            TopicKind.ROLLOUT_STATE,
            TopicKind.CONTROLLER_PRESENCE,
        )
        for kind in kinds:
            await client.subscribe(TREE.filter(kind), qos=1)

        async def loop() -> None:
            async for message in client.messages:
                with contextlib.suppress(Exception):
                    follower.on_message(message)

        task = asyncio.create_task(loop(), name="follower")
        try:
            yield follower
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass
class World:
    """The processes of one fleet's run."""

    size: FleetSize
    workdir: Path
    broker: MosquittoBroker
    store_url: str
    metrics_port: int
    cloud_url: str = ""
    controller: subprocess.Popen[bytes] | None = None
    gateways: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stats_files: list[Path] = field(default_factory=list)

    def start_controller(self) -> None:
        """`mcufleet controller --config controller.toml`."""
        settings = ControllerSettings(
            controller_id="controller-1",
            mqtt=MqttConfig(host=self.broker.host, port=self.broker.port, username=""),
            store=StoreConfig(url=self.store_url),
            memfault=MemfaultConfig(
                base_url=self.cloud_url,
                requests_per_s=MEMFAULT_REQUESTS_PER_S,
                max_concurrency=MEMFAULT_MAX_CONCURRENCY,
            ),
            metrics=MetricsConfig(enabled=True, port=self.metrics_port),
            log=LogConfig(level="warning"),
        )
        config = self.workdir / "controller.toml"
        config.write_text(to_toml(settings_document(settings)))
        script = Path(sys.executable).with_name("mcufleet")
        with (self.workdir / "controller.log").open("ab") as log:
            self.controller = subprocess.Popen(
                [str(script), "controller", "--config", str(config)], stdout=log, stderr=log
            )

    def start_gateways(self) -> None:
        """The fake gateways, spread over up to `GATEWAY_PROCESSES_MAX` processes."""
        size = self.size
        processes = max(1, min(GATEWAY_PROCESSES_MAX, size.gateways // 10))
        per_process = -(-size.gateways // processes)
        for index in range(processes):
            first = index * per_process
            count = min(per_process, size.gateways - first)
            stats = self.workdir / f"gateways-{index}.json"
            self.stats_files.append(stats)
            with (self.workdir / f"gateways-{index}.log").open("ab") as log:
                self.gateways.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "bench.fake_gateways",
                            "--port",
                            str(self.broker.port),
                            "--first",
                            str(first),
                            "--count",
                            str(count),
                            "--devices-per-gateway",
                            str(size.devices // size.gateways),
                            "--stats",
                            str(stats),
                        ],
                        stdout=log,
                        stderr=log,
                    )
                )

    def gateway_counts(self) -> dict[str, int]:
        """The gateways' counts, summed over their processes."""
        total: dict[str, int] = {}
        for path in self.stats_files:
            with contextlib.suppress(OSError, ValueError):
                for key, value in json.loads(path.read_text()).items():
                    total[key] = total.get(key, 0) + int(value)
        return total

    def controller_rss_mb(self) -> float:
        """The controller's peak resident set (VmHWM) so far."""
        if self.controller is None:
            return 0.0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.controller.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        """SIGTERM everything this run started, then SIGKILL what is still there."""
        for process in [*self.gateways, *([self.controller] if self.controller else [])]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.gateways, *([self.controller] if self.controller else [])]:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _metric(text: str, name: str) -> float:
    """A sample's value from a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            with contextlib.suppress(ValueError):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _scrape(port: int) -> str:
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=10) as http:
            return (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return ""


async def _registry_counts(store_url: str) -> tuple[int, int]:
    """(devices, credentials) in the registry."""

    def read() -> tuple[int, int]:
        store = open_store(store_url)
        try:
            return store.counts()[1], len(store.project_keys())
        finally:
            store.db.close()

    try:
        return await asyncio.to_thread(read)
    except Exception:  # noqa: BLE001 (the store may be busy or not created yet: count nothing)
        return 0, 0


async def measure_ingest(world: World, figures: dict[str, float]) -> None:
    """Gateways started to every device and credential in the registry."""
    size, key = world.size, f"controller.system_ingest_{world.size.label}"
    started = time.monotonic()
    world.start_gateways()
    devices = credentials = 0
    while time.monotonic() - started < size.ingest_timeout_s:
        devices, credentials = await _registry_counts(world.store_url)
        if devices >= size.devices and credentials >= size.devices:
            figures[f"{key}_s"] = round(time.monotonic() - started, 2)
            break
        await asyncio.sleep(POLL_S)
    else:
        figures[f"{key}_completed_ratio"] = round(min(devices, credentials) / size.devices, 3)
        figures[f"{key}_devices_ratio"] = round(devices / size.devices, 3)
        figures[f"{key}_credentials_ratio"] = round(credentials / size.devices, 3)
    figures[f"{key}_rss_mb"] = round(world.controller_rss_mb(), 1)
    page = await _scrape(world.metrics_port)
    figures[f"{key}_rebirths"] = _metric(page, "mcufleet_controller_rebirths_requested_total")
    applied = _metric(page, "mcufleet_controller_reports_applied_total")
    figures[f"{key}_reports_per_device"] = round(applied / size.devices, 2)


async def _request(client: aiomqtt.Client, request: CreateRollout | PreviewRollout | StartRollout) -> bool:
    reply = await send_request(client, TREE, request, REQUEST_TIMEOUT_S)
    return reply is not None and reply.status is ReplyStatus.ACCEPTED


async def measure_plan(
    world: World, follower: Follower, client: aiomqtt.Client, rollout_id: str, temperature: str
) -> dict[str, float]:
    """A create (cold) or preview (warm) request to the retained plan it produces."""
    size = world.size
    key = f"controller.system_plan_{size.label}_{temperature}"
    known_plans = len(follower.plans.get(rollout_id, []))
    request_id = RequestId(f"{rollout_id}-{temperature}")
    request: CreateRollout | PreviewRollout
    if temperature == "cold":
        spec = RolloutSpec(
            software_type=fake_gateways.SOFTWARE_TYPE,
            target_version=TARGET,
            waves=[WaveSpec(percent=100)],
            flow=FlowSpec(max_in_flight=size.devices, max_in_flight_per_gateway=MAX_IN_FLIGHT_PER_GATEWAY),
        )
        request = CreateRollout(request_id=request_id, rollout_id=RolloutId(rollout_id), spec=spec)
    else:
        request = PreviewRollout(request_id=request_id, rollout_id=RolloutId(rollout_id))
    started = time.monotonic()
    figures: dict[str, float] = {}
    if not await _request(client, request):
        figures[f"{key}_completed_ratio"] = 0.0
        return figures
    while time.monotonic() - started < size.plan_timeout_s:
        plans = follower.plans.get(rollout_id, [])
        if len(plans) > known_plans:
            arrived, plan = plans[-1]
            figures[f"{key}_s"] = round(arrived - started, 2)
            # Devices the plan left out (unanswered by Memfault, say): a fast plan that excludes
            # devices is no fast plan.
            figures[f"{key}_excluded"] = float(len(plan.excluded))
            figures[f"controller.system_plan_{size.label}_largest_message_bytes"] = float(
                follower.largest_message_bytes
            )
            return figures
        await asyncio.sleep(0.05)
    figures[f"{key}_completed_ratio"] = 0.0
    return figures


async def measure_rollout(
    world: World, follower: Follower, client: aiomqtt.Client, rollout_id: str
) -> dict[str, float]:
    """Start the planned rollout and follow its state until every device finished."""
    size, label = world.size, world.size.label
    figures: dict[str, float] = {}
    state = follower.states.get(rollout_id)
    if state is None or not state[1].plan_id:
        figures[f"controller.system_results_{label}_completed_ratio"] = 0.0
        return figures
    plan_id = state[1].plan_id
    started = time.monotonic()
    request = StartRollout(
        request_id=RequestId(f"{rollout_id}-start"), rollout_id=RolloutId(rollout_id), plan_id=plan_id
    )
    if not await _request(client, request):
        figures[f"controller.system_results_{label}_completed_ratio"] = 0.0
        return figures
    planned = _planned(state[1]) or size.devices
    finished = 0
    while time.monotonic() - started < size.rollout_timeout_s:
        current = follower.states.get(rollout_id)
        finished = _finished(current[1]) if current else 0
        if finished >= planned:
            break
        await asyncio.sleep(POLL_S)
    else:
        figures[f"controller.system_results_{label}_completed_ratio"] = round(finished / planned, 3)
    last_change = follower.finished_changed_at.get(rollout_id, started)
    if finished:
        rate = finished / max(last_change - started, 1e-3)
        figures[f"controller.system_results_per_s_{label}"] = round(rate, 1)
    return figures


async def measure_fleet(
    size: FleetSize, keep_logs_in: Path | None = None, broker_overrides: Mapping[str, str] | None = None
) -> dict[str, float]:
    """Every figure of one fleet, in a world built and torn down for it.

    Its logs (controller, broker, gateways) are copied into `keep_logs_in` when given;
    `broker_overrides` change the shipped broker options (diagnostics).
    """
    figures: dict[str, float] = {}
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix=f"bench-system-{size.label}-") as scratch:
        workdir = Path(scratch)
        port = free_tcp_port()
        (workdir / "broker").mkdir()
        broker = MosquittoBroker(
            workdir / "broker", port=port, config=broker_config(port, workdir / "broker", broker_overrides)
        )
        broker.start()
        cloud_port = free_tcp_port()
        ready, stop = context.Event(), context.Event()
        cloud = context.Process(target=_serve_cloud, args=(cloud_port, ready, stop), name="memfault-emulator")
        cloud.start()
        world = World(size, workdir, broker, f"sqlite:///{workdir / 'controller.sqlite3'}", free_tcp_port())
        world.cloud_url = f"http://127.0.0.1:{cloud_port}"
        try:
            if not await asyncio.to_thread(ready.wait, 60):
                raise RuntimeError("the Memfault emulator did not start")
            async with following(port) as follower:
                world.start_controller()
                await asyncio.wait_for(follower.controller_online.wait(), 60)
                await measure_ingest(world, figures)
                async with aiomqtt.Client(
                    "127.0.0.1", port, identifier="bench-operator", protocol=aiomqtt.ProtocolVersion.V5
                ) as client:
                    rollout_id = f"r-{size.label}"
                    figures |= await measure_plan(world, follower, client, rollout_id, "cold")
                    figures |= await measure_plan(world, follower, client, rollout_id, "warm")
                    figures |= await measure_rollout(world, follower, client, rollout_id)
                await asyncio.sleep(SETTLE_S)
                counts = world.gateway_counts()
                figures[f"controller.system_duplicate_commands_{size.label}"] = float(
                    counts.get("commands", 0) - counts.get("commanded", 0)
                )
                figures[f"controller.system_commands_{size.label}"] = float(counts.get("commands", 0))
        finally:
            world.stop()
            stop.set()
            cloud.join(STOP_TIMEOUT_S)
            if cloud.is_alive():
                cloud.kill()
            broker.crash()
            if keep_logs_in is not None:
                _copy_logs(workdir, keep_logs_in)
    return figures


def _copy_logs(workdir: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for log in (*workdir.glob("*.log"), *workdir.glob("broker/*.log")):
        shutil.copy(log, destination / log.name)


def measure(
    labels: Sequence[str],
    keep_logs_in: Path | None = None,
    broker_overrides: Mapping[str, str] | None = None,
    phase_timeout_s: float | None = None,
) -> dict[str, float]:
    """The figures of the named fleets, one after the other (`phase_timeout_s` caps every phase)."""
    figures: dict[str, float] = {}
    for label in labels:
        logs = keep_logs_in / label if keep_logs_in is not None else None
        size = FLEETS[label]
        if phase_timeout_s is not None:
            size = dataclasses.replace(
                size,
                ingest_timeout_s=min(size.ingest_timeout_s, phase_timeout_s),
                plan_timeout_s=min(size.plan_timeout_s, phase_timeout_s),
                rollout_timeout_s=min(size.rollout_timeout_s, phase_timeout_s),
            )
        fleet_figures = asyncio.run(measure_fleet(size, logs, broker_overrides))
        print(json.dumps(fleet_figures), file=sys.stderr, flush=True)
        figures |= fleet_figures
    figures["controller.system_duplicate_commands"] = sum(
        figures.get(f"controller.system_duplicate_commands_{label}", 0.0) for label in labels
    )
    return figures


def run() -> dict[str, float]:
    """`make bench`: the 1k and 10k fleets."""
    return measure(MAKE_BENCH_FLEETS)


def main(argv: Sequence[str]) -> int:
    """`python -m bench.bench_system [100k ...]`: measure the named fleets and merge the results.

    `--logs DIR` keeps every process's log; `--phase-timeout-s` caps every phase (a shorter run
    that records how far each phase got); `--broker OPTION=VALUE` changes a shipped broker
    option, for diagnostics only: such a run prints its figures and writes no results.
    """
    from bench.__main__ import write_results  # noqa: PLC0415 (only the command line writes results)

    parser = argparse.ArgumentParser(prog="python -m bench.bench_system")
    parser.add_argument("fleets", nargs="*", default=["100k"], choices=sorted(FLEETS))
    parser.add_argument("--logs", type=Path, default=None, help="copy every log into this directory")
    parser.add_argument("--broker", action="append", default=[], help="OPTION=VALUE over the shipped conf")
    parser.add_argument("--phase-timeout-s", type=float, default=None, help="cap every phase's timeout")
    args = parser.parse_args(argv)
    overrides = dict(option.split("=", 1) for option in args.broker)
    figures = measure(args.fleets, args.logs, overrides, args.phase_timeout_s)
    if not overrides:
        write_results(figures, merge=True)
    for key, value in sorted(figures.items()):
        print(f"{key:55s} {value:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
