"""`mcufleet devices` and `mcufleet gateways` print what the store holds."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from controller.store.opening import open_store
from schemas import DeviceReport, DeviceSerial, GatewayId, GatewayPresence, Transport


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("mcufleet")
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, check=False, timeout=60, env={"COLUMNS": "200"}
    )


def test_tables_show_devices_and_gateways(tmp_path: Path) -> None:
    """A device heard by a gateway appears with its version and RSSI; the gateway with its state."""
    url = f"sqlite:///{tmp_path / 'controller.sqlite3'}"
    store = open_store(url)
    store.apply_presence(GatewayPresence(gateway_id=GatewayId("gw-7"), epoch=3, online=True, site="lab"), 1.0)
    store.apply_reports(
        [
            DeviceReport(
                gateway_id=GatewayId("gw-7"),
                epoch=3,
                seq=1,
                device_serial=DeviceSerial("SER-1"),
                hardware_version="nrf52840dk",
                software_type="app",
                current_version="1.2.3",
                transport=Transport.UDP,
                address="127.0.0.2:1337",
                rssi_dbm=-61,
                seen_at=datetime(2026, 11, 25, tzinfo=UTC),
            )
        ]
    )
    store.db.close()
    devices = _run("devices", "--store", url)
    assert devices.returncode == 0, devices.stderr
    assert "SER-1" in devices.stdout and "1.2.3" in devices.stdout and "gw-7 (-61)" in devices.stdout
    gateways = _run("gateways", "--store", url)
    assert gateways.returncode == 0 and "gw-7" in gateways.stdout and "lab" in gateways.stdout


def test_a_bad_store_url_is_a_clear_error() -> None:
    """An unknown scheme is reported, not a traceback."""
    result = _run("devices", "--store", "mysql://nope")
    assert result.returncode == 1 and "expected sqlite" in result.stderr
