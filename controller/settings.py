"""The controller's configuration: `controller.toml` plus `MCUFLEET_CONTROLLER__...` overrides."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

import service_runtime.settings
from service_runtime.settings import LogConfig, Port, PositiveSeconds

__all__ = [
    "ControllerSettings",
    "IngestConfig",
    "LogConfig",
    "MemfaultConfig",
    "MetricsConfig",
    "MqttConfig",
    "OperatorAuthConfig",
    "OperatorKey",
    "OperatorRole",
    "SchedulerConfig",
    "StoreConfig",
]


class MqttConfig(service_runtime.settings.MqttConfig, frozen=True, forbid_unknown_fields=True):
    """The broker; replicas share the ingest subscriptions through `share_group`."""

    username: str = "controller"
    share_group: str = "controllers"
    outbox_limit: Annotated[int, msgspec.Meta(ge=10)] = 200_000
    session_expiry_s: Annotated[int, msgspec.Meta(ge=0, le=7 * 24 * 3600)] = 120
    """How long the broker keeps this replica's MQTT 5 session (and queues for it) while it is away:
    long enough for a connection drop or a broker restart, short because a replica that is gone for
    good keeps its round-robin share of the shared subscriptions until its session expires."""


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where state lives: `sqlite:///path` (default) or a `postgresql://` DSN."""

    url: str = "sqlite:///var/lib/mcufleet/controller.sqlite3"


class MemfaultConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The Memfault releases API (the cloud emulator's URL in tests and the demo)."""

    base_url: str = "https://api.memfault.com"
    cache_ttl_s: PositiveSeconds = 600.0
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    requests_per_s: PositiveSeconds = 20.0
    timeout_s: PositiveSeconds = 10.0
    refresh_after_s: PositiveSeconds = 7200.0
    """The standing correlation asks a device again after this long (artifact links last 6 h)."""
    plan_max_age_s: PositiveSeconds = 600.0
    """A plan uses answers younger than this; older ones are asked again before planning."""
    plan_wait_s: PositiveSeconds = 30.0
    """How long a plan waits (beside the scheduler) with no new answer for the devices it plans."""
    plan_wait_max_s: PositiveSeconds = 600.0
    """How long a plan waits for its devices' answers in all (a cold fleet is answered at
    `requests_per_s`, so a plan of 100k waits minutes; devices still unanswered are excluded)."""
    dispatch_max_age_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    """A dispatch uses an answer younger than this; an older one is asked again first (0: always)."""
    allowed_project_keys: tuple[Annotated[str, msgspec.Meta(min_length=1)], ...] = ()
    """The project keys of the fleet's Memfault projects: a gateway's credential for any other
    project is refused (counted and audited), since the key decides which firmware a device is
    offered. Empty (the default) accepts any project and logs a warning at start: a new
    deployment and the demo work before anyone has listed keys, and a known device still cannot
    be moved to another project without an operator (`accept_key_change`), which is the attack
    the list exists for. List the keys in production."""


class MetricsConfig(service_runtime.settings.MetricsConfig, frozen=True, forbid_unknown_fields=True):
    """Where `/metrics` is served (the agent's default port plus one: both run on a demo machine)."""

    port: Port = 9465


class SchedulerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Leadership and scheduling cadence."""

    tick_interval_s: PositiveSeconds = 1.0
    lease_ttl_s: PositiveSeconds = 10.0
    device_ttl_s: PositiveSeconds = 1800.0
    """A device unheard for this long is unreachable (never failed)."""
    throughput_bytes_per_s: PositiveSeconds = 20_000.0
    """Assumed per-device upload goodput for plan estimates until measured."""
    reboot_s: PositiveSeconds = 30.0


class OperatorRole(enum.StrEnum):
    """What a signed operator key may do (the table is `controller.operator_auth.REQUIRED_ROLE`)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class OperatorKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One operator signing key: the identity it speaks for and the role it holds."""

    public_key: str
    """Raw 32-byte Ed25519 public key, base64."""
    operator: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    """The operator identity the audit records for requests signed with this key."""
    role: OperatorRole


class OperatorAuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Signed operator requests: with any key configured, unsigned requests are refused."""

    keys: dict[str, OperatorKey] = msgspec.field(default_factory=dict)
    """Key id -> key. Rotation: configure the new key next to the old one (same operator), then
    remove the old one."""
    max_skew_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 300.0
    """A request's `issued_at` may differ from the controller's clock by at most this much; seen
    signatures are remembered this long, so a replay inside the window is refused too."""
    max_remembered_signatures: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    """Bound on the replay memory: while it is full, new signed requests are refused."""


class IngestConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How reports and credentials are batched into the store, and how rebirths are rationed."""

    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5000
    linger_s: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.05
    """How long a burst may gather before a batch is written."""
    key_wait_s: PositiveSeconds = 15.0
    """How long a report whose project key has not arrived waits for its credential before the
    controller asks that gateway for one rebirth (credentials are never retained)."""
    rebirth_gateway_interval_s: PositiveSeconds = 30.0
    """At most one rebirth request per gateway per this interval."""
    rebirth_fleet_per_s: PositiveSeconds = 20.0
    """Fleet-wide rebirth requests per second once `rebirth_fleet_burst` is spent."""
    rebirth_fleet_burst: Annotated[int, msgspec.Meta(ge=1)] = 100
    peer_session_grace_s: PositiveSeconds = 30.0
    """How long a peer replica may stay offline before this replica deletes its report session (which
    holds the peer's share of the shared report subscription) and asks every live gateway for a
    rebirth. A restart under the same `controller_id` within this time loses nothing either way."""
    gc_gen0_threshold: Annotated[int, msgspec.Meta(ge=700, le=1_000_000)] = 50_000
    """Allocations between two young-generation garbage collections in the controller process
    (CPython's default is 700). A report burst allocates a few containers per message; at the
    default, collections took as long as decoding the reports themselves."""


class ControllerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the controller reads from its config."""

    controller_id: str = "controller-1"
    mqtt: MqttConfig = MqttConfig()
    store: StoreConfig = StoreConfig()
    memfault: MemfaultConfig = MemfaultConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    operator_auth: OperatorAuthConfig = OperatorAuthConfig()
    ingest: IngestConfig = IngestConfig()
