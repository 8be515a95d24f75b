"""Presence of gateways and controllers: retained birth and death messages with a session epoch.

A process publishes a retained birth (`online=True`) when its MQTT session starts and registers a
will carrying the same epoch (`online=False`, `cause=WILL`). The epoch grows with every session, so
a consumer ignores any presence whose epoch is older than the newest it has seen: a late will of a
previous session cannot mark a fresh session dead (Sparkplug's bdSeq idea).
"""

import enum
from datetime import datetime

import msgspec

from schemas.ids import ControllerIdField, Epoch, GatewayIdField, ShortText


class OfflineCause(enum.StrEnum):
    """Why a process is offline."""

    NONE = "none"
    """Online; no cause."""
    SHUTDOWN = "shutdown"
    """The process said goodbye before a clean disconnect."""
    WILL = "will"
    """The broker published the will: the connection was lost without a goodbye."""


class GatewayPresence(msgspec.Struct, frozen=True, kw_only=True):
    """Birth, goodbye or will of one gateway agent session (retained)."""

    gateway_id: GatewayIdField
    epoch: Epoch
    online: bool
    cause: OfflineCause = OfflineCause.NONE
    agent_version: ShortText = ""
    site: ShortText = ""
    """Site the gateway belongs to (for per-site rollout caps); empty when not configured."""
    started_at: datetime | None = None
    """When this session started (birth and its will carry the same value)."""
    device_count: int = 0
    """Devices in the inventory when this message was made (births only)."""


class ControllerPresence(msgspec.Struct, frozen=True, kw_only=True):
    """Birth, goodbye or will of one controller replica (retained)."""

    controller_id: ControllerIdField
    epoch: Epoch
    online: bool
    cause: OfflineCause = OfflineCause.NONE
    leader: bool = False
    """True while this replica holds the scheduler lease."""
    started_at: datetime | None = None


def supersedes(current_epoch: int | None, current_online: bool | None, incoming: GatewayPresence) -> bool:
    """Decide whether an incoming gateway presence replaces the known one.

    A newer epoch always wins; an older one never does. Within one epoch a death replaces a birth
    (the session ended) but a birth never resurrects a session already known dead, because a
    birth cannot legitimately follow its own will.

    Args:
        current_epoch: the epoch of the presence known so far, or None if none is known.
        current_online: whether the known presence is online, or None if none is known.
        incoming: the presence that just arrived.

    Returns:
        True when `incoming` should become the known presence.
    """
    if current_epoch is None or incoming.epoch > current_epoch:
        return True
    if incoming.epoch < current_epoch:
        return False
    return bool(current_online) and not incoming.online
