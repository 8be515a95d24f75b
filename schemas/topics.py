"""Every topic of the contract: the tree, its builders and parser, and QoS and retain per topic.

The tree is laid out so broker ACLs can confine principals by prefix (see deploy/mosquitto/):

    <prefix>/gw/<gateway>/...        written only by that gateway, except `command`
    <prefix>/ctl/<controller>/...    written by controllers
    <prefix>/rollout/<rollout>/...   written by controllers, read by operators
    <prefix>/ops/request             written by operators, read by controllers
    <prefix>/ops/reply/<operator>/<request>
                                     written by controllers, read only by that operator (the ACL's
                                     `%u`: the operator's MQTT username, its certificate's CN)
    <prefix>/ops/reply/<request>     refusals of requests that named no reply topic of their own
"""

import enum
import re
from dataclasses import dataclass
from typing import Final

import msgspec

from schemas.errors import TopicError
from schemas.ids import ID_MAX_LENGTH, SERIAL_MAX_LENGTH, is_valid_id
from schemas.inventory import DeviceCredential, DeviceReport
from schemas.jobs import GatewayCommand, JobProgress, JobResult
from schemas.operator import OperatorReply, OperatorRequest
from schemas.presence import ControllerPresence, GatewayPresence
from schemas.rollout import AuditEvent, RolloutPlanPage, RolloutPlanSummary, RolloutState

DEFAULT_PREFIX: Final = "mcufleet/v1"


class TopicKind(enum.StrEnum):
    """Every kind of topic in the tree."""

    GATEWAY_PRESENCE = "gateway_presence"
    DEVICE_REPORT = "device_report"
    DEVICE_CREDENTIAL = "device_credential"
    GATEWAY_COMMAND = "gateway_command"
    JOB_PROGRESS = "job_progress"
    JOB_RESULT = "job_result"
    CONTROLLER_PRESENCE = "controller_presence"
    OPERATOR_REQUEST = "operator_request"
    OPERATOR_REPLY = "operator_reply"
    OPERATOR_DEFAULT_REPLY = "operator_default_reply"
    ROLLOUT_STATE = "rollout_state"
    ROLLOUT_PLAN = "rollout_plan"
    ROLLOUT_PLAN_PAGE = "rollout_plan_page"
    AUDIT = "audit"


