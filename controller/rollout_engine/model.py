"""What the rollout core is told about the world: candidate devices and the fleet's current load."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class GatewayLink:
    """One gateway hearing one device."""

    gateway_id: str
    rssi_dbm: int | None
    site: str = ""
    online: bool = True


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device the registry knows, with what Memfault offers it."""

    serial: str
    hardware_version: str
    software_type: str
    current_version: str
    links: tuple[GatewayLink, ...]
    offered_version: str | None
    """The release Memfault's latest-release API offers the device (None: nothing offered)."""
    refusal: str = ""
    """Why nothing is offered ("up to date", a Memfault error), when `offered_version` is None."""


def _no_links(serial: str) -> tuple[GatewayLink, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class FlowView:
    """The fleet's load at one tick, across every rollout (per-gateway caps are radio limits)."""

    in_flight_by_gateway: Mapping[str, int] = field(default_factory=dict)
    in_flight_by_site: Mapping[str, int] = field(default_factory=dict)
    success_rate_by_gateway: Mapping[str, float] = field(default_factory=dict)
    links: Callable[[str], tuple[GatewayLink, ...]] = _no_links
    """The current links of a device (looked up only for devices about to start)."""


def link_score(link: GatewayLink, success_rate: float = 1.0, load: int = 0) -> float:
    """How well placed a gateway is to update a device (higher is better), at plan and at dispatch.

    Signal first (dBm), then the gateway's track record (a success rate of 0 costs 20 dB), then its
    load (each job in flight costs 5 dB).
    """
    rssi = link.rssi_dbm if link.rssi_dbm is not None else -127
    return rssi + 20.0 * success_rate - 5.0 * load


def best_link(
    links: tuple[GatewayLink, ...],
    flow: FlowView | None = None,
    avoid: frozenset[str] = frozenset(),
    prefer: str = "",
) -> GatewayLink | None:
    """The online gateway with the best `link_score`; a tie goes to `prefer` (the planned gateway).

    Gateways in `avoid` (they just failed this device) are used only when no other one hears it.
    """
    online = [link for link in links if link.online]
    preferred = [link for link in online if link.gateway_id not in avoid] or online
    if not preferred:
        return None

    def score(link: GatewayLink) -> tuple[float, bool, str]:
        if flow is None:
            value = link_score(link)
        else:
            success = flow.success_rate_by_gateway.get(link.gateway_id, 1.0)
            value = link_score(link, success, flow.in_flight_by_gateway.get(link.gateway_id, 0))
        return (-value, link.gateway_id != prefer, link.gateway_id)

    return min(preferred, key=score)
