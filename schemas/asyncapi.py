"""Builds the AsyncAPI 3.0 document and the JSON Schemas of the contract from `schemas.topics.TOPICS`.

Pure: returns plain dicts; the `mcufleet contract` command writes and checks the files.
"""

import types
import typing
from typing import Any, Final

import msgspec

from schemas.topics import DEFAULT_PREFIX, TOPICS, Role, TopicSpec

CONTRACT_VERSION: Final = "1.0.0"
_REF_TEMPLATE: Final = "#/components/schemas/{name}"


def _members(payload: object) -> list[type[msgspec.Struct]]:
    """The Struct classes a payload type is made of (one for a Struct, several for a union)."""
    if isinstance(payload, types.UnionType) or typing.get_origin(payload) is typing.Union:
        return [member for member in typing.get_args(payload) if isinstance(member, type)]
    if not isinstance(payload, type):
        raise TypeError(f"not a payload type: {payload!r}")
    return [payload]


def _channel_id(spec: TopicSpec) -> str:
    head, *rest = spec.kind.value.split("_")
    return head + "".join(part.title() for part in rest)


def _operation_id(role: Role, action: str, spec: TopicSpec) -> str:
    return f"{role.value}{action.title()}{_channel_id(spec)[0].upper()}{_channel_id(spec)[1:]}"


def build_asyncapi(prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """Return the AsyncAPI 3.0 document of the contract under `prefix`."""
    structs: list[type[msgspec.Struct]] = []
    for spec in TOPICS:
        for member in _members(spec.payload):
            if member not in structs:
                structs.append(member)
    _, schemas = msgspec.json.schema_components(structs, ref_template=_REF_TEMPLATE)

    messages: dict[str, Any] = {}
    for struct in structs:
        summary = (struct.__doc__ or struct.__name__).strip().splitlines()[0]
        messages[struct.__name__] = {
            "name": struct.__name__,
            "title": struct.__name__,
            "summary": summary,
            "contentType": "application/json",
            "payload": {"$ref": _REF_TEMPLATE.format(name=struct.__name__)},
        }

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in TOPICS:
        channel_id = _channel_id(spec)
        parameters = {
            level[1:-1]: {"description": f"The {level[1:-1].replace('_', ' ')} (an id: no `/`, `+` or `#`)."}
            for level in spec.template.split("/")
            if level.startswith("{")
        }
        channel: dict[str, Any] = {
            "address": f"{prefix}/{spec.template}",
            "summary": spec.summary,
            "messages": {
                member.__name__: {"$ref": f"#/components/messages/{member.__name__}"}
                for member in _members(spec.payload)
            },
        }
        if parameters:
            channel["parameters"] = parameters
        channels[channel_id] = channel
        message_refs = [
            {"$ref": f"#/channels/{channel_id}/messages/{member.__name__}"}
            for member in _members(spec.payload)
        ]
        bindings = {"mqtt": {"qos": spec.qos, "retain": spec.retain, "bindingVersion": "0.2.0"}}
        operations[_operation_id(spec.publisher, "send", spec)] = {
            "action": "send",
            "summary": f"The {spec.publisher.value} publishes: {spec.summary}",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": message_refs,
            "bindings": bindings,
        }
        for role in spec.subscribers:
            operations[_operation_id(role, "receive", spec)] = {
                "action": "receive",
                "summary": f"The {role.value} subscribes.",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": message_refs,
                "bindings": bindings,
            }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "mcufleet MQTT contract",
            "version": CONTRACT_VERSION,
            "description": (
                "Topics and payloads between mcufleet gateway agents, controllers and operators. "
                "Generated from schemas/ by `mcufleet contract export`; do not edit by hand."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "Any MQTT 5 broker (mosquitto, EMQX, HiveMQ, VerneMQ).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def build_json_schemas() -> dict[str, dict[str, Any]]:
    """Return one standalone JSON Schema (draft 2020-12) per topic kind, keyed by kind."""
    documents: dict[str, dict[str, Any]] = {}
    for spec in TOPICS:
        schema = msgspec.json.schema(spec.payload)
        documents[spec.kind.value] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": spec.kind.value,
            "description": spec.summary,
            **schema,
        }
    return documents