class Role(enum.StrEnum):
    """Principals on the bus."""

    GATEWAY = "gateway"
    CONTROLLER = "controller"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic of the contract: where it lives, who writes and reads it, and how it is sent."""

    kind: TopicKind
    template: str
    """Levels below the prefix; `{name}` levels are ids."""
    payload: object
    """The msgspec type (a Struct or a tagged union) of the payload."""
    qos: int
    retain: bool
    publisher: Role
    subscribers: tuple[Role, ...]
    summary: str


TOPICS: Final[tuple[TopicSpec, ...]] = (
    TopicSpec(
        TopicKind.GATEWAY_PRESENCE,
        "gw/{gateway_id}/presence",
        GatewayPresence,
        1,
        True,
        Role.GATEWAY,
        (Role.CONTROLLER, Role.OPERATOR),
        "Gateway birth, goodbye and will, with the session epoch.",
    ),
    TopicSpec(
        TopicKind.DEVICE_REPORT,
        "gw/{gateway_id}/device/{device_serial}",
        DeviceReport,
        1,
        True,
        Role.GATEWAY,
        (Role.CONTROLLER, Role.OPERATOR),
        "What a gateway knows about one device; an empty retained payload forgets it.",
    ),
    TopicSpec(
        TopicKind.DEVICE_CREDENTIAL,
        "gw/{gateway_id}/credential/{device_serial}",
        DeviceCredential,
        1,
        False,
        Role.GATEWAY,
        (Role.CONTROLLER,),
        "A device's Memfault project key; controller-only, never retained.",
    ),
    TopicSpec(
        TopicKind.GATEWAY_COMMAND,
        "gw/{gateway_id}/command",
        GatewayCommand,
        1,
        False,
        Role.CONTROLLER,
        (Role.GATEWAY,),
        "OTA, cancel and rebirth commands for one gateway.",
    ),
    TopicSpec(
        TopicKind.JOB_PROGRESS,
        "gw/{gateway_id}/job/{job_id}/progress",
        JobProgress,
        0,
        False,
        Role.GATEWAY,
        (Role.CONTROLLER, Role.OPERATOR),
        "Phase and bytes of a running job, at most once a second.",
    ),
    TopicSpec(
        TopicKind.JOB_RESULT,
        "gw/{gateway_id}/job/{job_id}/result",
        JobResult,
        1,
        False,
        Role.GATEWAY,
        (Role.CONTROLLER,),
        "How a job ended; also the answer to a rejected or duplicate command.",
    ),
    TopicSpec(
        TopicKind.CONTROLLER_PRESENCE,
        "ctl/{controller_id}/presence",
        ControllerPresence,
        1,
        True,
        Role.CONTROLLER,
        (Role.CONTROLLER, Role.GATEWAY, Role.OPERATOR),
        "Controller replica birth, goodbye and will; says which replica leads.",
    ),
    TopicSpec(
        TopicKind.OPERATOR_REQUEST,
        "ops/request",
        OperatorRequest,
        1,
        False,
        Role.OPERATOR,
        (Role.CONTROLLER,),
        "Operator requests: create, preview, start, pause, resume, abort, cancel a device, retry.",
    ),
    TopicSpec(
        TopicKind.OPERATOR_REPLY,
        "ops/reply/{operator_id}/{request_id}",
        OperatorReply,
        1,
        False,
        Role.CONTROLLER,
        (Role.OPERATOR,),
        "Reply to one request, in the requesting operator's own reply subtree: a request names it as"
        " its MQTT v5 response topic; operator_id is the operator's MQTT username (certificate CN).",
    ),
    TopicSpec(
        TopicKind.OPERATOR_DEFAULT_REPLY,
        "ops/reply/{request_id}",
        OperatorReply,
        1,
        False,
        Role.CONTROLLER,
        (Role.OPERATOR,),
        "Refusal of a request whose response topic is missing or outside the operator reply subtree;"
        " nothing is ever published on the topic such a request named.",
    ),
    TopicSpec(
        TopicKind.ROLLOUT_STATE,
        "rollout/{rollout_id}/state",
        RolloutState,
        1,
        True,
        Role.CONTROLLER,
        (Role.OPERATOR,),
        "A rollout's state, counts and gate decisions.",
    ),
    TopicSpec(
        TopicKind.ROLLOUT_PLAN,
        "rollout/{rollout_id}/plan",
        RolloutPlanSummary,
        1,
        True,
        Role.CONTROLLER,
        (Role.OPERATOR,),
        "A rollout's plan (preview) without its device lists; starting names its plan id.",
    ),
    TopicSpec(
        TopicKind.ROLLOUT_PLAN_PAGE,
        "rollout/{rollout_id}/plan/{page}",
        RolloutPlanPage,
        1,
        True,
        Role.CONTROLLER,
        (Role.OPERATOR,),
        "One page of a plan's device lists (a wave's devices or the exclusions), under 256 KB each.",
    ),
    TopicSpec(
        TopicKind.AUDIT,
        "audit",
        AuditEvent,
        1,
        False,
        Role.CONTROLLER,
        (Role.OPERATOR,),
        "Append-only log of operator commands and rollout transitions.",
    ),
)

SPECS: Final[dict[TopicKind, TopicSpec]] = {spec.kind: spec for spec in TOPICS}

_MAX_LENGTH_BY_FIELD: Final = {"device_serial": SERIAL_MAX_LENGTH}


class Route(msgspec.Struct, frozen=True):
    """A parsed topic: its kind and the ids it carries (None when the topic has no such level).

    A Struct, not a frozen dataclass: one is built per inbound message, and a frozen dataclass's
    `__init__` (an `object.__setattr__` per field) cost 2.8 us of a report's 5 us parse.
    """

    kind: TopicKind
    gateway_id: str | None = None
    device_serial: str | None = None
    job_id: str | None = None
    rollout_id: str | None = None
    request_id: str | None = None
    controller_id: str | None = None
    operator_id: str | None = None
    page: str | None = None


class TopicTree:
    """Builds and parses the topics of one deployment (one prefix)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        """Create the tree under `prefix` (levels separated by `/`, no wildcards)."""
        levels = prefix.split("/")
        if not prefix or any(not is_valid_id(level) for level in levels):
            raise TopicError(f"invalid topic prefix {prefix!r}: levels must be ids without wildcards")
        self.prefix = prefix
        self._templates = [(spec, spec.template.split("/")) for spec in TOPICS]
        # Parsing runs once per inbound message (a fleet's report burst): every template is one
        # alternative of a single compiled pattern, so matching a topic is one regex call in C.
        alternatives: list[str] = []
        self._group_kinds: dict[str, tuple[TopicKind, tuple[tuple[str, str], ...]]] = {}
        for number, (spec, template) in enumerate(self._templates):
            parts: list[str] = []
            names: list[tuple[str, str]] = []
            for level in template:
                if level.startswith("{"):
                    group = f"i{number}_{len(names)}"
                    names.append((group, level[1:-1]))
                    parts.append(f"(?P<{group}>[^/]+)")
                else:
                    parts.append(re.escape(level))
            self._group_kinds[f"t{number}"] = (spec.kind, tuple(names))
            alternatives.append(f"(?P<t{number}>{'/'.join(parts)})")
        self._pattern = re.compile(f"{re.escape(prefix)}/(?:{'|'.join(alternatives)})")

    def topic(self, kind: TopicKind, **ids: str) -> str:
        """Build the topic of `kind` from its ids, validating each one.

        Raises:
            TopicError: an id is missing, unexpected or invalid.
        """
        spec = SPECS[kind]
        levels = []
        used = set()
        for level in spec.template.split("/"):
            if level.startswith("{"):
                name = level[1:-1]
                value = ids.get(name)
                if value is None:
                    raise TopicError(f"{kind} topic needs {name}")
                _check_id(name, value)
                levels.append(value)
                used.add(name)
            else:
                levels.append(level)
        if extra := set(ids) - used:
            raise TopicError(f"{kind} topic has no level for {sorted(extra)}")
        return "/".join([self.prefix, *levels])

    def filter(self, kind: TopicKind, **ids: str) -> str:
        """Build a subscription filter for `kind`: given ids are fixed, the others are `+`."""
        levels = []
        for level in SPECS[kind].template.split("/"):
            if level.startswith("{"):
                name = level[1:-1]
                value = ids.get(name)
                if value is not None:
                    _check_id(name, value)
                levels.append("+" if value is None else value)
            else:
                levels.append(level)
        return "/".join([self.prefix, *levels])

    def parse(self, topic: str) -> Route:
        """Tell which topic of the contract `topic` is and extract its ids.

        Raises:
            TopicError: the topic is outside the tree or an id in it is invalid.
        """
        if not topic.startswith(self.prefix + "/") and topic != self.prefix:
            raise TopicError(f"topic {topic!r} is outside prefix {self.prefix!r}")
        match = self._pattern.fullmatch(topic)
        if match is not None and match.lastgroup is not None:
            kind, names = self._group_kinds[match.lastgroup]
            ids = {name: match.group(group) for group, name in names}
            for name, value in ids.items():
                _check_id(name, value)
            return Route(kind, **ids)
        raise TopicError(f"topic {topic!r} is not part of the contract")


def _check_id(name: str, value: str) -> None:
    if not is_valid_id(value, _MAX_LENGTH_BY_FIELD.get(name, ID_MAX_LENGTH)):
        raise TopicError(f"invalid {name} {value!r}: ids are ASCII letters, digits and ._:@- only")
