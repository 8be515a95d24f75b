"""Errors raised by the contract: one root, `ContractError`.

ContractError                 a topic or payload does not satisfy the contract
├── TopicError                a topic string is not one of ours, or an id in it is invalid
└── PayloadError              a payload failed to decode; names the topic and the field
"""


class ContractError(Exception):
    """A topic or payload does not satisfy the mcufleet MQTT contract."""


class TopicError(ContractError):
    """A topic string does not match the topic tree, or an id in it is invalid."""


class PayloadError(ContractError):
    """A payload failed to decode or validate.

    Attributes:
        topic: the topic the payload arrived on ("" when decoded outside MQTT).
        field: the JSON path of the offending field (`$` for the whole document).
        reason: msgspec's explanation.
    """

    def __init__(self, topic: str, field: str, reason: str) -> None:
        self.topic = topic
        self.field = field
        self.reason = reason
        super().__init__(f"invalid payload on {topic or '<no topic>'} at {field}: {reason}")
