"""`mcufleet rollout` as an operator runs it: create, preview, start, watch and status, as processes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import msgspec
import pytest

from schemas import FlowSpec, RolloutSpec, WaveSpec
from simulator.cloud import CloudEmulator
from simulator.device import BootOutcome
from tests.harness.broker import MosquittoBroker
from tests.integration.world import (
    gateways,
    publish_release,
    registry_has,
    running_controller,
    simulated_devices,
    wait_until,
)

pytestmark = pytest.mark.integration
CLI_TIMEOUT_S = 120.0


async def rollout_cli(broker: MosquittoBroker, *args: str) -> tuple[int, str, str]:
    """Run `mcufleet rollout ARGS` against the test broker: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mcufleet",
        "rollout",
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        "--username",
        "",
        "--operator",
        "alice",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_an_operator_drives_a_rollout_with_the_cli(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Every subcommand answers; `watch` draws wave and gateway bars and exits 0 on completion."""
    serials = [f"DEV-{i}" for i in range(6)]
    spec = RolloutSpec(
        software_type="app",
        target_version="1.1.0",
        waves=[WaveSpec(percent=50), WaveSpec(percent=100)],
        flow=FlowSpec(max_in_flight=4, max_in_flight_per_gateway=2),
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_bytes(msgspec.json.encode(spec))
    async with (
        CloudEmulator() as cloud,
        simulated_devices(serials) as devices,
        running_controller(broker, cloud.base_url, f"sqlite:///{tmp_path / 'c.sqlite3'}") as controller,
        gateways(broker, devices, tmp_path, 2),
    ):
        publish_release(cloud, "1.1.0")
        await wait_until(lambda: registry_has(controller, len(serials)))

        code, out, err = await rollout_cli(broker, "create", "r-cli", str(spec_file))
        assert code == 0 and out.startswith("accepted"), (out, err)
        code, out, err = await rollout_cli(broker, "preview", "r-cli")
        assert code == 0, err
        # The fresh plan is printed: waves with their gateways, and how to approve exactly it.
        assert f"{len(serials)} devices in 2 waves" in out
        assert "gw-0" in out
        assert "mcufleet rollout start r-cli --plan-id" in out
        # Without a plan id and nothing to confirm on: the plan is shown and nothing starts.
        code, out, err = await rollout_cli(broker, "start", "r-cli")
        assert code == 2 and "not started: confirm plan" in err and "2 waves" in err, (out, err)
        code, out, err = await rollout_cli(broker, "status", "r-cli")
        assert json.loads(out)["status"] == "planned"
        code, out, err = await rollout_cli(broker, "start", "r-cli", "--yes")
        assert code == 0 and out.startswith("accepted"), (out, err)

        code, out, err = await rollout_cli(broker, "watch", "r-cli")
        assert code == 0, err
        assert "wave 0" in err and "wave 1" in err
        assert "gateway gw-0" in err
        assert "rollout r-cli completed" in err

        code, out, err = await rollout_cli(broker, "status", "r-cli")
        assert code == 0, err
        state = json.loads(out)
        assert state["status"] == "completed" and state["counts"]["succeeded"] == len(serials)
        assert sum(g["succeeded"] for g in state["gateways"]) == len(serials)

        # A request the controller refuses: the rollout is already completed.
        code, out, err = await rollout_cli(broker, "pause", "r-cli", "--reason", "too late")
        assert code != 0 and out.startswith("rejected"), (out, err)
        code, out, err = await rollout_cli(broker, "status", "r-unknown")
        assert code != 0 and "no state published" in err
    for serial in serials:
        assert [b.outcome for b in devices.device(serial).boots].count(BootOutcome.SWAPPED) == 1


async def test_a_bad_spec_file_is_a_clear_usage_error(broker: MosquittoBroker, tmp_path: Path) -> None:
    """Missing, non-JSON, non-UTF-8 or invalid specs: exit 2 with the file named, no traceback."""
    bad = {
        "missing.json": None,
        "garbage.json": b"{not json",
        "latin1.json": b'{"software_type":"\xe9t\xe9","target_version":"1.0.0"}',
        "invalid.json": b'{"software_type":"app","target_version":"1.0.0","waves":[]}',
    }
    for name, content in bad.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        code, _, err = await rollout_cli(broker, "create", "r-bad", str(path))
        assert code == 2 and f"spec file {path}" in err and "Traceback" not in err, (name, err)
