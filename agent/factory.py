"""The one way to build an agent: settings plus injected parts (transports, MQTT session, clock).

The CLI, the demo, the tests and the bench all call `build_agent`; only they choose what to
inject, and `AgentService` constructs no adapter of its own. Defaults are the production adapters
(UDP sockets, BlueZ through bleak, the broker through `MqttSession`, the system clock).

Adding a transport kind happens here and only here: a maker field on `Transports`, and a loop over
its `[[..._devices]]` table in `configured_endpoints`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner
from prometheus_client import CollectorRegistry

from agent.artifacts import ArtifactCache, ArtifactFetcher, DownloadPolicy, Resolver, system_resolver
from agent.ble_discovery import BleDiscovery
from agent.inventory import Inventory
from agent.journal import Journal
from agent.link.device_link import DeviceLink, configured_serial_link, udp_link
from agent.link.session import SessionCounters
from agent.service import (
    AgentMqtt,
    AgentParts,
    AgentService,
    Clock,
    DeviceFinder,
    MqttHooks,
    gateway_id_of,
)
from agent.settings import AgentSettings, SerialDevice, UdpDevice
from schemas import Transport
from service_runtime.epoch import EpochCounter, FenceEpoch
from service_runtime.mqtt import MqttSession
from service_runtime.mqtt_metrics import MqttMetrics
from service_runtime.settings import mqtt_settings
from service_runtime.systemd import SystemdNotifier

__all__ = [
    "BleBackends",
    "Clock",
    "LinkOptions",
    "MqttMaker",
    "Transports",
    "broker_session",
    "build_agent",
    "configured_endpoints",
    "serial_device_link",
    "udp_device_link",
]


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """What every link the agent makes shares: the SMP reply timeout and the process's counters."""

    timeout_s: float
    counters: SessionCounters


UdpLinkMaker = Callable[[UdpDevice, LinkOptions], DeviceLink]


def udp_device_link(device: UdpDevice, options: LinkOptions) -> DeviceLink:
    """The production link to a `[[udp_devices]]` entry: SMP over a UDP socket."""
    return udp_link(device.host, device.port, timeout_s=options.timeout_s, counters=options.counters)


SerialLinkMaker = Callable[[SerialDevice, LinkOptions], DeviceLink]


def serial_device_link(device: SerialDevice, options: LinkOptions) -> DeviceLink:
    """The production link to a `[[serial_devices]]` entry: SMP over a serial line or serial server."""
    return configured_serial_link(device, timeout_s=options.timeout_s, counters=options.counters)


@dataclass(frozen=True, slots=True)
class BleBackends:
    """bleak backends to use instead of the platform's (None: BlueZ on Linux)."""

    scanner: type[BaseBleakScanner] | None = None
    client: type[BaseBleakClient] | None = None


@dataclass(frozen=True, slots=True)
class Transports:
    """How the agent reaches devices: one link maker per configured transport kind."""

    udp: UdpLinkMaker = udp_device_link
    serial: SerialLinkMaker = serial_device_link
    ble: BleBackends = field(default_factory=BleBackends)


def configured_endpoints(
    settings: AgentSettings, transports: Transports, options: LinkOptions
) -> tuple[tuple[DeviceLink, Transport], ...]:
    """A link for every device listed in the config, with its transport kind (BLE is discovered)."""
    endpoints = [(transports.udp(device, options), Transport.UDP) for device in settings.udp_devices]
    endpoints += [
        (transports.serial(device, options), Transport.SERIAL) for device in settings.serial_devices
    ]
    return tuple(endpoints)


MqttMaker = Callable[[AgentSettings, MqttHooks, MqttMetrics], AgentMqtt]
"""Builds the agent's MQTT session from the settings and the service's hooks."""


def broker_session(settings: AgentSettings, hooks: MqttHooks, metrics: MqttMetrics) -> AgentMqtt:
    """The production MQTT session: the configured broker, a persistent session, presence with epochs."""
    return MqttSession(
        mqtt_settings(settings.mqtt, client_id=settings.gateway_id, default_username=settings.gateway_id),
        tree=hooks.tree,
        subscriptions=hooks.subscriptions,
        handler=hooks.handler,
        metrics=metrics,
        presence=hooks.presence,
        epochs=EpochCounter(settings.state_path / "epoch"),
        on_connected=hooks.on_connected,
    )


def build_agent(
    settings: AgentSettings,
    *,
    resolver: Resolver = system_resolver,
    http_transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
    transports: Transports | None = None,
    mqtt: MqttMaker = broker_session,
    clock: Clock | None = None,
    notifier: SystemdNotifier | None = None,
) -> AgentService:
    """Assemble an agent from `settings` and the injected parts (production ones by default).

    Artifacts are fetched by the fetcher's own pinned client; `resolver` answers its name lookups
    (the system's by default; tests inject one to prove a rebinding answer is refused).
    `http_transport` replaces the network under the fetcher for in-memory tests only.

    Raises:
        ConfigError: the settings cannot make an agent (an invalid gateway id).
    """
    gateway_id_of(settings)
    transports = transports or Transports()
    registry = registry if registry is not None else CollectorRegistry()
    state = settings.state_path
    state.mkdir(parents=True, exist_ok=True)
    counters = SessionCounters()
    downloads = settings.downloads
    fetcher = ArtifactFetcher(
        ArtifactCache(state / "artifacts", downloads.cache_max_bytes),
        DownloadPolicy(
            allowed_hosts=downloads.allowed_hosts,
            allow_http=downloads.allow_http,
            allow_private_addresses=downloads.allow_private_addresses,
            allowed_private_networks=downloads.allowed_private_networks,
            max_artifact_bytes=downloads.max_artifact_bytes,
            connect_timeout_s=downloads.connect_timeout_s,
            read_timeout_s=downloads.read_timeout_s,
            proxy_url=downloads.proxy_url,
        ),
        resolver=resolver,
        transport=http_transport,
    )
    mqtt_metrics = MqttMetrics(registry)
    make_finder: Callable[[Inventory], DeviceFinder] | None = None
    if settings.ble.enabled:
        backends = transports.ble

        def make_finder(inventory: Inventory) -> DeviceFinder:
            return BleDiscovery(
                settings.ble,
                inventory,
                smp_timeout_s=settings.discovery.smp_timeout_s,
                smp_counters=counters,
                scanner_backend=backends.scanner,
                client_backend=backends.client,
            )

    parts = AgentParts(
        journal=Journal(state / "journal.sqlite3"),
        fence=FenceEpoch(state / "controller_epoch"),
        fetcher=fetcher,
        endpoints=configured_endpoints(
            settings, transports, LinkOptions(settings.discovery.smp_timeout_s, counters)
        ),
        smp_counters=counters,
        make_mqtt=lambda hooks: mqtt(settings, hooks, mqtt_metrics),
        registry=registry,
        mqtt_metrics=mqtt_metrics,
        make_finder=make_finder,
        notifier=notifier or SystemdNotifier({}),
        clock=clock or Clock(),
    )
    return AgentService(settings, parts)
