"""Idle footprint of the gateway agent with 50 known devices: resident memory and CPU.

The agent runs as in production, as its own process (`python -m mcufleet agent --config <toml>`,
metrics endpoint and JSON logs on), connected to a real mosquitto (mcufleet/local_broker.py) and
knowing 50 simulated SMP-over-UDP devices (`FleetServer`, loopback link, served by this process)
with discovery refreshing every 60 s. Once it has published a report for every device, the bench
waits `SETTLE_S` and then watches the agent's /proc entries for `WINDOW_S`:

- `agent.idle_rss_mb` (target < 60): the largest VmRSS seen (sampled every `SAMPLE_S`), in MiB.
- `agent.idle_cpu_percent` (target < 1): user + system CPU time the agent used over the window
  (/proc/<pid>/stat utime + stime, every thread included), as a share of one core's wall time.

The window ends before the first 60 s refresh is due, so it measures the agent between probes:
its MQTT keepalives, timers and housekeeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import aiomqtt

from schemas import TopicKind, TopicTree
from simulator.fleet import generate_fleet
from simulator.server import FleetServer
from tests.harness.broker import MosquittoBroker

DEVICES: Final = 50
GATEWAY_ID: Final = "gw-bench-idle"
REFRESH_INTERVAL_S: Final = 60.0
WARM_TIMEOUT_S: Final = 60.0
SETTLE_S: Final = 3.0
WINDOW_S: Final = 20.0
SAMPLE_S: Final = 0.5
STOP_TIMEOUT_S: Final = 10.0
PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent


def agent_config(state_dir: Path, broker: MosquittoBroker, endpoints: list[tuple[str, int]]) -> str:
    """The agent's TOML: this broker, these UDP devices, production defaults otherwise."""
    devices = "".join(f'\n[[udp_devices]]\nhost = "{host}"\nport = {port}\n' for host, port in endpoints)
    return (
        f'gateway_id = "{GATEWAY_ID}"\n'
        f'state_dir = "{state_dir}"\n'
        "\n[mqtt]\n"
        f'host = "{broker.host}"\n'
        f"port = {broker.port}\n"
        "\n[metrics]\n"
        "enabled = true\n"
        "port = 0\n"
        "\n[discovery]\n"
        f"refresh_interval_s = {REFRESH_INTERVAL_S}\n"
        f"{devices}"
    )


def rss_kb(pid: int) -> int:
    """The process's resident set size (VmRSS), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_s(pid: int) -> float:
    """User plus system CPU time the process (all its threads) has used, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


async def wait_for_reports(broker: MosquittoBroker, count: int, agent: subprocess.Popen[bytes]) -> None:
    """Return once the agent has published a report for `count` distinct devices."""
    topic_filter = TopicTree().filter(TopicKind.DEVICE_REPORT, gateway_id=GATEWAY_ID)
    seen: set[str] = set()
    async with (
        asyncio.timeout(WARM_TIMEOUT_S),
        aiomqtt.Client(broker.host, broker.port, identifier="bench-idle-probe") as client,
    ):
        await client.subscribe(topic_filter, qos=1)
        async for message in client.messages:
            seen.add(str(message.topic))
            if len(seen) >= count:
                return
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited with {agent.returncode}")


async def watch(pid: int) -> tuple[float, float]:
    """Sample the process over `WINDOW_S`; return its peak RSS (MiB) and CPU share (percent)."""
    started_wall_s, started_cpu_s = time.monotonic(), cpu_s(pid)
    peak_kb = rss_kb(pid)
    while time.monotonic() - started_wall_s < WINDOW_S:
        await asyncio.sleep(SAMPLE_S)
        peak_kb = max(peak_kb, rss_kb(pid))
    used_s, wall_s = cpu_s(pid) - started_cpu_s, time.monotonic() - started_wall_s
    return peak_kb / 1024, 100 * used_s / wall_s


def start_agent(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Run the agent as production does, its output going to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mcufleet", "agent", "--config", str(config)],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(agent: subprocess.Popen[bytes]) -> None:
    """SIGTERM the agent (a graceful stop), SIGKILL it if it does not exit in time."""
    if agent.poll() is not None:
        return
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


async def _measure(workdir: Path) -> dict[str, float]:
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    try:
        async with FleetServer(
            generate_fleet(DEVICES, seed=11), base_host="127.0.0.1", port_per_device=True
        ) as server:
            config = workdir / "agent.toml"
            state_dir = workdir / "agent-state"
            state_dir.mkdir()
            config.write_text(agent_config(state_dir, broker, list(server.endpoints.values())))
            agent = start_agent(config, workdir / "agent.log")
            try:
                await wait_for_reports(broker, DEVICES, agent)
                await asyncio.sleep(SETTLE_S)
                rss_mb, cpu_percent = await watch(agent.pid)
                if agent.poll() is not None:
                    raise RuntimeError(f"the agent exited with {agent.returncode} while measured")
            finally:
                stop(agent)
    finally:
        broker.stop()
    return {"agent.idle_rss_mb": rss_mb, "agent.idle_cpu_percent": cpu_percent}


def run() -> dict[str, float]:
    """Start mosquitto, 50 simulated devices and the agent; measure the agent once it is idle."""
    with tempfile.TemporaryDirectory(prefix="bench-agent-idle-") as workdir:
        return asyncio.run(_measure(Path(workdir)))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
