"""Request and response counts per endpoint, for test assertions and the admin API."""

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class Endpoint(StrEnum):
    """The emulator's routes, as counted (also the aiohttp route names)."""

    LATEST = "latest"
    LATEST_URL = "latest_url"
    ARTIFACT = "artifact"
    ADMIN = "admin"
    OTHER = "other"
    """Unknown paths and methods."""


@dataclass
class RequestCounters:
    """How many requests each endpoint received and which statuses it answered."""

    requests: Counter[Endpoint] = field(default_factory=Counter)
    responses: Counter[tuple[Endpoint, int]] = field(default_factory=Counter)

    def received(self, endpoint: Endpoint) -> None:
        """Count a request as it arrives."""
        self.requests[endpoint] += 1

    def answered(self, endpoint: Endpoint, status: int) -> None:
        """Count the status a request was answered with."""
        self.responses[endpoint, status] += 1

    def requests_to(self, endpoint: Endpoint) -> int:
        """Requests the endpoint received."""
        return self.requests[endpoint]

    def answers(self, endpoint: Endpoint, status: int) -> int:
        """Responses of that status the endpoint sent."""
        return self.responses[endpoint, status]

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Counts as JSON-ready data: `{endpoint: {"requests": n, "<status>": n, ...}}`."""
        report: dict[str, dict[str, int]] = {
            endpoint.value: {"requests": count} for endpoint, count in self.requests.items()
        }
        for (endpoint, status), count in self.responses.items():
            report.setdefault(endpoint.value, {"requests": 0})[str(status)] = count
        return report

    def reset(self) -> None:
        """Start counting from zero."""
        self.requests.clear()
        self.responses.clear()
