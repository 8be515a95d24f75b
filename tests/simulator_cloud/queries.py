"""Request helpers shared by the cloud emulator's HTTP tests."""

from typing import Final

import httpx

PROJECT_KEY: Final = "project-key-1"
HARDWARE: Final = "nrf54l15dk"
LATEST: Final = "/api/v0/releases/latest"
LATEST_URL: Final = "/api/v0/releases/latest/url"
START_S: Final = 1_800_000_000.0


class FakeClock:
    """Seconds since the epoch that move only when the test says so."""

    def __init__(self, now_s: float = START_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def device_params(
    serial: str = "SIM-0001",
    current_version: str = "1.0.0",
    hardware: str = HARDWARE,
    software_type: str = "app",
) -> dict[str, str]:
    """The four query parameters a device sends."""
    return {
        "device_serial": serial,
        "hardware_version": hardware,
        "software_type": software_type,
        "current_version": current_version,
    }


async def ask(
    http: httpx.AsyncClient,
    serial: str = "SIM-0001",
    current_version: str = "1.0.0",
    *,
    path: str = LATEST,
    project_key: str | None = PROJECT_KEY,
) -> httpx.Response:
    """A latest-release request as a device's gateway sends it."""
    headers = {"Accept": "application/json"}
    if project_key is not None:
        headers["Memfault-Project-Key"] = project_key
    return await http.get(path, params=device_params(serial, current_version), headers=headers)
